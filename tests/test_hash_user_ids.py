"""`--hash-user-ids SALT`: no raw user id (and never the salt) in any artefact, output or log line;
the same salt gives the same pseudonyms across runs and --append; a missing or different salt is
refused (exit 2) before anything is written."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dyembed.artefacts import sha256_file
from dyembed.config import Config, SynthConfig, to_toml
from dyembed.errors import ConfigError
from dyembed.preprocess.pseudonym import SALT_ENV, Pseudonymiser, salt_from, verify_salt
from dyembed_cli.app import app

runner = CliRunner()
SALT = "Pepper-9f8e7d6c5b4a39281706"
OTHER_SALT = "Another-salt-0000000000000"
DOMAIN = "@mail.example"  # every raw id ends with it: one needle that catches them all
ITEMS = "item_id,title,description\ni1,Red shoes,Shoes that are red\ni2,Blue hat,A hat\ni3,Green scarf,Warm\n"


def reference(salt: str, raw: str) -> str:
    """HMAC-SHA256(key=salt, msg=trimmed id) → 'u_' + first 20 hex chars, written out plainly."""
    return "u_" + hmac.new(salt.encode(), raw.strip().encode(), hashlib.sha256).hexdigest()[:20]


def raw_id(k: int) -> str:
    return f"person.{k:03d}{DOMAIN}"


def cli(args: list[str], env: dict[str, str] | None = None):
    return runner.invoke(app, args, env=env)


def all_text_of(path: Path) -> list[str]:
    """Everything a file holds: its bytes (latin-1 so any byte survives), and for Parquet the decoded
    values too (zstd would hide a raw id from a byte scan)."""
    data = path.read_bytes()
    texts = [data.decode("latin-1")]
    if data[:4] == b"PAR1":
        texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
    return texts


def _scan_one(path: Path, needle: str) -> None:
    for text in all_text_of(path):
        assert needle not in text, f"{needle!r} found in {path}"


def assert_clean(root: Path, needles: list[str]) -> int:
    """No needle in any file under `root` (hidden files such as the lock file included)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        for needle in needles:
            _scan_one(path, needle)
    return len(files)


# --------------------------------------------------------------------------- the whole pipeline


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A small synthetic world whose user ids are replaced by distinctive e-mail-like ids, split by
    time into base.csv and new.csv (plus a newcomer), with a malformed line and a far-future row
    that carry raw ids too."""
    from dyembed.synth import generate

    root = tmp_path_factory.mktemp("hashed_raw")
    generate(SynthConfig(users=24, items=30, events=700, topics=3, seed=5, malformed_rows=8), root)
    with open(root / "events.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    for r in body:
        if r and r[0].startswith("u"):
            r[0] = raw_id(int(r[0][1:]))
    good = [r for r in body if len(r) == 4 and r[2].isdigit()]
    cut = good[int(len(good) * 0.8)][2]
    base = [r for r in body if not (len(r) == 4 and r[2].isdigit() and r[2] > cut)]
    new = [r for r in good if r[2] > cut]
    new.append([f"  newcomer{DOMAIN} ", good[0][1], str(int(new[-1][2]) + 5), "click"])
    for name, part, extra in (("base.csv", base, [f"{raw_id(1)},only-two-fields"]),
                              ("new.csv", new, [f"{raw_id(2)},{good[0][1]},32503680000,click"])):
        with open(root / name, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([header] + part)
            fh.write("\n".join(extra) + "\n")
    cfg = Config()
    cfg.data.format = "synth"
    cfg.encode.encoder = "hashing"
    cfg.encode.hashing_dim = 16
    cfg.model.dim = 8
    cfg.train.epochs = 1
    cfg.train.validation = False
    cfg.evaluate.bootstrap = 0
    cfg.evaluate.baselines = ["pop"]
    (root / "config.toml").write_text(to_toml(cfg, ["data", "encode", "model", "train", "evaluate"]), encoding="utf-8")
    return root


def test_no_raw_id_and_no_salt_in_any_file_or_output(raw, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    env = {SALT_ENV: SALT}
    raw_ids = sorted({r.split(",")[0].strip() for r in (raw / "base.csv").read_text().splitlines()[1:]} - {""})
    assert len(raw_ids) > 20 and all(DOMAIN in r for r in raw_ids)
    needles = [DOMAIN, "person.", "newcomer", SALT]
    steps = [
        ["-v", "preprocess", str(work), "-c", str(raw / "config.toml"), "--events", str(raw / "base.csv"),
         "--items", str(raw / "items.jsonl"), "--hash-user-ids", SALT],
        ["-v", "encode", str(work)],
        ["-v", "train", str(work), "--json-file", str(out / "train.json")],
        ["-v", "evaluate", str(work), "--dump-ranks", str(out / "ranks.parquet"), "--json-file", str(out / "report.json")],
        ["-v", "recommend", str(work), "--out", str(out / "all.jsonl")],
        ["-v", "--log-format", "json", "update", str(work), "--new-log", str(raw / "new.csv"), "--json"],
        # default log level too (warnings + notes), and the already-applied path
        ["update", str(work), "--new-log", str(raw / "new.csv")],
        ["recommend", str(work), "--out", str(out / "all.csv")],
    ]
    outputs = []
    for args in steps:
        result = cli(args, env=env)
        assert result.exit_code == 0, (args, result.output[-2000:])
        outputs.append(result.output)
        if "update" in args and "--json" in args:
            summary = json.loads(result.stdout)
            assert summary["rejected"].get("future_timestamp") == 1 and summary["new_users"] == 1
    users = pq.read_table(work / "users.parquet").column("user_id").to_pylist()
    assert set(users) == {reference(SALT, r) for r in raw_ids + [f"newcomer{DOMAIN}"]}
    # the dumps and lists carry the pseudonyms
    assert set(pq.read_table(out / "ranks.parquet").column("user_id").to_pylist()) <= set(users)
    before_update = {json.loads(line)["user_id"] for line in (out / "all.jsonl").read_text().splitlines()}
    assert before_update == set(users) - {reference(SALT, f"newcomer{DOMAIN}")}
    import pyarrow.csv as pacsv

    assert set(pacsv.read_csv(out / "all.csv").column("user_id").to_pylist()) == set(users)
    # one user by pseudonym, and by raw id with the salt: the same list, shown with the pseudonym
    pseudonym = reference(SALT, raw_ids[0])
    by_hash = cli(["-v", "recommend", str(work), "--user", pseudonym, "--k", "3"], env=env)
    by_raw = cli(["-v", "recommend", str(work), "--user", raw_ids[0], "--k", "3"], env=env)
    assert by_hash.exit_code == by_raw.exit_code == 0, by_raw.output
    assert pseudonym in users and pseudonym in by_raw.stdout and "cold start" not in by_raw.stdout
    assert by_hash.stdout == by_raw.stdout
    # without the salt recommend refuses (exit 2), even for stored pseudonyms, before reading anything
    no_salt = cli(["recommend", str(work), "--user", pseudonym, "--k", "3"])
    assert no_salt.exit_code == 2 and no_salt.stdout == ""
    assert no_salt.stderr.startswith(f"error: {work} has hashed user ids")
    # an unknown id is counted, never echoed (it is a raw id someone typed)
    unknown = cli(["recommend", str(work), "--user", raw_ids[0], "--user", f"stranger{DOMAIN}", "--k", "3"], env=env)
    assert unknown.exit_code == 3 and unknown.stdout == ""
    assert unknown.stderr.strip() == (f"error: 1 of 2 user id(s) not in {work}/users.parquet; check the ids (and the "
                                      "salt), or pass --allow-unknown to list them with the cold-start list")
    listed = cli(["recommend", str(work), "--user", f"stranger{DOMAIN}", "--k", "3", "--allow-unknown", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert {r["user_id"] for r in json.loads(listed.stdout)["rows"]} == {reference(SALT, f"stranger{DOMAIN}")}
    outputs += [by_hash.output, by_raw.output, no_salt.output, unknown.output, listed.output]
    # rejected rows keep their reasons, with pseudonyms and no raw text
    rejected = pq.read_table(work / "rejected.parquet").to_pylist()
    reasons = {r["reason"] for r in rejected}
    assert {"malformed_line", "future_timestamp", "missing_user", "bad_timestamp", "unknown_item", "duplicate"} <= reasons
    assert all(r["raw"] is None for r in rejected)
    assert all(r["user"] in (None, "") or re.fullmatch(r"u_[0-9a-f]{20}", r["user"]) for r in rejected)
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["user_ids"]["hashed"] is True and len(manifest["runs"]) == 2
    n_files = assert_clean(work, needles) + assert_clean(out, needles)
    assert n_files > 10
    for text in outputs:
        for needle in needles:
            assert needle not in text, (needle, text[-3000:])
    assert any("INFO" in text or '"level": "info"' in text for text in outputs)  # info logs were on


def test_the_scan_finds_raw_ids_in_an_unhashed_work_dir(raw, tmp_path):
    """Control for the test above: without the salt the same scan does find the raw ids (in the
    zstd-compressed Parquet files too, through their decoded values)."""
    work = tmp_path / "plain"
    result = cli(["--quiet", "preprocess", str(work), "-c", str(raw / "config.toml"), "--events", str(raw / "base.csv"),
                  "--items", str(raw / "items.jsonl")])
    assert result.exit_code == 0, result.output
    for name in ("users.parquet", "rejected.parquet"):
        with pytest.raises(AssertionError, match="found in"):
            _scan_one(work / name, DOMAIN)
    assert json.loads((work / "manifest.json").read_text())["user_ids"] == {"hashed": False}


# --------------------------------------------------------------------------- ids: stable, keyed


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _preprocess(work: Path, events: Path, items: Path, *extra: str, env=None):
    return cli(["--quiet", "preprocess", str(work), "--events", str(events), "--items", str(items), *extra], env=env)


def test_same_salt_same_ids_across_runs_and_append(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS)
    day1 = _write(tmp_path / "day1.csv", "user_id,item_id,timestamp\nann,i1,100\n  bob ,i2,110\nann,i2,120\n,i1,130\n")
    day2 = _write(tmp_path / "day2.csv", "user_id,item_id,timestamp\nbob,i3,200\ncid,i1,210\nann,i3,220\nbob,i3,50\n")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for work, args, env in ((a, ["--hash-user-ids", SALT], None), (b, [], {SALT_ENV: SALT}),
                            (c, ["--hash-user-ids", OTHER_SALT], {SALT_ENV: SALT})):
        assert _preprocess(work, day1, items, *args, env=env).exit_code == 0
    users = lambda w: pq.read_table(w / "users.parquet").column("user_id").to_pylist()  # noqa: E731
    # the flag and the environment variable give the same ids; the flag wins over the variable
    assert users(a) == users(b) == [reference(SALT, "ann"), reference(SALT, "bob")]
    assert users(c) == [reference(OTHER_SALT, "ann"), reference(OTHER_SALT, "bob")]
    assert sha256_file(a / "users.parquet") == sha256_file(b / "users.parquet")
    assert sha256_file(a / "events.parquet") == sha256_file(b / "events.parquet")
    # append: old users keep their pseudonym and their user_idx; the newcomer is hashed the same way
    assert _preprocess(a, day2, items, "--append", "--hash-user-ids", SALT).exit_code == 0
    assert users(a) == [reference(SALT, u) for u in ("ann", "bob", "cid")]
    rejected = pq.read_table(a / "rejected.parquet").to_pylist()
    assert [(r["reason"], r["user"]) for r in rejected] == [("missing_user", ""), ("out_of_order", reference(SALT, "bob"))]
    m = json.loads((a / "manifest.json").read_text())
    assert m["counts"]["rows_in"] == m["counts"]["events_out"] + m["counts"]["rejected_total"] == 8
    assert m["user_ids"]["salt_check"]["iterations"] >= 100_000
    assert SALT not in (a / "manifest.json").read_text() + (a / "config.toml").read_text()


def test_missing_wrong_or_unexpected_salt_exits_2_and_writes_nothing(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS)
    day1 = _write(tmp_path / "day1.csv", "user_id,item_id,timestamp\nann,i1,100\nbob,i2,110\n")
    day2 = _write(tmp_path / "day2.csv", "user_id,item_id,timestamp\nann,i3,200\n")
    hashed, plain = tmp_path / "hashed", tmp_path / "plain"
    assert _preprocess(hashed, day1, items, "--hash-user-ids", SALT).exit_code == 0
    assert _preprocess(plain, day1, items).exit_code == 0
    before = {p.name: sha256_file(p) for p in hashed.iterdir() if p.is_file() and not p.name.startswith(".")}
    cases = [
        (hashed, [], None, "has hashed user ids: pass the same salt with --hash-user-ids SALT or the environment variable DYEMBED_USER_ID_SALT"),
        (hashed, ["--hash-user-ids", OTHER_SALT], None, "does not match"),
        (hashed, [], {SALT_ENV: OTHER_SALT}, "does not match"),
        (plain, ["--hash-user-ids", SALT], None, "was preprocessed without --hash-user-ids"),
        (plain, [], {SALT_ENV: SALT}, "was preprocessed without --hash-user-ids"),
        (hashed, ["--hash-user-ids", "short"], None, "too short"),
        (hashed, [], {SALT_ENV: ""}, "DYEMBED_USER_ID_SALT is empty"),
    ]
    for work, args, env, message in cases:
        result = _preprocess(work, day2, items, "--append", *args, env=env)
        assert result.exit_code == 2, (args, env, result.output)
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert SALT not in result.output and OTHER_SALT not in result.output
    after = {p.name: sha256_file(p) for p in hashed.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before


def test_update_checks_the_salt_before_touching_anything(tmp_path_factory, tmp_path):
    from update_world import copy_world, shared_world

    from dyembed.preprocess.run import preprocess
    from dyembed.update import update

    world = shared_world(tmp_path_factory)
    work = copy_world(world, tmp_path)
    cfg, raw = world[2], world[1]
    # the shared world is not hashed: a salt is refused
    with pytest.raises(ConfigError, match="was preprocessed without --hash-user-ids"):
        update(work, cfg, new_log=raw / "new.csv", user_id_salt=SALT)
    # make it a hashed work dir (preprocess again with a salt), then try without / with a wrong salt
    preprocess(work, cfg, user_id_salt=SALT)
    events = sha256_file(work / "events.parquet")
    result = cli(["update", str(work), "--new-log", str(raw / "new.csv"), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "has hashed user ids: pass the same salt" in result.stderr
    result = cli(["update", str(work), "--new-log", str(raw / "new.csv"), "--json"], env={SALT_ENV: OTHER_SALT})
    assert result.exit_code == 2 and "does not match" in result.stderr
    assert sha256_file(work / "events.parquet") == events


# --------------------------------------------------------------------------- the pieces


def test_vectorised_hashing_equals_the_plain_reference():
    rng = random.Random(3)
    alphabet = "abcXYZ019 _-.@éß中\t"
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(500)]
    values += [None, "", "   ", " ann ", "ann", "\u00a0ann"]
    arr = pa.chunked_array([pa.array(values[:250], pa.string()), pa.array(values[250:], pa.string())])
    got = Pseudonymiser(SALT).array(arr).to_pylist()
    for value, hashed in zip(values, got):
        if value is None:
            assert hashed is None
        elif not value.strip():
            assert hashed == ""  # stays a missing_user
        else:
            assert hashed == reference(SALT, value), value
    assert got[-3] == got[-2]  # trimmed like every id
    assert Pseudonymiser(SALT).one(" ann ") == reference(SALT, "ann")


def test_salt_sources_and_check():
    assert salt_from(None, {}) is None
    assert salt_from(SALT, {SALT_ENV: OTHER_SALT}) == SALT
    assert salt_from(None, {SALT_ENV: OTHER_SALT}) == OTHER_SALT
    for bad in ("", "x" * 15):
        with pytest.raises(ConfigError):
            salt_from(bad, {})
    from dyembed.preprocess.pseudonym import manifest_record

    record = manifest_record(SALT)
    assert verify_salt(record, SALT, "w") is True
    assert SALT not in json.dumps(record)
    with pytest.raises(ConfigError, match="does not match"):
        verify_salt(record, OTHER_SALT, "w")
    assert verify_salt({"hashed": False}, None, "w") is False
    assert verify_salt(None, None, "w") is False  # manifests from before the option
    with pytest.raises(ConfigError, match="no usable user_ids.salt_check"):
        verify_salt({"hashed": True}, SALT, "w")
