"""`dyembed preprocess` on the synth and generic formats: artefacts, order, ids, quarantine, errors.

The helpers at the top are imported by the other tests/test_preprocess_*.py files.
"""

from __future__ import annotations

import gzip
import pytest
import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from dyembed.config import Config
from dyembed.errors import ConfigError
from dyembed.preprocess.run import preprocess


def make_cfg(**data) -> Config:
    cfg = Config()
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def run(workdir: Path, **data) -> dict:
    append = data.pop("append", False)
    allow_late = data.pop("allow_late", None)
    return preprocess(workdir, make_cfg(**data), append=append, allow_late=allow_late)


def table(workdir: Path, name: str) -> list[dict]:
    return pq.read_table(Path(workdir) / f"{name}.parquet").to_pylist()


def manifest(workdir: Path) -> dict:
    return json.loads((Path(workdir) / "manifest.json").read_text())


def write(path: Path, text: str | bytes, *, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if gz:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def check_invariants(workdir: Path) -> dict:
    """What must hold for every preprocess output; returns the manifest."""
    m = manifest(workdir)
    events = pq.read_table(Path(workdir) / "events.parquet")
    counts = m["counts"]
    assert counts["rows_in"] == counts["events_out"] + sum(counts["rejected"].values())
    assert counts["events_out"] == events.num_rows
    assert len(pq.read_table(Path(workdir) / "rejected.parquet")) == counts["rejected_total"]
    assert [str(t) for t in events.schema.types[:3]] == ["int32", "int32", "int64"]
    ts = events.column("ts").to_numpy()
    assert (ts[1:] >= ts[:-1]).all()
    users = pq.read_table(Path(workdir) / "users.parquet")
    items = pq.read_table(Path(workdir) / "items.parquet")
    assert users.column("user_idx").to_pylist() == list(range(users.num_rows)) == list(range(counts["users"]))
    assert items.column("item_idx").to_pylist() == list(range(items.num_rows)) == list(range(counts["items"]))
    if events.num_rows:
        assert 0 <= events.column("user_idx").to_numpy().min() and events.column("user_idx").to_numpy().max() < users.num_rows
        assert 0 <= events.column("item_idx").to_numpy().min() and events.column("item_idx").to_numpy().max() < items.num_rows
    assert len(set(users.column("user_id").to_pylist())) == users.num_rows
    assert len(set(items.column("item_id").to_pylist())) == items.num_rows
    return m


def cli_app():
    """The real `dyembed` app (or, while sibling commands are still missing, one with only preprocess)."""
    try:
        from dyembed_cli.app import app
    except ImportError:  # pragma: no cover - only while the other commands are being written
        import typer

        from dyembed_cli import preprocess_cmd

        app = typer.Typer()

        @app.callback()
        def _main(quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
            from dyembed_cli import common

            common.GLOBALS.quiet = quiet

        preprocess_cmd.register(app)
    return app


def invoke(args: list[str]):
    return CliRunner().invoke(cli_app(), [str(a) for a in args])


def error_line(result) -> str:
    """The last stderr line of a failed command (typer ≥ 0.12 mixes stderr into .output)."""
    text = getattr(result, "stderr", None) or result.output
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------ synth format


def test_synth_world_end_to_end(synth_world, tmp_path):
    work = tmp_path / "work"
    summary = run(work, format="synth", input=str(synth_world))
    m = check_invariants(work)
    world = json.loads((synth_world / "world.json").read_text())
    # the 8 malformed rows of the world, two of each kind, each quarantined with its reason
    assert m["counts"]["rows_in"] == world["events"] + world["malformed_rows"] == 3008
    assert m["counts"]["rejected"] == {"missing_user": 2, "bad_timestamp": 2, "unknown_item": 2, "duplicate": 2}
    assert summary["events_out"] == 3000 and summary["rejected_total"] == 8
    rejected = table(work, "rejected")
    lines = (synth_world / "events.csv").read_text().splitlines()
    for row in rejected:
        # `line` is the 1-based line of the raw file (header = line 1); fields are the raw strings
        raw = lines[row["line"] - 1].split(",")
        assert [row["user"], row["item"], row["timestamp"], row["event"]] == raw, row
    assert {r["timestamp"] for r in rejected if r["reason"] == "bad_timestamp"} == {"not-a-time"}
    assert all(r["item"].startswith("x") for r in rejected if r["reason"] == "unknown_item")
    # ids are dense in order of first appearance in time; the texts come from the template
    events = table(work, "events")
    seen: list[int] = []
    for e in events:
        if e["user_idx"] not in seen:
            assert e["user_idx"] == len(seen)
            seen.append(e["user_idx"])
    items = {r["item_id"]: r for r in table(work, "items")}
    raw_items = {json.loads(l)["item_id"]: json.loads(l) for l in (synth_world / "items.jsonl").read_text().splitlines()}
    some = next(iter(items.values()))
    raw = raw_items[some["item_id"]]
    assert some["text"] == f"{raw['title']}. {raw['description']}"
    assert some["tokens"] and all(t == t.lower() for t in some["tokens"])
    # the saved config can be read back and reproduces the run
    from dyembed.config import load_config

    again = load_config(work / "config.toml")
    assert again.data.format == "synth" and again.data.input == str(synth_world)
    assert m["format"] == "synth" and m["text_template"] == "{title}. {description}"
    assert [i["role"] for i in m["inputs"]] == ["events", "items"] and len(m["inputs"][0]["sha256"]) == 64
    assert m["time_range"]["max_ts"] == m["watermark"] == events[-1]["ts"]


def test_same_inputs_give_byte_identical_events(synth_world, tmp_path):
    run(tmp_path / "a", format="synth", input=str(synth_world))
    run(tmp_path / "b", format="synth", input=str(synth_world), chunk_rows=500)  # chunking must not matter
    run(tmp_path / "a", format="synth", input=str(synth_world))  # rerun over the old outputs
    for name in ("events.parquet", "users.parquet", "items.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_crash_mid_run_leaves_previous_outputs_intact(synth_world, tmp_path, monkeypatch):
    work = tmp_path / "work"
    run(work, format="synth", input=str(synth_world))
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    import dyembed.preprocess.run as runmod

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runmod, "_item_texts", boom)
    with pytest.raises(RuntimeError):
        run(work, format="synth", input=str(synth_world), min_user_events=5)
    after = {p.name: p.read_bytes() for p in work.iterdir()}
    assert after == before  # same files, same bytes, no temp files left behind


# ------------------------------------------------------------------ generic format

EVENTS_CSV = """user_id,item_id,timestamp,rating
u1,a,100,5
u2,b,100,3
u1,b,90,4
u3,a,100,1
u2,a,110,2
"""


def test_equal_timestamps_keep_input_order(tmp_path):
    write(tmp_path / "ev.csv", EVENTS_CSV)
    run(tmp_path / "w", events=str(tmp_path / "ev.csv"))
    users = [u["user_id"] for u in table(tmp_path / "w", "users")]
    items = [i["item_id"] for i in table(tmp_path / "w", "items")]
    got = [(users[e["user_idx"]], items[e["item_idx"]], e["ts"]) for e in table(tmp_path / "w", "events")]
    assert got == [("u1", "b", 90), ("u1", "a", 100), ("u2", "b", 100), ("u3", "a", 100), ("u2", "a", 110)]
    assert users == ["u1", "u2", "u3"] and items == ["b", "a"]
    # no items file: items are kept with empty text and counted
    assert manifest(tmp_path / "w")["counts"]["items_without_text"] == 2


@pytest.mark.parametrize("kind", ["tsv.gz", "jsonl", "jsonl.gz", "parquet", "csv-semicolon"])
def test_generic_file_kinds_give_the_same_events(tmp_path, kind):
    write(tmp_path / "ev.csv", EVENTS_CSV)
    run(tmp_path / "ref", events=str(tmp_path / "ev.csv"))
    rows = [line.split(",") for line in EVENTS_CSV.strip().splitlines()]
    header, body = rows[0], rows[1:]
    if kind == "tsv.gz":
        path = write(tmp_path / "ev.tsv.gz", "\n".join("\t".join(r) for r in rows) + "\n", gz=True)
    elif kind.startswith("jsonl"):
        text = "\n".join(json.dumps({"user_id": r[0], "item_id": r[1], "timestamp": int(r[2]), "rating": float(r[3])}) for r in body)
        path = write(tmp_path / f"ev.{kind}", text + "\n", gz=kind.endswith(".gz"))
    elif kind == "parquet":
        import pyarrow as pa

        path = tmp_path / "ev.parquet"
        pq.write_table(pa.table({"user_id": [r[0] for r in body], "item_id": [r[1] for r in body], "timestamp": [int(r[2]) for r in body]}), path)
    else:
        path = write(tmp_path / "ev.txt", "\n".join(";".join(r) for r in rows) + "\n")  # delimiter sniffed
    run(tmp_path / "w", events=str(path))
    assert (tmp_path / "w" / "events.parquet").read_bytes() == (tmp_path / "ref" / "events.parquet").read_bytes()


def test_column_mapping_weight_and_items_template(tmp_path):
    write(tmp_path / "log.csv", "who,what,when,w,kind\nx,1,1600000000000,0.5,view\ny,2,1600000001000,2,buy\nx,2,1600000002000,oops,buy\n")
    write(tmp_path / "cat.jsonl", "\n".join(json.dumps(r) for r in [
        {"sku": 1, "name": "Red &amp; <b>Blue</b>", "blurb": ["Paint", "for walls"]},
        {"sku": 2, "name": "Brushes", "blurb": None},
    ]) + "\n")
    run(tmp_path / "w", events=str(tmp_path / "log.csv"), items=str(tmp_path / "cat.jsonl"), user_col="who", item_col="what",
        time_col="when", weight_col="w", event_col="kind", item_id_col="sku", text_template="{name}: {blurb}", time_format="unix_ms")
    events = pq.read_table(tmp_path / "w" / "events.parquet")
    assert events.schema.names == ["user_idx", "item_idx", "ts", "weight"] and str(events.schema.field("weight").type) == "float"
    assert events.column("ts").to_pylist() == [1600000000, 1600000001]
    assert events.column("weight").to_pylist() == [0.5, 2.0]
    assert [r["text"] for r in table(tmp_path / "w", "items")] == ["Red & Blue: Paint, for walls", "Brushes"]
    assert [(r["reason"], r["weight"], r["event"]) for r in table(tmp_path / "w", "rejected")] == [("bad_weight", "oops", "buy")]


@pytest.mark.parametrize(
    ("time_format", "values", "expected"),
    [
        ("auto", ["1600000000", "1600000001000", "1600000002.7", "1600000003000000"], [1600000000, 1600000001, 1600000002, 1600000003]),
        ("unix", ["1600000000", " 1600000001 ", "1.6e9"], [1600000000, 1600000001, 1600000000]),
        ("%Y-%m-%d %H:%M:%S", ["2020-09-13 12:26:40", "2020-09-13 12:26:41"], [1600000000, 1600000001]),
        ("%m/%d/%Y %I:%M:%S %p", ["11/15/2019 8:55:22 AM", "11/15/2019 8:55:22 PM"], [1573808122, 1573851322]),
        ("iso", ["2020-09-13T12:26:40Z", "2020-09-13T14:26:41+02:00", "2020-09-13"], [1599955200, 1600000000, 1600000001]),
    ],
)
def test_time_formats(tmp_path, time_format, values, expected):
    body = "".join(f"u{k},i{k},{v}\n" for k, v in enumerate(values))
    write(tmp_path / "ev.tsv", "user_id\titem_id\ttimestamp\n" + body.replace(",", "\t"))
    run(tmp_path / "w", events=str(tmp_path / "ev.tsv"), time_format=time_format)
    assert sorted(e["ts"] for e in table(tmp_path / "w", "events")) == sorted(expected)


def test_garbage_timestamps_are_quarantined_not_guessed(tmp_path):
    write(tmp_path / "ev.csv", "user_id,item_id,timestamp\na,x,1600000000\nb,x,yesterday\nc,x,\nd,x,nan\ne,x,1e999\nf,x,12:30\n")
    run(tmp_path / "w", events=str(tmp_path / "ev.csv"))
    assert manifest(tmp_path / "w")["counts"]["rejected"] == {"bad_timestamp": 5}


def test_malformed_lines_are_quarantined_with_their_line_numbers(tmp_path):
    rows = ["user_id,item_id,timestamp"] + [f"u{k},i{k},{1000 + k}" for k in range(30)]
    rows[5] = "u4,i4"  # too few fields
    rows[17] = "u16,i16,1016,extra"  # too many
    write(tmp_path / "ev.csv", "\n".join(rows) + "\n")
    run(tmp_path / "w", events=str(tmp_path / "ev.csv"), chunk_rows=1)
    rejected = table(tmp_path / "w", "rejected")
    assert [(r["reason"], r["line"], r["raw"]) for r in rejected] == [("malformed_line", 6, "u4,i4"), ("malformed_line", 18, "u16,i16,1016,extra")]
    assert len(table(tmp_path / "w", "events")) == 28


def test_line_numbers_count_newlines_inside_quoted_fields(tmp_path):
    """A quoted field may hold newlines: rejected rows (valid-looking and malformed alike) point at
    the physical line where their record starts, also after such fields."""
    text = ('user_id,item_id,timestamp,note\n'          # 1
            'u1,i1,1000,plain\n'                        # 2
            'u2,i2,1001,"two\nlines"\n'                # 3-4
            'u3,i3,1002,extra,field\n'                  # 5: malformed
            'u4,i4,"not\na time",x\n'                  # 6-7: bad timestamp
            'u5,i5,1004,"a\nb\nc"\n'                  # 8-10
            'u6,,1005,x\n'                              # 11: missing item
            'u7,"i7\n",1006,"x,\n"\n'                 # 12-14: two quoted newlines
            'u8,i8,later,x\n')                          # 15: bad timestamp
    write(tmp_path / "ev.csv", text)
    run(tmp_path / "w", events=str(tmp_path / "ev.csv"), require_text=False, chunk_rows=2)
    got = sorted((r["line"], r["reason"]) for r in table(tmp_path / "w", "rejected"))
    assert got == [(5, "malformed_line"), (6, "bad_timestamp"), (11, "missing_item"), (15, "bad_timestamp")]


# ------------------------------------------------------------------ filters


def test_filters_min_rating_min_counts_and_kcore(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,timestamp,rating"]
    for k in range(600):
        u, i = int(rng.zipf(1.6)) % 40, int(rng.zipf(1.5)) % 50
        lines.append(f"u{u},i{i},{k},{int(rng.integers(1, 6))}")
    write(tmp_path / "ev.csv", "\n".join(lines) + "\n")
    run(tmp_path / "w", events=str(tmp_path / "ev.csv"), rating_col="rating", min_rating=2.0, kcore=3, drop_duplicates=False)
    m = check_invariants(tmp_path / "w")
    rejected = table(tmp_path / "w", "rejected")
    assert {r["reason"] for r in rejected} == {"below_min_rating", "kcore"}
    assert all(float(r["rating"]) < 2 for r in rejected if r["reason"] == "below_min_rating")
    events = table(tmp_path / "w", "events")
    from collections import Counter

    # every user and item left has at least k events (the k-core property) ...
    assert min(Counter(e["user_idx"] for e in events).values()) >= 3
    assert min(Counter(e["item_idx"] for e in events).values()) >= 3
    # ... and it is the largest such subset: a brute-force k-core of the rating-filtered log agrees
    rows = [l.split(",") for l in lines[1:] if int(l.split(",")[3]) >= 2]
    while True:
        cu, ci = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = [r for r in rows if cu[r[0]] >= 3 and ci[r[1]] >= 3]
        if len(kept) == len(rows):
            break
        rows = kept
    assert len(events) == len(rows) == m["counts"]["events_out"]

    run(tmp_path / "w2", events=str(tmp_path / "ev.csv"), min_user_events=10, min_item_events=5, drop_duplicates=False)
    check_invariants(tmp_path / "w2")
    reasons = {r["reason"] for r in table(tmp_path / "w2", "rejected")}
    assert reasons <= {"min_user_events", "min_item_events"} and "min_user_events" in reasons


def test_require_text_off_keeps_unknown_items_with_empty_text(tmp_path):
    write(tmp_path / "ev.csv", "user_id,item_id,timestamp\nu,a,1\nu,zzz,2\n")
    write(tmp_path / "items.csv", "item_id,title,description\na,Alpha,First letter\nb,Beta,\n")
    run(tmp_path / "w1", events=str(tmp_path / "ev.csv"), items=str(tmp_path / "items.csv"))
    assert manifest(tmp_path / "w1")["counts"]["rejected"] == {"unknown_item": 1}
    run(tmp_path / "w2", events=str(tmp_path / "ev.csv"), items=str(tmp_path / "items.csv"), require_text=False, keep_unused_items=True)
    items = table(tmp_path / "w2", "items")
    assert [(r["item_id"], r["text"]) for r in items] == [("a", "Alpha. First letter"), ("zzz", ""), ("b", "Beta")]
    assert manifest(tmp_path / "w2")["counts"]["items_without_text"] == 1


# ------------------------------------------------------------------ bad inputs (exit 3, one line naming the file)


def _bad(tmp_path, events_text: str | bytes | None, *extra, items_text: str | None = None):
    ev = tmp_path / "events.csv"
    if events_text is not None:
        write(ev, events_text)
    args = ["preprocess", tmp_path / "w", "--events", ev, *extra]
    if items_text is not None:
        args += ["--items", write(tmp_path / "items.csv", items_text)]
    result = invoke(args)
    return result, error_line(result), ev


GOOD = "user_id,item_id,timestamp\nu1,i1,1600000000\nu2,i2,1600000001\n"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_delimiter", r"has none of the mapped columns .*check data.delimiter"),
        ("missing_column", r"has no column 'timestamp'"),
        ("garbage_timestamps", r"yields zero valid events .*bad_timestamp 2"),
        ("not_utf8", r"is not valid utf-8 \(line 4\); set data.encoding"),
        ("empty", r"is empty"),
        ("header_only", r"has no data rows"),
        ("missing_file", r"not found"),
        ("duplicate_item_ids", r"has duplicate item id 'i1'"),
    ],
)
def test_bad_inputs_exit_3_with_one_line_naming_the_file(tmp_path, case, expected):
    import re

    items = None
    extra: list[str] = []
    if case == "wrong_delimiter":
        text = GOOD.replace(",", ";")
        extra = ["--set", "data.delimiter=','"]
    elif case == "missing_column":
        text = GOOD.replace(",timestamp", ",time")
    elif case == "garbage_timestamps":
        text = "user_id,item_id,timestamp\nu1,i1,soon\nu2,i2,later\n"
    elif case == "not_utf8":
        text = GOOD.encode() + b"u3,caf\xe9,1600000002\n"
    elif case == "empty":
        text = ""
    elif case == "header_only":
        text = "user_id,item_id,timestamp\n"
    elif case == "missing_file":
        text = None
    else:
        text = GOOD
        items = "item_id,title,description\ni1,One,x\ni2,Two,y\ni1,Again,z\n"
    result, line, ev = _bad(tmp_path, text, *extra, items_text=items)
    assert result.exit_code == 3, result.output
    assert line.startswith("error: ") and re.search(expected, line), line
    named = tmp_path / ("items.csv" if case == "duplicate_item_ids" else "events.csv")
    assert str(named) in line
    assert "Traceback" not in result.output
    assert not (tmp_path / "w" / "events.parquet").exists()


def test_config_errors_exit_2(tmp_path):
    write(tmp_path / "ev.csv", GOOD)
    result = invoke(["preprocess", tmp_path / "w", "--events", tmp_path / "ev.csv", "--set", "data.language=klingon"])
    assert result.exit_code == 2 and "data.language" in error_line(result)
    result = invoke(["preprocess", tmp_path / "w", "--events", tmp_path / "ev.csv", "--format", "nope"])
    assert result.exit_code == 2 and "data.format" in error_line(result)
    result = invoke(["preprocess", tmp_path / "w"])
    assert result.exit_code == 2 and "--events" in error_line(result)


def test_cli_prints_the_summary_table(synth_world, tmp_path):
    result = invoke(["preprocess", tmp_path / "w", "--format", "synth", "--input", synth_world])
    assert result.exit_code == 0, result.output
    for word in ("events in", "3,008", "events out", "3,000", "missing_user", "users", "items", "time range"):
        assert word in result.output
    quiet = CliRunner().invoke(cli_app(), ["--quiet", "preprocess", str(tmp_path / "w2"), "--format", "synth", "--input", str(synth_world)])
    assert quiet.exit_code == 0 and "events out" not in quiet.output


def test_generic_input_dir_and_other_encodings(tmp_path):
    d = tmp_path / "raw"
    write(d / "events.csv.gz", "user_id,item_id,timestamp\nJosé,a,1\nZoë,b,2\n".encode("latin-1"), gz=True)
    # data.encoding applies to both files of the generic format
    write(d / "items.jsonl", '{"item_id": "a", "title": "Ärger"}\n{"item_id": "b", "title": "Öl", "description": "fein"}\n'.encode("latin-1"))
    run(tmp_path / "w", input=str(d), encoding="latin-1")
    assert [u["user_id"] for u in table(tmp_path / "w", "users")] == ["José", "Zoë"]
    assert [i["text"] for i in table(tmp_path / "w", "items")] == ["Ärger", "Öl. fein"]
    with pytest.raises(ConfigError, match="min_rating"):
        run(tmp_path / "w2", input=str(d), encoding="latin-1", min_rating=3.0)
    assert not (tmp_path / "w2").exists() or not any((tmp_path / "w2").iterdir())
    result = invoke(["preprocess", tmp_path / "w3", "--input", d])
    assert result.exit_code == 3 and "items.jsonl is not valid utf-8 (line 1)" in error_line(result)


def test_items_file_without_any_template_field_exits_3(tmp_path):
    write(tmp_path / "ev.csv", GOOD)
    write(tmp_path / "items.csv", "item_id,name\ni1,One\ni2,Two\n")
    result = invoke(["preprocess", tmp_path / "w", "--events", tmp_path / "ev.csv", "--items", tmp_path / "items.csv"])
    assert result.exit_code == 3
    assert "has none of the text fields of data.text_template (title, description)" in error_line(result)
    assert str(tmp_path / "items.csv") in error_line(result)
    result = invoke(["preprocess", tmp_path / "w", "--events", tmp_path / "ev.csv", "--items", tmp_path / "items.csv",
                     "--set", "data.text_template='{name}'"])
    assert result.exit_code == 0, result.output


def test_quoted_newline_line_numbers_do_not_depend_on_the_block_size(tmp_path):
    from dyembed.preprocess.readers import iter_csv

    rows = ["user_id,item_id,timestamp,note"]
    for k in range(60):
        note = '"a\nb"' if k % 7 == 0 else ("x,y,z" if k % 11 == 5 else "n")  # multi-line / malformed / plain
        rows.append(f"u{k},i{k},{1000 + k},{note}")
    path = write(tmp_path / "ev.csv", "\n".join(rows) + "\n")

    def numbering(block_bytes):
        out = []
        for chunk in iter_csv(path, what="events file", delimiter=",", block_bytes=block_bytes):
            out += [(int(line), user) for line, user in zip(chunk.lines, chunk.table.column("user_id").to_pylist())]
            out += [(line, text.split(",")[0]) for line, text in chunk.malformed]
        return sorted(out)

    physical = [line for line in "\n".join(rows).split("\n")]
    expected = sorted((n + 1, text.split(",")[0]) for n, text in enumerate(physical) if text[:1] == "u" and n > 0)
    assert numbering(1 << 20) == expected
    assert numbering(256) == expected
