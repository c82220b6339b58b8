"""Lineage (dyembed/lineage.py): the digests a state records of what it consumed, and the check
that finds every way the work dir stopped holding it. Plus the config constraint table (§3)."""

from __future__ import annotations

import hashlib
import typing

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dyembed import lineage
from dyembed.errors import StateError
from replay_world import features, random_events, write_workdir


def _digest_in_pieces(values: np.ndarray, chunk: int, sizes, marks=()) -> lineage.RowDigest:
    d = lineage.RowDigest({"x": "<i8"}, chunk, marks)
    pos = 0
    for size in sizes:
        d.update(x=values[pos:pos + size])
        pos += size
    d.update(x=values[pos:])
    return d


def test_row_digest_does_not_depend_on_how_rows_are_fed_and_marks_give_prefix_digests():
    values = np.arange(1000, dtype=np.int64) * 7
    a = _digest_in_pieces(values, 64, [1000])
    b = _digest_in_pieces(values, 64, [1, 63, 64, 100, 3, 500], marks=[130, 640, 999])
    assert a.record() == b.record() and len(a.record()["chunks"]) == 16  # 15 full chunks + a partial one
    for mark in (130, 640, 999):
        alone = _digest_in_pieces(values[:mark], 64, [mark])
        assert b.record(mark) == alone.record()  # the prefix digest needs no second pass
        assert b.first_difference(alone.record()) is None
    changed = values.copy()
    changed[200] += 1
    c = _digest_in_pieces(changed, 64, [333], marks=[150])
    assert c.first_difference(a.record()) == 192  # the chunk holding row 200
    assert c.first_difference(_digest_in_pieces(values[:150], 64, [7]).record()) is None  # prefix before the change
    # the digest is sha256 over the values column by column: a plain reference of one full chunk
    inner = hashlib.sha256(values[:64].astype("<i8").tobytes()).digest()
    assert a.chunks[0] == hashlib.sha256(b"64" + b"x" + inner).hexdigest()


def _world(tmp_path, n=600, users=12, items=30):
    X = features(items, 8, seed=1)
    u, i, t = random_events(n, users, items, seed=2)
    wd = write_workdir(tmp_path / "wd", u, i, t, X)
    pq.write_table(pa.table({"item_idx": pa.array(np.arange(items), pa.int32()),
                             "item_id": [f"item{j}" for j in range(items)]}), wd / "items.parquet")
    return wd, (u, i, t, X)


def _record(wd, rows=None):
    from dyembed.replay.io import load_features

    vectors = lineage.vector_digest()
    load_features(wd, digest=vectors)
    sc = lineage.scan(wd, vectors=vectors, event_marks=[rows] if rows else [])
    n_users = pq.ParquetFile(wd / "users.parquet").metadata.num_rows
    return lineage.record(sc, rows=rows or sc.events.rows, n_users=n_users, n_items=vectors.rows)


def _problems(wd, record):
    return lineage.problems(record, lineage.scan(wd, **lineage.marks(record)))


def test_a_work_dir_belongs_to_its_own_record_and_to_appended_rows(tmp_path):
    wd, (u, i, t, X) = _world(tmp_path)
    rec = _record(wd, rows=400)
    assert _problems(wd, rec) == []
    # appending rows (and a new user, a new item) keeps the prefix: still belongs
    write_workdir(wd, np.r_[u, 12], np.r_[i, 3], np.r_[t, t[-1] + 5], np.r_[X, X[:1]])
    pq.write_table(pa.table({"item_idx": pa.array(np.arange(31), pa.int32()),
                             "item_id": [f"item{j}" for j in range(31)]}), wd / "items.parquet")
    assert _problems(wd, rec) == []


@pytest.mark.parametrize("change, expected", [
    ("shorter log", r"events.parquet has 300 rows, fewer than the 600 the state consumed"),
    ("an edited row", r"events.parquet rows 0–599 differ from the events the state consumed"),
    ("a weight column", r"events.parquet rows 0–599 differ"),
    ("renumbered users", r"users.parquet maps user_idx 0–11 to other ids than the state's"),
    ("fewer users", r"users.parquet has 5 rows, fewer than the 12 the state knows"),
    ("renamed item", r"items.parquet maps item_idx 0–29 to other ids"),
    ("other vectors", r"item_embeddings.parquet holds other vectors for items 0–29 .*re-encoded since"),
    ("other dimension", r"item_embeddings.parquet has 4-d vectors, the state was trained on 8-d ones"),
])
def test_each_kind_of_change_is_named(tmp_path, change, expected):
    wd, (u, i, t, X) = _world(tmp_path)
    rec = _record(wd)
    if change == "shorter log":
        write_workdir(wd, u[:300], i[:300], t[:300], X, n_users=12)
    elif change == "an edited row":
        i2 = i.copy()
        i2[123] = (i2[123] + 1) % 30
        write_workdir(wd, u, i2, t, X)
    elif change == "a weight column":
        write_workdir(wd, u, i, t, X, weight=np.ones(len(u), np.float32))
    elif change == "renumbered users":
        pq.write_table(pa.table({"user_idx": pa.array(np.arange(12), pa.int32()),
                                 "user_id": [f"u{(k + 1) % 12}" for k in range(12)]}), wd / "users.parquet")
    elif change == "fewer users":
        pq.write_table(pa.table({"user_idx": pa.array(np.arange(5), pa.int32()),
                                 "user_id": [f"u{k}" for k in range(5)]}), wd / "users.parquet")
    elif change == "renamed item":
        pq.write_table(pa.table({"item_idx": pa.array(np.arange(30), pa.int32()),
                                 "item_id": [f"item{j}" if j != 7 else "other" for j in range(30)]}), wd / "items.parquet")
    elif change == "other vectors":
        X2 = X.copy()
        X2[5] = -X2[5]
        write_workdir(wd, u, i, t, X2)
    elif change == "other dimension":
        write_workdir(wd, u, i, t, features(30, 4, seed=1))
    found = _problems(wd, rec)
    assert len(found) == 1 and __import__("re").search(expected, found[0]), found


def test_re_encoded_items_pass_only_for_resume_and_only_with_the_same_encoder(tmp_path):
    wd, (u, i, t, X) = _world(tmp_path)
    (wd / "encode_manifest.json").write_text('{"fingerprint_id": "enc-A"}')
    rec = _record(wd)
    X2 = X.copy()
    X2[5] = -X2[5]
    write_workdir(wd, u, i, t, X2)
    sc = lineage.scan(wd, **lineage.marks(rec))
    assert lineage.problems(rec, sc) and not lineage.problems(rec, sc, allow_reencoded=True)
    with pytest.raises(StateError, match=r"--resume` \(or `dyembed update`\) to take the re-encoded items in"):
        lineage.require(wd, wd / "state", rec, sc)
    # another encoder: never, and the message says to retrain
    (wd / "encode_manifest.json").write_text('{"fingerprint_id": "enc-B"}')
    sc = lineage.scan(wd, **lineage.marks(rec))
    found = lineage.problems(rec, sc, allow_reencoded=True)
    assert found == ["item_embeddings.parquet was encoded by another encoder (fingerprint enc-A → enc-B; "
                     "`dyembed encode` with another model?)"]
    with pytest.raises(StateError, match=r"run `dyembed train .*` to train a state on these files"):
        lineage.require(wd, wd / "state", rec, sc, allow_reencoded=True)


def test_preprocess_settings_and_malformed_records(tmp_path):
    import json

    wd, _ = _world(tmp_path)
    (wd / "manifest.json").write_text(json.dumps({"format": "synth", "text_template": "{title}", "language": "english",
                                                  "user_ids": {"hashed": False}}))
    rec = _record(wd)
    assert rec["preprocess"] == {"format": "synth", "text_template": "{title}", "language": "english",
                                 "user_ids_hashed": False, "salt_check": None}
    (wd / "manifest.json").write_text(json.dumps({"format": "generic", "text_template": "{title}", "language": "english",
                                                  "user_ids": {"hashed": True, "salt_check": {"digest": "x"}}}))
    assert _problems(wd, rec) == ["the work dir was preprocessed with data.format='generic', the state's log with 'synth'",
                                  "the work dir's user ids were pseudonymised differently (--hash-user-ids salt) than the "
                                  "state's"]
    sc = lineage.scan(wd)
    with pytest.raises(StateError, match="no lineage record"):
        lineage.require(wd, wd / "state", None, sc)
    for broken in ({**rec, "events": {"rows": "many"}}, {**rec, "users": [1]}, {**rec, "vectors": {"rows": -1}}):
        assert lineage.marks(broken)["event_marks"] == []
        with pytest.raises(StateError, match="malformed lineage record"):
            lineage.require(wd, wd / "state", broken, sc)


# --------------------------------------------------------------------------- §3 config constraints


def _numeric_keys() -> set[str]:
    from dyembed.config import Config

    keys = set()
    for section, cls in typing.get_type_hints(Config).items():
        for name, hint in typing.get_type_hints(cls).items():
            kinds = set(typing.get_args(hint)) | {hint}
            if kinds & {int, float}:  # int, float, int | None, float | None, list[int]
                keys.add(f"{section}.{name}")
    return keys


def test_every_numeric_config_key_has_a_constraint():
    """A new int/float key (a θ parameter, say) must say what values are valid: add it to
    dyembed.config.CONSTRAINTS."""
    from dyembed.config import CONSTRAINTS

    assert _numeric_keys() == set(CONSTRAINTS)


def _bad_values(rule):
    out = [float("nan"), float("inf"), -float("inf")]
    if rule.low is not None:
        out.append(rule.low if rule.low_open else rule.low - 1)
    if rule.high is not None:
        out.append(rule.high if rule.high_open else rule.high + 1)
    return out


@pytest.mark.parametrize("key", sorted(_numeric_keys()))
def test_out_of_range_and_non_finite_values_are_refused_naming_the_key(key):
    from dyembed.config import CONSTRAINTS, Config, check_values, load_config

    load_config()  # the defaults are valid
    section, name = key.split(".")
    is_int = int in {typing.get_type_hints(type(getattr(Config(), section)))[name], 
                     *typing.get_args(typing.get_type_hints(type(getattr(Config(), section)))[name])}
    for bad in _bad_values(CONSTRAINTS[key]):
        if is_int and not np.isfinite(bad):
            value = "nan"  # an int key cannot hold NaN: the type check names it
        else:
            value = str(int(bad)) if is_int else repr(float(bad))
        if key == "evaluate.ks":
            value = f"[{value}]"
        with pytest.raises(Exception, match=f"config key '{key}") as info:
            load_config(overrides=[f"{key}={value}"])
        assert info.value.exit_code == 2
    # configs built in code are checked by the library entry points
    cfg = Config()
    rule = CONSTRAINTS[key]
    bad = (int(rule.low) - 1 if rule.low is not None else 2**64) if is_int else float("nan")
    setattr(getattr(cfg, section), name, [bad] if key == "evaluate.ks" else bad)
    with pytest.raises(Exception, match=f"config key '{key}'"):
        check_values(cfg)


def test_huge_integers_are_refused():
    from dyembed.config import load_config

    with pytest.raises(Exception, match=r"config key 'synth.events' \(--set\) must be an integer of at most 9223372036854775807 in size"):
        load_config(overrides=["synth.events=100000000000000000000000"])
