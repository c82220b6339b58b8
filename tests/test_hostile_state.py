"""Hostile cases for the state and the work dir (issue 12 §2, §3): lineage breaks and non-finite
numbers. Table-driven: each case prepares a copy of a trained work dir, runs one CLI command and
asserts its exit code, the message (a regex on the one `error:` line) and that nothing in the
work dir changed — every file byte-identical, the previous state above all.

Case format (self-contained, to merge into the shared hostile table): Case(name, world, setup,
args, code, message). `world`: "none" (trained with protocol none) or "split" (protocol loo).
`setup(work, ctx)` breaks the copy; `args` may use {w} (the work dir), {raw} (its raw files),
{foreign} (another work dir) and {user} (the id of users.parquet row 0 after setup)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dyembed.artefacts import sha256_file
from dyembed_cli.app import app
from update_world import shared_world

runner = CliRunner()


@dataclass
class Ctx:
    raw: Path
    cfg: object
    foreign: Path


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    message: str
    setup: Callable[[Path, Ctx], None] | None = None
    world: str = "none"
    extra: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- ways to break a work dir


def _cfg(ctx: Ctx, **data):
    cfg = copy.deepcopy(ctx.cfg)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _rewrite_shorter_log(work: Path, ctx: Ctx) -> None:
    """preprocess again (no --append) from a shorter log: the issue's first example."""
    from dyembed.preprocess.run import preprocess

    with open(ctx.raw / "base.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    short = ctx.raw.parent / "base_short.csv"
    with open(short, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows[:-400])
    preprocess(work, _cfg(ctx, events=str(short)))


def _renumber_users(work: Path, ctx: Ctx) -> None:
    """preprocess again with a filter that drops users: the rest get other user_idx."""
    from dyembed.preprocess.run import preprocess

    before = pq.read_table(work / "users.parquet").column("user_id").to_pylist()
    preprocess(work, _cfg(ctx, min_user_events=33))
    after = pq.read_table(work / "users.parquet").column("user_id").to_pylist()
    assert len(after) < len(before) and after != before[:len(after)]


def _re_encode_with_another_model(work: Path, ctx: Ctx) -> None:
    from dyembed.encode.run import encode

    cfg = copy.deepcopy(ctx.cfg)
    cfg.encode.seed = 7  # the hashing encoder's projection: another model, same dimension
    encode(work, cfg)


def _insert_late_rows(work: Path, ctx: Ctx) -> None:
    """preprocess --append with data.allow_late = keep: rows land before the state's watermark."""
    from dyembed.preprocess.run import preprocess

    users = pq.read_table(work / "users.parquet").column("user_id").to_pylist()
    items = pq.read_table(work / "items.parquet").column("item_id").to_pylist()
    ts0 = int(pq.read_table(work / "events.parquet").column("ts")[0].as_py())
    late = ctx.raw.parent / "late.csv"
    late.write_text("user_id,item_id,timestamp,event\n" + "".join(
        f"{users[k]},{items[k]},{ts0 + 10 + k},click\n" for k in range(3)))
    preprocess(work, _cfg(ctx, events=str(late)), append=True, allow_late="keep")


def _copy_foreign_state(work: Path, ctx: Ctx) -> None:
    for d in work.glob("state*"):
        shutil.rmtree(d)
    shutil.copytree(ctx.foreign / "state", work / "state")


def _foreign_previous_version(work: Path, ctx: Ctx) -> None:
    shutil.copytree(ctx.foreign / "state", work / "state.prev")


def _edit_table(name: str, column: str, change: Callable[[list], None]) -> Callable[[Path, Ctx], None]:
    def setup(work: Path, ctx: Ctx) -> None:
        table = pq.read_table(work / name)
        values = table.column(column).to_pylist()
        change(values)
        i = table.column_names.index(column)
        pq.write_table(table.set_column(i, column, pa.array(values, table.schema.field(column).type)), work / name)
    return setup


def _swap01(values: list) -> None:
    values[0], values[1] = values[1], values[0]


def _other_item(values: list) -> None:
    values[10] = (values[10] + 1) % 40


def _rename(values: list) -> None:
    values[0] = "no-such-item"


def _negate_vector(values: list) -> None:
    values[0] = [-x for x in values[0]]


def _remove(name: str) -> Callable[[Path, Ctx], None]:
    return lambda work, ctx: (work / name).unlink()


def _state_manifest(change: Callable[[dict], None], directory: str = "state") -> Callable[[Path, Ctx], None]:
    def setup(work: Path, ctx: Ctx) -> None:
        path = work / directory / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))
    return setup


def _rechecksum(work: Path, name: str) -> None:
    """After editing a state file: record its new size and sha256, as a forger (or a bug) would."""
    path = work / "state" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = {"bytes": (work / "state" / name).stat().st_size, "sha256": sha256_file(work / "state" / name)}
    path.write_text(json.dumps(manifest))


def _nan_in(name: str, value: float = float("nan")) -> Callable[[Path, Ctx], None]:
    def setup(work: Path, ctx: Ctx) -> None:
        path = work / "state" / name
        array = np.load(path)
        array.reshape(-1)[3] = value
        np.save(path, array)
        _rechecksum(work, name)
    return setup


def _inf_in_theta(work: Path, ctx: Ctx) -> None:
    path = work / "state" / "theta.npz"
    theta = dict(np.load(path))
    theta["u0"][0] = np.inf
    with open(path, "wb") as fh:
        np.savez(fh, **theta)
    _rechecksum(work, "theta.npz")


def _bad_config_file(work: Path, ctx: Ctx) -> None:
    (work / "bad.toml").write_text("[model]\nstep_size = inf\n")


# --------------------------------------------------------------------------- the table

FOREIGN = r"does not belong to the work dir"
RETRAIN = r"run `dyembed train .*` to train a state on these files"
CASES = [
    # §2, the four examples
    Case("rewritten shorter log, then update", ["update", "{w}", "--new-log", "{raw}/new.csv"], 4,
         FOREIGN + r".*events.parquet has \d+ rows, fewer than the 960 the state consumed.*" + RETRAIN,
         _rewrite_shorter_log),
    Case("append another format", ["preprocess", "{w}", "--append", "--format", "generic", "--events", "{raw}/new.csv",
                                   "--items", "{raw}/items.jsonl"], 2,
         r"preprocessed with data.format='synth'; --append with 'generic' would merge two datasets"),
    Case("rejected.parquet deleted, then append", ["preprocess", "{w}", "--append", "--events", "{raw}/new.csv"], 4,
         r"rejected.parquet is missing but .*manifest.json records it \(\d+ rows\)", _remove("rejected.parquet")),
    Case("users renumbered, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         FOREIGN + r".*users.parquet has \d+ rows, fewer than the 30 the state knows", _renumber_users),
    # §2, more of the class: the log
    Case("users renumbered, then update", ["update", "{w}", "--new-log", "{raw}/new.csv"], 4, FOREIGN, _renumber_users),
    Case("users renumbered, then resume", ["train", "{w}", "--resume"], 4, FOREIGN + r".*events.parquet", _renumber_users),
    Case("rewritten log, then resume", ["train", "{w}", "--resume"], 4, r"fewer than the 960 the state consumed",
         _rewrite_shorter_log),
    Case("rewritten log, then state verify", ["state", "verify", "{w}"], 4, FOREIGN, _rewrite_shorter_log),
    Case("late rows inserted before the watermark, then resume", ["train", "{w}", "--resume"], 4,
         r"events.parquet rows 0–\d+ differ from the events the state consumed", _insert_late_rows),
    Case("an event row edited, then resume", ["train", "{w}", "--resume"], 4, r"events.parquet rows 0–\d+ differ",
         _edit_table("events.parquet", "item_idx", _other_item)),
    Case("an event row edited, then recommend", ["recommend", "{w}", "--user", "{user}"], 4, r"rows 0–\d+ differ",
         _edit_table("events.parquet", "item_idx", _other_item)),
    Case("events.parquet deleted, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"events.parquet is missing \(the state consumed 960 events\)", _remove("events.parquet")),
    # the id maps
    Case("two user ids swapped, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"users.parquet maps user_idx 0–29 to other ids than the state's", _edit_table("users.parquet", "user_id", _swap01)),
    Case("two user ids swapped, then update", ["update", "{w}", "--new-log", "{raw}/new.csv"], 4, r"users.parquet (maps|does not match)",
         _edit_table("users.parquet", "user_id", _swap01)),
    Case("an item renamed, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"items.parquet maps item_idx 0–\d+ to other ids", _edit_table("items.parquet", "item_id", _rename)),
    Case("an item renamed, then resume", ["train", "{w}", "--resume"], 4, r"items.parquet maps",
         _edit_table("items.parquet", "item_id", _rename)),
    Case("users.parquet deleted, then resume", ["train", "{w}", "--resume"], 4, r"users.parquet is missing",
         _remove("users.parquet")),
    # item vectors and the encoder
    Case("re-encoded with another model, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"encoded by another encoder \(fingerprint \w+ → \w+.*" + RETRAIN, _re_encode_with_another_model),
    Case("re-encoded with another model, then resume", ["train", "{w}", "--resume"], 4, r"encoded by another encoder",
         _re_encode_with_another_model),
    Case("re-encoded with another model, then update", ["update", "{w}", "--new-log", "{raw}/new.csv"], 4,
         r"encoded by another encoder", _re_encode_with_another_model),
    Case("vectors edited under the same encoder, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"holds other vectors for items 0–\d+ .*re-encoded since.*--resume` \(or `dyembed update`\) to take",
         _edit_table("item_embeddings.parquet", "embedding", _negate_vector)),
    Case("encode_manifest.json deleted, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"encode_manifest.json is missing \(the state's item vectors came from encoder \w+\)",
         _remove("encode_manifest.json")),
    Case("item_embeddings.parquet deleted, then state verify", ["state", "verify", "{w}"], 4,
         r"item_embeddings.parquet is missing", _remove("item_embeddings.parquet")),
    # preprocess --append consistency
    Case("append with another text template", ["preprocess", "{w}", "--append", "--events", "{raw}/new.csv",
                                              "--set", "data.text_template={{title}}"], 2,
         r"preprocessed with data.text_template=.*--append with '\{title\}' would give old and new items texts"),
    Case("append with another language", ["preprocess", "{w}", "--append", "--events", "{raw}/new.csv",
                                         "--set", "data.language=german"], 2,
         r"data.language='english'; --append with 'german' would tokenise"),
    Case("events.parquet replaced, then append", ["preprocess", "{w}", "--append", "--events", "{raw}/new.csv"], 4,
         r"events.parquet is not the file .*manifest.json records", _edit_table("events.parquet", "item_idx", _other_item)),
    Case("preprocess manifest counts edited, then append", ["preprocess", "{w}", "--append", "--events", "{raw}/new.csv"],
         4, r"manifest.json does not add up", lambda w, c: _edit_json(w / "manifest.json", ["counts", "rows_in"], 5)),
    Case("work dir manifest deleted, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"manifest.json \(preprocess\) is missing", _remove("manifest.json")),
    Case("work dir preprocessed as another format, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"preprocessed with data.format='generic', the state's log with 'synth'",
         lambda w, c: _edit_json(w / "manifest.json", ["format"], "generic")),
    # a state from elsewhere
    Case("state copied from another work dir, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         FOREIGN + r".*events.parquet", _copy_foreign_state),
    Case("state copied from another work dir, then resume", ["train", "{w}", "--resume"], 4, FOREIGN, _copy_foreign_state),
    Case("state copied from another work dir, then update", ["update", "{w}", "--new-log", "{raw}/new.csv"], 4, FOREIGN,
         _copy_foreign_state),
    Case("state copied from another work dir, then state verify", ["state", "verify", "{w}"], 4, FOREIGN,
         _copy_foreign_state),
    Case("a foreign previous version, then rollback", ["state", "rollback", "{w}"], 4,
         r"cannot roll back to state.prev \(version 1\): .*" + FOREIGN, _foreign_previous_version),
    Case("state of an older dyembed", ["recommend", "{w}", "--user", "{user}"], 4,
         r"written by an older dyembed \(state format 1: no lineage record",
         _state_manifest(lambda m: m.update(format_version=1))),
    Case("lineage record removed", ["train", "{w}", "--resume"], 4, r"has no lineage record",
         _state_manifest(lambda m: m.pop("lineage"))),
    Case("lineage record malformed", ["recommend", "{w}", "--user", "{user}"], 4, r"has a malformed lineage record",
         _state_manifest(lambda m: m["lineage"]["events"].update(rows="many"))),
    Case("lineage record malformed, then state verify", ["state", "verify", "{w}"], 4, r"malformed lineage record",
         _state_manifest(lambda m: m["lineage"].update(users=[1]))),
    # evaluate
    Case("evaluate a protocol-none state", ["evaluate", "{w}"], 4,
         r"cannot be evaluated: it was trained with --protocol none .*--protocol loo"),
    Case("evaluate after the history was rewritten", ["evaluate", "{w}", "--protocol", "loo"], 4,
         r"evaluation snapshot\) does not belong to the work dir .*training and validation rows of events.parquet differ",
         _edit_table("events.parquet", "item_idx", _other_item), world="split"),
    Case("evaluate after re-encoding with another model", ["evaluate", "{w}", "--protocol", "loo"], 4,
         r"encoded by another encoder", _re_encode_with_another_model, world="split"),
    Case("evaluate with users renumbered", ["evaluate", "{w}", "--protocol", "loo"], 4, FOREIGN, _renumber_users,
         world="split"),
    # §3: non-finite numbers, in the config ...
    Case("train with step size inf", ["train", "{w}", "--set", "model.step_size=inf"], 2,
         r"config key 'model.step_size' \(--set\) must be a finite number > 0; got inf"),
    Case("train with lr nan", ["train", "{w}", "--set", "train.lr=nan"], 2, r"config key 'train.lr' .*got nan"),
    Case("train with temperature 0", ["train", "{w}", "--set", "model.temperature=0"], 2,
         r"config key 'model.temperature' .*must be a finite number > 0"),
    Case("train with a config file holding inf", ["train", "{w}", "--config", "{w}/bad.toml"], 2,
         r"config key 'model.step_size' \(.*bad.toml\) must be a finite number > 0; got inf", _bad_config_file),
    Case("update with eps -1", ["update", "{w}", "--new-log", "{raw}/new.csv", "--set", "model.eps=-1"], 2,
         r"config key 'model.eps'"),
    Case("evaluate with repeat threshold 1.5", ["evaluate", "{w}", "--set", "evaluate.repeat_threshold=1.5"], 2,
         r"config key 'evaluate.repeat_threshold' .*<= 1"),
    Case("recommend with max_block_mb 0", ["recommend", "{w}", "--user", "{user}", "--set", "evaluate.max_block_mb=0"],
         2, r"config key 'evaluate.max_block_mb'"),
    Case("resume with batch_size -3", ["train", "{w}", "--resume", "--set", "train.batch_size=-3"], 2,
         r"config key 'train.batch_size' .*must be an integer >= 1; got -3"),
    Case("a huge integer", ["train", "{w}", "--set", "train.window=100000000000000000000"], 2,
         r"config key 'train.window' .*at most 9223372036854775807"),
    # ... a run that diverges ...
    Case("training that diverges (θ step)", ["train", "{w}", "--set", "train.lr=1e30", "--epochs", "3"], 4,
         r"training diverged in epoch \d \(train loss nan\): nothing was saved, the previous state is kept"),
    Case("training that diverges (temperature)", ["train", "{w}", "--set", "model.temperature=1e-30"], 4,
         r"training diverged in epoch 1 \(train loss (nan|inf)\)"),
    # ... and in a state on disk (checksums made to match: only the numbers are wrong)
    Case("NaN in U, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"state file .*U.npy holds non-finite numbers", _nan_in("U.npy")),
    Case("NaN in U, then state verify", ["state", "verify", "{w}"], 4, r"U.npy holds 1 non-finite numbers",
         _nan_in("U.npy")),
    Case("inf in U, then resume", ["train", "{w}", "--resume"], 4, r"U.npy holds 1 non-finite",
         _nan_in("U.npy", float("inf"))),
    Case("NaN in U, then update", ["update", "{w}", "--new-log", "{raw}/new.csv"], 4, r"U.npy holds 1 non-finite",
         _nan_in("U.npy")),
    Case("inf in theta, then recommend", ["recommend", "{w}", "--user", "{user}"], 4,
         r"theta.npz holds non-finite numbers", _inf_in_theta),
    Case("inf in theta, then state verify", ["state", "verify", "{w}"], 4, r"theta.npz holds 1 non-finite",
         _inf_in_theta),
    Case("NaN in the snapshot, then evaluate", ["evaluate", "{w}", "--protocol", "loo"], 4,
         r"eval/U.npy holds non-finite numbers", _nan_in("eval/U.npy"), world="split"),
]


def _edit_json(path: Path, keys: list[str], value) -> None:
    data = json.loads(path.read_text())
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- worlds and the runner


def _build_foreign(root: Path) -> Path:
    """Another dataset's trained work dir (same settings, other synthetic world)."""
    from dyembed.config import SynthConfig
    from dyembed.encode.run import encode
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.train import train
    from dyembed.synth import generate
    from update_world import world_config

    generate(SynthConfig(users=20, items=30, events=800, topics=3, seed=5, malformed_rows=0), root / "raw")
    cfg = world_config(root / "raw")
    cfg.data.events = str(root / "raw" / "events.csv")
    preprocess(root / "work", cfg)
    encode(root / "work", cfg)
    train(root / "work", cfg)
    return root / "work"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    from dyembed.replay.train import train

    work, raw, cfg = shared_world(tmp_path_factory)
    split = tmp_path_factory.mktemp("hostile_split") / "work"
    shutil.copytree(work, split)
    split_cfg = copy.deepcopy(cfg)
    split_cfg.train.protocol = "loo"
    train(split, split_cfg)
    (split / "config.toml").write_text((split / "state" / "config.toml").read_text())
    foreign = _build_foreign(tmp_path_factory.mktemp("hostile_foreign"))
    return {"none": work, "split": split, "raw": raw, "cfg": cfg, "foreign": foreign}


def _snapshot(work: Path) -> dict[str, str]:
    """sha256 of every file in the work dir (the lock file aside: taking the lock writes it)."""
    return {p.relative_to(work).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.rglob("*")) if p.is_file() and p.name != ".dyembed.lock"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_state_case(case: Case, worlds, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(worlds[case.world], work)
    raw = tmp_path / "raw"
    shutil.copytree(worlds["raw"], raw)
    ctx = Ctx(raw=raw, cfg=worlds["cfg"], foreign=worlds["foreign"])
    if case.setup is not None:
        case.setup(work, ctx)
    user = pq.read_table(work / "users.parquet").column("user_id")[0].as_py() if (work / "users.parquet").is_file() else "x"
    args = [a.format(w=work, raw=raw, foreign=worlds["foreign"], user=user) for a in case.args]
    before = _snapshot(work)
    result = runner.invoke(app, ["--quiet", *args])
    assert result.exit_code == case.code, (result.exit_code, result.stderr, result.stdout)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(case.message, lines[0]), lines[0]
    assert result.stdout == ""
    assert _snapshot(work) == before  # nothing written: the previous state (and every artefact) byte-identical


def _command(case: Case) -> str:
    if case.args[0] == "state":
        return f"state {case.args[1]}"
    return case.args[0] + (" --resume" if "--resume" in case.args else "")


def test_the_table_covers_every_reader_of_a_state():
    """Each command that reads a state (or appends under one) meets a foreign one in the table."""
    refused = {_command(c) for c in CASES if c.code == 4}
    assert {"recommend", "update", "train --resume", "evaluate", "state verify", "state rollback", "preprocess"} <= refused
    assert len(CASES) >= 50
