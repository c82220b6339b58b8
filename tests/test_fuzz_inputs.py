"""Hardening: every input parser (event logs, item files, config, state files), fed through the
CLI, ends with exit 0, 2, 3 or 4 and a one-line message — never a traceback (exit 1), a hang or
partial output. Plus the named nasty cases: 10 MB single lines, NUL bytes, mixed encodings,
timestamps far in the future.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dyembed_cli.app import app
from update_world import copy_world, shared_updated_world

runner = CliRunner()
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ITEMS = "item_id,title,description\ni1,Red shoes,Shoes that are red\ni2,Blue hat,A hat\ni3,,\n"
ARTEFACTS = ("events.parquet", "items.parquet", "users.parquet", "rejected.parquet", "manifest.json", "config.toml")


def _clean_exit(result, allowed=(0, 2, 3, 4)) -> None:
    """Exit in `allowed`; a failure says `error: …` on one stderr line and prints nothing on stdout."""
    assert result.exit_code in allowed, (result.exit_code, result.stderr[-2000:], repr(result.exception))
    # (a bug surfaces as "error: unexpected <Exception>: … (rerun with --debug …)", exit 1)
    assert "Traceback" not in result.stderr and "rerun with --debug" not in result.stderr, result.stderr[-2000:]
    if result.exit_code != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1, result.stderr[-2000:]
        assert result.stdout == ""


def _preprocess(events: bytes, items: str = ITEMS, extra: list[str] | None = None):
    """Preprocess in a fresh dir; checks all-or-nothing outputs. Returns the CliRunner result."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "events.csv").write_bytes(events)
        (tmp / "items.csv").write_text(items, encoding="utf-8")
        work = tmp / "work"
        result = runner.invoke(app, ["--quiet", "preprocess", str(work), "--events", str(tmp / "events.csv"),
                                     "--items", str(tmp / "items.csv"), "--format", "generic", *(extra or [])])
        _clean_exit(result)
        present = [n for n in ARTEFACTS if (work / n).exists()]
        if result.exit_code == 0:
            assert present == list(ARTEFACTS)
            json.loads((work / "manifest.json").read_text())
        else:
            assert present == [] and not list(work.glob(".*.tmp")) if work.exists() else True
        return result


# --------------------------------------------------------------------------- event logs

field = st.one_of(
    st.sampled_from(["u1", "u2", "i1", "i2", "i3", "", " ", '"', "1600000000", "1e9", "-1", "nan", "inf"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=10),
)
row = st.lists(field, min_size=0, max_size=5).map(",".join)
encoding = st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"])


@FUZZ
@given(rows=st.lists(row, max_size=12), enc=encoding, header=st.booleans())
def test_fuzz_event_logs(rows, enc, header):
    text = ("user_id,item_id,timestamp\n" if header else "") + "\n".join(rows)
    _preprocess(text.encode(enc, errors="replace"))


@FUZZ
@given(data=st.binary(max_size=600), header=st.booleans())
def test_fuzz_event_log_bytes(data, header):
    _preprocess((b"user_id,item_id,timestamp\n" if header else b"") + data)


# --------------------------------------------------------------------------- item files


@FUZZ
@given(rows=st.lists(row, max_size=8), enc=encoding)
def test_fuzz_item_files(rows, enc):
    events = b"user_id,item_id,timestamp\nu1,i1,1600000000\nu2,i2,1600000100\n"
    items = "item_id,title,description\n" + "\n".join(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.csv"
        path.write_bytes(items.encode(enc, errors="replace"))
        (Path(tmp) / "events.csv").write_bytes(events)
        work = Path(tmp) / "work"
        result = runner.invoke(app, ["--quiet", "preprocess", str(work), "--events", str(Path(tmp) / "events.csv"),
                                     "--items", str(path), "--format", "generic"])
        _clean_exit(result)


# --------------------------------------------------------------------------- config

DATA_KEYS = ["format", "user_col", "item_col", "time_col", "rating_col", "weight_col", "event_col", "item_id_col",
             "text_template", "time_format", "delimiter", "encoding", "min_rating", "min_user_events",
             "min_item_events", "kcore", "require_text", "drop_duplicates", "keep_unused_items", "allow_late",
             "language", "chunk_rows", "nonsense"]
value = st.one_of(st.integers(min_value=-5, max_value=50), st.floats(allow_nan=False, width=32), st.booleans(),
                  st.text(max_size=12), st.sampled_from(["{title}", "{", "}{", "{0}", "%Y", "%", "iso", "unix_ms", "\\t",
                                                         "latin-1", "english", "klingon", "synth", "mind"]),
                  st.lists(st.integers(0, 3), max_size=3))


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(DATA_KEYS), value, max_size=4),
       section=st.sampled_from(["data", "data", "data", "runtime", "nosuch"]))
def test_fuzz_config_values(entries, section):
    toml = f"[{section}]\n" + "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in entries.items())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(toml, encoding="utf-8")
        events = Path(tmp) / "events.csv"
        events.write_text("user_id,item_id,timestamp\nu1,i1,1600000000\nu2,i2,1600000100\n")
        items = Path(tmp) / "items.csv"
        items.write_text(ITEMS)
        result = runner.invoke(app, ["--quiet", "preprocess", str(Path(tmp) / "w"), "--config", str(cfg),
                                     "--events", str(events), "--items", str(items)])
        _clean_exit(result)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_fuzz_config_files(text):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_bytes(text.encode("utf-8", errors="replace"))
        result = runner.invoke(app, ["--quiet", "update", str(Path(tmp) / "nowork"), "--new-log", str(cfg),
                                     "--config", str(cfg)])
        _clean_exit(result, allowed=(2, 3))


@FUZZ
@given(item=st.text(max_size=30))
def test_fuzz_set_overrides(item):
    result = runner.invoke(app, ["--quiet", "update", "/nonexistent-dir", "--new-log", "x", "--set", item])
    _clean_exit(result, allowed=(2, 3))


# --------------------------------------------------------------------------- state files

STATE_FILES = ["manifest.json", "U.npy", "slots.npy", "count.npy", "last_ts.npy", "theta.npz", "config.toml"]


@pytest.fixture(scope="module")
def state_work(tmp_path_factory):
    return copy_world(shared_updated_world(tmp_path_factory), tmp_path_factory.mktemp("fuzz_state"))


@FUZZ
@given(name=st.sampled_from(STATE_FILES), how=st.sampled_from(["replace", "truncate", "flip", "append"]),
       junk=st.binary(max_size=64), where=st.floats(0.0, 1.0))
def test_fuzz_state_files(state_work, name, how, junk, where):
    path = state_work / "state" / name
    original = path.read_bytes()
    pos = min(len(original) - 1, int(where * len(original)))
    try:
        if how == "replace":
            damaged = junk
        elif how == "truncate":
            damaged = original[:pos]
        elif how == "flip":
            damaged = original[:pos] + bytes([original[pos] ^ 0xFF]) + original[pos + 1:]
        else:
            damaged = original + (junk or b"\x00")
        path.write_bytes(damaged)
        result = runner.invoke(app, ["--quiet", "state", "verify", str(state_work)])
        _clean_exit(result, allowed=(4,))
        assert str(path) in result.stderr
        result = runner.invoke(app, ["--quiet", "update", str(state_work), "--new-log", str(state_work / "events.parquet"),
                                     "--json"])
        _clean_exit(result, allowed=(4,))
        assert str(path) in result.stderr
    finally:
        path.write_bytes(original)


def test_fuzzed_state_left_the_work_dir_untouched(state_work):
    result = runner.invoke(app, ["state", "verify", str(state_work)])
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------- the named nasty inputs


def test_ten_megabyte_single_lines():
    big_id = b"u" * 10_000_000
    result = _preprocess(b"user_id,item_id,timestamp\n" + big_id + b",i1,1600000000\nu2,i2,1600000001\n")
    assert result.exit_code == 0
    result = _preprocess(b"user_id,item_id,timestamp\n" + b"x" * 10_000_000)  # one line, no newline, no fields
    # the one (malformed) row is counted and named, not lost
    assert result.exit_code == 3 and "yields zero valid events (1 rows rejected: malformed_line 1)" in result.stderr


def test_nul_bytes():
    result = _preprocess(b"user_id,item_id,timestamp\nu\x001,i1,1600000000\nu2,i2\x00,1600000001\nu3,i1,16\x0000\n")
    assert result.exit_code == 0
    result = _preprocess(b"\x00" * 1000)
    assert result.exit_code == 3


def test_mixed_encodings():
    mixed = "user_id,item_id,timestamp\nué,i1,1600000000\n".encode() + "uè,i2,1600000001\n".encode("latin-1")
    result = _preprocess(mixed)
    assert result.exit_code == 3 and "not valid utf-8 (line 3)" in result.stderr
    assert _preprocess(mixed, extra=["--set", "data.encoding=latin-1"]).exit_code == 0
    result = _preprocess("user_id,item_id,timestamp\nu1,i1,1600000000\n".encode("utf-16"))
    assert result.exit_code == 3


def test_timestamps_far_in_the_future():
    rows = ["u1,i1,99999999999999999999", "u2,i2,9223372036854775807", "u3,i1,-9223372036854775808",
            "u4,i2,1e300", "u5,i1,nan", "u6,i2,inf", "u7,i1,32503680000", "u8,i2,1600000000"]
    result = _preprocess(("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n").encode())
    assert result.exit_code == 0


def test_a_far_future_event_in_an_update_is_flagged(tmp_path_factory, tmp_path):
    """With the future-timestamp quarantine switched off (data.max_future_days < 0), a year-3000
    event is applied and the watermark it causes is flagged. (With the check on, the default, the
    row is quarantined: tests/test_future_timestamps.py.)"""
    world = shared_updated_world(tmp_path_factory)
    work = copy_world(world, tmp_path)
    log = tmp_path / "future.csv"
    log.write_text("user_id,item_id,timestamp,event\nu000001,i000001,32503680000,click\n")
    result = runner.invoke(app, ["update", str(work), "--new-log", str(log), "--json", "--set", "data.max_future_days=-1"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["warnings"] and "in the future" in summary["warnings"][0]
    assert "in the future" in result.stderr


def test_invalid_utf8_in_a_malformed_row_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "items.csv").write_bytes(b"item_id,title,description\ni1,a,b\n\xff\xd6,x\ni2,c,d\n")
    (tmp_path / "events.csv").write_bytes(b"user_id,item_id,timestamp\nu1,i1,1600000000\nu2,i2,1600000001\n")
    proc = subprocess.run([sys.executable, "-m", "dyembed", "preprocess", str(tmp_path / "w"), "--events",
                           str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: items file {tmp_path / 'items.csv'} is not valid utf-8 (line 3); set data.encoding (e.g. latin-1) to the file's encoding"]


json_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=8)


@FUZZ
@given(key=st.sampled_from(["format", "files", "watermark", "version", "n_users", "train"]), new=json_value,
       entry=st.booleans())
def test_fuzz_state_manifest_fields(state_work, key, new, entry):
    """A manifest that is valid JSON with a wrong field: state verify / update exit 0 or 4, never 1."""
    path = state_work / "state" / "manifest.json"
    original = path.read_text()
    manifest = json.loads(original)
    if entry and key == "files":
        manifest["files"]["U.npy"] = new
    else:
        manifest[key] = new
    try:
        path.write_text(json.dumps(manifest))
        for args in (["state", "verify", str(state_work)], ["state", "list", str(state_work)]):
            _clean_exit(runner.invoke(app, ["--quiet", *args]), allowed=(0, 4))
        result = runner.invoke(app, ["--quiet", "update", str(state_work), "--new-log", str(state_work / "manifest.json")])
        _clean_exit(result, allowed=(3, 4))
    finally:
        path.write_text(original)


@pytest.mark.parametrize("text", ["[]", "{", '{"format": "dyembed-state", "format_version": 1, "files": 3}', "\x00"])
def test_train_resume_and_evaluate_on_a_malformed_manifest_exit_4(state_work, text):
    path = state_work / "state" / "manifest.json"
    original = path.read_text()
    try:
        path.write_text(text)
        for args in (["train", str(state_work), "--resume"], ["evaluate", str(state_work)]):
            result = runner.invoke(app, ["--quiet", *args])
            _clean_exit(result, allowed=(4,))
            assert str(path) in result.stderr
    finally:
        path.write_text(original)
