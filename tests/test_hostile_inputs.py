"""Hostile input files (issue 12 §4, §5, §6; issue 11 §3), table-driven.

Every case writes raw files, runs `dyembed preprocess` through the CLI and asserts:
- the exit code and, for a refusal, the one `error:` line (regex) — and that a work dir
  preprocessed before is byte-identical afterwards;
- for an accepted file, that no row vanished: the manifest's rows_in = events_out + rejected,
  every rejected row carries its own 1-based physical line number and reason (exactly the
  expected ones), and header + blank lines + rows (+ the extra lines of quoted multi-line
  fields) = the file's physical lines.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dyembed_cli.app import app

runner = CliRunner()
HEADER = "user_id,item_id,timestamp"
SALT = "0123456789abcdef-salt"


def rows(n: int, start: int = 0, sep: str = ",") -> list[str]:
    return [sep.join((f"u{k % 7}", f"i{k % 11}", str(1_600_000_000 + k))) for k in range(start, start + n)]


def csv_text(body: list[str], header: str = HEADER, newline: str = "\n") -> str:
    return newline.join([header] + body) + newline


def replace(lines: list[str], at: dict[int, str]) -> list[str]:
    """Physical line number (1-based, the header is line 1) → new text."""
    out = list(lines)
    for line, text in at.items():
        out[line - 2] = text
    return out


def insert(lines: list[str], at: dict[int, str]) -> list[str]:
    out = list(lines)
    for line in sorted(at):
        out.insert(line - 2, at[line])
    return out


@dataclass
class Case:
    name: str
    files: dict[str, bytes | str]
    args: list[str]
    code: int = 0
    message: str = ""
    # accepted files: the rejected rows {line: reason}, the rows kept, blank lines
    rejected: dict[int, str] = field(default_factory=dict)
    kept: int | None = None
    blank: int = 0
    physical: int | None = None  # physical lines of the events file (None: not checked)
    multiline_extra: int = 0  # lines inside quoted multi-line fields
    check: Callable[[Path], None] | None = None


def gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def truncated_gz(text: str) -> bytes:
    data = gz(text)
    return data[: len(data) // 2]


BASE = rows(30)
N = len(BASE)  # data rows of the plain file (lines 2..31)
EV = ["--events", "{d}/ev.csv"]


def case_unterminated(at: int, n: int = 1000) -> Case:
    body = rows(n)
    body = replace(body, {at: '"' + body[at - 2]})
    return Case(f"unterminated quote at line {at} of {n + 1}", {"ev.csv": csv_text(body)}, EV,
                rejected={at: "malformed_line"}, kept=n - 1, physical=n + 1)


CASES: list[Case] = [
    # ---- §4: quotes never swallow the file
    case_unterminated(5),  # the example: a 1,001-line file
    case_unterminated(2),
    case_unterminated(1001),
    case_unterminated(500, n=3000),
    Case("two stray quotes 4 lines apart: both lines rejected, the ones between kept",
         {"ev.csv": csv_text(replace(BASE, {5: '"u4,i4,1600000004', 9: 'u8,i8",1600000008'}))}, EV,
         rejected={5: "malformed_line", 9: "malformed_line"}, kept=N - 2, physical=N + 1),
    Case("a stray quote every 5th line", {"ev.csv": csv_text(replace(BASE, {k: '"' + BASE[k - 2] for k in range(3, 32, 5)}))}, EV,
         rejected={k: "malformed_line" for k in range(3, 32, 5)}, kept=N - 6, physical=N + 1),
    Case("a quote inside an unquoted field", {"ev.csv": csv_text(replace(BASE, {7: 'u5,i"5,1600000005'}))}, EV,
         rejected={7: "malformed_line"}, kept=N - 1, physical=N + 1),
    Case("an escaped quote in a quoted field is data", {"ev.csv": csv_text(replace(BASE, {7: 'u5,"i""5",1600000005'}))}, EV,
         kept=N, physical=N + 1),
    Case("a quoted field spanning 3 lines is one record; later lines keep their numbers",
         {"ev.csv": csv_text(["u1,i1,1600000001,plain", 'u2,i2,1600000002,"a\nb\nc"', "u3,i3,later,x", "u4,,1600000004,x"],
                             header=HEADER + ",note")}, EV,
         rejected={6: "bad_timestamp", 7: "missing_item"}, kept=2, physical=7, multiline_extra=2),
    Case("a multi-line quoted field with the wrong field count is not a record",
         {"ev.csv": csv_text(["u1,i1,1600000001,plain", 'u2,i2,1600000002,"a', 'b",extra,field', "u3,i3,1600000003,x"],
                             header=HEADER + ",note")}, EV,
         rejected={3: "malformed_line", 4: "malformed_line"}, kept=2, physical=5),
    Case("unterminated quote with CRLF line ends", {"ev.csv": csv_text(replace(BASE, {6: '"' + BASE[4]}), newline="\r\n")}, EV,
         rejected={6: "malformed_line"}, kept=N - 1, physical=N + 1),
    Case("unterminated quote in a TSV", {"ev.tsv": csv_text(replace(rows(30, sep="\t"), {4: '"u2\ti2\t1600000002'}),
                                                            header=HEADER.replace(",", "\t"))},
         ["--events", "{d}/ev.tsv"], rejected={4: "malformed_line"}, kept=N - 1, physical=N + 1),
    Case("unterminated quote in a gzip file", {"ev.csv.gz": gz(csv_text(replace(BASE, {10: '"' + BASE[8]})))},
         ["--events", "{d}/ev.csv.gz"], rejected={10: "malformed_line"}, kept=N - 1),
    Case("unterminated quote, latin-1 file (transcoded)",
         {"ev.csv": csv_text(replace(BASE, {4: '"u\xe92,i2,1600000002', 8: "u\xe9,i6,1600000006"})).encode("latin-1")},
         EV + ["--set", "data.encoding='latin-1'"], rejected={4: "malformed_line"}, kept=N - 1, physical=N + 1),
    Case("utf-16 file with a blank line", {"ev.csv": csv_text(insert(BASE, {5: ""})).encode("utf-16")},
         EV + ["--set", "data.encoding='utf-16'"], kept=N, blank=1, physical=N + 2),
    Case("unterminated quote then 1,500 lines (longer than a quoted field may be)",
         {"ev.csv": csv_text(replace(rows(1600), {3: '"' + rows(1600)[1]}))}, EV,
         rejected={3: "malformed_line"}, kept=1599, physical=1601),
    # ---- §4: blank lines are counted and do not shift line numbers
    Case("blank lines in the middle", {"ev.csv": csv_text(insert(replace(BASE, {20: "u1,i1,not-a-time"}), {5: "", 6: ""}))}, EV,
         rejected={22: "bad_timestamp"}, kept=N - 1, blank=2, physical=N + 3),
    Case("blank lines right after the header and at the end",
         {"ev.csv": csv_text(insert(BASE, {2: "", 3: ""}) + ["", ""])}, EV, kept=N, blank=4, physical=N + 5),
    Case("CRLF blank lines", {"ev.csv": csv_text(insert(replace(BASE, {9: ",i1,1600000001"}), {4: ""}), newline="\r\n")}, EV,
         rejected={10: "missing_user"}, kept=N - 1, blank=1, physical=N + 2),
    Case("a whitespace-only line is a malformed row, not a blank one", {"ev.csv": csv_text(insert(BASE, {4: "   "}))}, EV,
         rejected={4: "malformed_line"}, kept=N, physical=N + 2),
    Case("a blank line inside a quoted field is data",
         {"ev.csv": csv_text(["u1,i1,1600000001,\"a\n\nb\"", "u2,i2,x,y"], header=HEADER + ",note")}, EV,
         rejected={5: "bad_timestamp"}, kept=1, physical=5, multiline_extra=2),
    Case("blank lines in a gzip file", {"ev.csv.gz": gz(csv_text(insert(replace(BASE, {12: "u1,i1,nope"}), {3: ""})))},
         ["--events", "{d}/ev.csv.gz"], rejected={13: "bad_timestamp"}, kept=N - 1, blank=1),
    Case("wrong field counts around blank lines", {"ev.csv": csv_text(insert(replace(BASE, {6: "u4,i4", 8: "a,b,c,d"}), {3: ""}))}, EV,
         rejected={7: "malformed_line", 9: "malformed_line"}, kept=N - 2, blank=1, physical=N + 2),
    Case("JSON Lines: blank lines and a broken line keep their numbers",
         {"ev.jsonl": "\n".join(['{"user_id":"u1","item_id":"i1","timestamp":1600000001}', "", "{broken",
                                 '{"user_id":"u2","item_id":"i2","timestamp":"x"}', "",
                                 '{"user_id":"u3","item_id":"i3","timestamp":1600000003}']) + "\n"},
         ["--events", "{d}/ev.jsonl"], rejected={3: "malformed_line", 4: "bad_timestamp"}, kept=2, blank=2),
    Case("movielens-100k u.data with blank lines and a short line",
         {"u.data": "1\t10\t5\t881250949\n\n2\t20\t3\n3\t30\t4\t881250951\n\n"}, ["-f", "movielens-100k", "--events", "{d}/u.data"],
         rejected={3: "malformed_line"}, kept=2, blank=2, physical=5),
    Case("movielens-1m ratings.dat with a blank line and a bad time",
         {"ratings.dat": "1::10::5::978300760\n\n2::20::3::x\n3::30::4::978300762\n"},
         ["-f", "movielens-1m", "--events", "{d}/ratings.dat"], rejected={3: "bad_timestamp"}, kept=2, blank=1, physical=4),
    Case("recbole .inter with a blank line and a short line",
         {"x.inter": "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1600000001\n\nu2\ti2\nu3\ti3\t1600000003\n"},
         ["-f", "recbole", "--events", "{d}/x.inter"], rejected={4: "malformed_line"}, kept=2, blank=1, physical=5),
    Case("MIND behaviors.tsv: blank lines keep the numbers of malformed lines",
         {"behaviors.tsv": "1\tU1\t11/15/2019 8:55:22 AM\tN1\tN2-1 N3-0\n\n2\tU2\t11/15/2019 9:55:22 AM\n"
                           "3\tU3\t11/15/2019 10:55:22 AM\tN1\tN4-1\n"},
         ["-f", "mind", "--events", "{d}/behaviors.tsv"], rejected={3: "malformed_line"}, kept=2, blank=1),
    # ---- §5: ISO times outside what can be represented are bad timestamps, not a crash
    Case("ISO timestamps outside 1678-2261",
         {"ev.csv": csv_text(["u1,i1,2020-01-01T00:00:00Z", "u2,i2,1500-01-01", "u3,i3,3000-01-01T00:00:00", "u4,i4,9999-12-31",
                              "u5,i5,0001-01-01", "u6,i6,2262-04-12", "u7,i7,1677-09-21T00:00:00Z", "u8,i8,2020-09-13T14:26:41+02:00"])},
         EV + ["--set", "data.time_format='iso'"],
         rejected={k: "bad_timestamp" for k in range(3, 9)}, kept=2, physical=9),
    Case("ISO: an out-of-range year among 2,000 good rows",
         {"ev.csv": csv_text([f"u{k % 9},i{k % 13},2020-01-{1 + k % 28:02d}T00:00:{k % 60:02d}Z" for k in range(2000)] + ["u1,i1,2500-01-01"])},
         EV + ["--set", "data.time_format='iso'"], rejected={2002: "bad_timestamp"}, kept=2000),
    # ---- §5: unusable files are refused with one line naming them (exit 3)
    Case("a truncated gzip CSV", {"ev.csv.gz": truncated_gz(csv_text(rows(20000)))}, ["--events", "{d}/ev.csv.gz"], 3,
         r"ev\.csv\.gz is not a complete gzip file"),
    Case("a truncated gzip JSON Lines file",
         {"ev.jsonl.gz": truncated_gz("".join(f'{{"user_id":"u{k}","item_id":"i{k}","timestamp":{1600000000 + k}}}\n' for k in range(20000)))},
         ["--events", "{d}/ev.jsonl.gz"], 3, r"ev\.jsonl\.gz is not a complete gzip file"),
    Case("a truncated gzip u.data", {"u.data": truncated_gz("".join(f"{k}\t{k}\t5\t{881250949 + k}\n" for k in range(20000)))},
         ["-f", "movielens-100k", "--events", "{d}/u.data"], 3, r"u\.data is not a complete gzip file"),
    Case("a truncated gzip items file", {"ev.csv": csv_text(BASE),
                                         "items.jsonl.gz": truncated_gz("".join(f'{{"item_id":"i{k}","title":"t{k}"}}\n' for k in range(20000)))},
         EV + ["--items", "{d}/items.jsonl.gz", "--set", "data.text_template='{{title}}'"], 3, r"items\.jsonl\.gz is not a complete gzip file"),
    Case("a file named .gz that is not gzip", {"ev.csv.gz": b"\x1f\x8bnot gzip at all"}, ["--events", "{d}/ev.csv.gz"], 3,
         r"ev\.csv\.gz is not a (readable|complete) gzip file"),
    Case("only a header and blank lines", {"ev.csv": HEADER + "\n\n\n"}, EV, 3, r"has no data rows"),
    Case("an empty file", {"ev.csv": ""}, EV, 3, r"is empty"),
    Case("JSON Lines not valid UTF-8", {"ev.jsonl": b'{"user_id":"u1","item_id":"i1","timestamp":1}\n{"user_id":"\xff"}\n'},
         ["--events", "{d}/ev.jsonl"], 3, r"is not valid utf-8 \(line 2\)"),
    Case("CSV not valid UTF-8 after a blank line", {"ev.csv": (csv_text(BASE[:3]) + "\nu\xff,i1,1600000001\n").encode("latin-1")}, EV, 3,
         r"is not valid utf-8 \(line 6\)"),
    Case("recbole items file not valid UTF-8", {"x.inter": "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n",
                                                "x.item": b"item_id:token\ttitle:token_seq\ni1\t\xff\n"},
         ["-f", "recbole", "--events", "{d}/x.inter", "--items", "{d}/x.item"], 3, r"x\.item is not valid utf-8 \(line 2\)"),
    Case("the events path is a directory", {"dir/x": "x"}, ["--events", "{d}/dir"], 3, r"is not a file"),
    # ---- §6: hashed user ids never reach a message
    Case("headerless log with hashed ids: the first row is not quoted",
         {"ev.csv": "\n".join(rows(5)) + "\n"}, EV + ["--hash-user-ids", SALT], 3,
         r"found: 3 column\(s\), not shown because user ids are hashed"),
    Case("headerless log without hashing names what it found", {"ev.csv": "\n".join(rows(5)) + "\n"}, EV, 3,
         r"found: u0, i0, 1600000000"),
    Case("hashed: an unterminated quote keeps no raw text", {"ev.csv": csv_text(replace(BASE, {5: '"u3,i3,1600000003'}))},
         EV + ["--hash-user-ids", SALT], rejected={5: "malformed_line"}, kept=N - 1, physical=N + 1,
         check=lambda w: _no_raw_text(w)),
    # ---- config of the readers (exit 2, before any reading)
    Case("data.tags_before not a time", {"ev.csv": csv_text(BASE)}, EV + ["--set", "data.tags_before='yesterday'"], 2,
         r"data\.tags_before' must be cut, all, none, unix seconds or an ISO date"),
    Case("an unknown encoding", {"ev.csv": csv_text(BASE)}, EV + ["--set", "data.encoding='klingon'"], 2, r"not a known encoding"),
    Case("a two-character delimiter", {"ev.csv": csv_text(BASE)}, EV + ["--set", "data.delimiter='::'"], 2, r"must be one character"),
]


def _no_raw_text(work: Path) -> None:
    assert pq.read_table(work / "rejected.parquet").column("raw").null_count == 1
    for path in work.rglob("*"):
        if path.is_file():
            assert b"u3,i3" not in path.read_bytes()


def snapshot(work: Path) -> dict[str, str]:
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.rglob("*")) if p.is_file() and p.name != ".dyembed.lock"}


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def _write_files(d: Path, files: dict[str, bytes | str]) -> None:
    for name, data in files.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _events_file(d: Path, case: Case) -> Path:
    args = [a.format(d=d) for a in case.args]
    return Path(args[args.index("--events") + 1])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(tmp_path: Path, case: Case) -> None:
    d = tmp_path / "raw"
    d.mkdir()
    _write_files(d, case.files)
    work = tmp_path / "w"
    args = [a.format(d=d) for a in case.args]
    if case.code:
        # a work dir preprocessed before must stay byte-identical
        (d / "good.csv").write_text(csv_text(rows(12)))
        assert runner.invoke(app, ["--quiet", "preprocess", str(work), "--events", str(d / "good.csv")]).exit_code == 0
        before = snapshot(work)
    result = runner.invoke(app, ["--quiet", "preprocess", str(work)] + args)
    if case.code:
        assert result.exit_code == case.code, result.output
        lines = error_lines(result)
        assert len(lines) == 1 and re.search(case.message, lines[0]), result.output
        assert "Traceback" not in result.output
        assert snapshot(work) == before
        return
    assert result.exit_code == 0, result.output
    manifest = json.loads((work / "manifest.json").read_text())
    counts = manifest["counts"]
    rejected = pq.read_table(work / "rejected.parquet").to_pylist()
    got = {r["line"]: r["reason"] for r in rejected}
    assert len(got) == len(rejected), "two rejected rows share a line number"
    assert got == case.rejected
    assert counts["events_out"] == case.kept
    assert counts["rows_in"] == counts["events_out"] + sum(counts["rejected"].values()) == case.kept + len(case.rejected)
    assert counts["blank_lines"] == case.blank
    assert pq.read_metadata(work / "events.parquet").num_rows == case.kept
    if case.physical is not None:
        raw = _events_file(d, case).read_bytes()
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raw = raw.decode("utf-16").encode()
        physical = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
        assert physical == case.physical
        header = 0 if "movielens" in " ".join(case.args) else 1
        assert header + counts["blank_lines"] + counts["rows_in"] + case.multiline_extra == physical
    if case.check:
        case.check(work)


def test_append_keeps_accounting_over_runs(tmp_path: Path) -> None:
    """rows_in = events_out + rejected, blank lines summed, over a first run and two appends with
    quotes and blank lines."""
    d = tmp_path / "raw"
    files = {"a.csv": csv_text(insert(rows(40), {5: ""})),
             "b.csv": csv_text(replace(rows(30, start=40), {4: '"' + rows(30, start=40)[2]})),
             "c.csv": csv_text(insert(rows(20, start=70), {2: "", 3: ""}))}
    _write_files(d, files)
    work = tmp_path / "w"
    for k, name in enumerate(files):
        args = ["--quiet", "preprocess", str(work), "--events", str(d / name)] + (["--append"] if k else [])
        assert runner.invoke(app, args).exit_code == 0
        counts = json.loads((work / "manifest.json").read_text())["counts"]
        assert counts["rows_in"] == counts["events_out"] + sum(counts["rejected"].values())
    assert counts["rows_in"] == 40 + 30 + 20 and counts["events_out"] == 89 and counts["blank_lines"] == 3
    assert [(r["line"], r["reason"]) for r in pq.read_table(work / "rejected.parquet").to_pylist()] == [(4, "malformed_line")]


@pytest.mark.parametrize("block", [256, 1 << 12, 1 << 20])
def test_line_accounting_does_not_depend_on_the_block_size(tmp_path: Path, block: int) -> None:
    """The reader's scan carries an open quote across blocks: same numbering at any block size."""
    from dyembed.preprocess.readers import iter_csv

    rng = np.random.default_rng(3)
    body = []
    for k in range(400):
        kind = rng.integers(0, 12)
        line = f"u{k},i{k},{1000 + k},n"
        if kind == 0:
            line = f'"u{k},i{k},{1000 + k},n'  # stray quote
        elif kind == 1:
            line = f'u{k},i{k},{1000 + k},"a\nb"'  # a legitimate two-line field
        elif kind == 2:
            line = ""
        body.append(line)
    path = tmp_path / "ev.csv"
    path.write_text(csv_text(body, header=HEADER + ",note"))

    def numbering(block_bytes: int):
        kept, bad, blank = [], [], 0
        for chunk in iter_csv(path, what="events file", delimiter=",", block_bytes=block_bytes):
            kept += [int(x) for x in chunk.lines]
            bad += [line for line, _ in chunk.malformed]
            blank += chunk.blank
        return sorted(kept), sorted(bad), blank

    assert numbering(block) == numbering(32 << 20)
    kept, bad, blank = numbering(block)
    physical = path.read_text().count("\n")
    two_line = sum(1 for line in body if line.endswith('"a\nb"'))
    assert 1 + blank + len(kept) + len(bad) + two_line == physical
    assert len(set(kept) | set(bad)) == len(kept) + len(bad)


# ---------------------------------------------------------------- issue 11 §3: no future tags in item texts


def _tag_world(d: Path) -> None:
    """Six ratings over time; tags of movie 1 before and after the temporal cut (test_fraction 0.5:
    the cut is the 4th rating's time, 400)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},4.0,{t}\n" for u, m, t in [(1, 1, 100), (2, 2, 200), (1, 2, 300), (2, 1, 400), (3, 1, 500), (3, 2, 600)]))
    (d / "movies.csv").write_text("movieId,title,genres\n1,Alpha (1990),Drama\n2,Beta (1991),Comedy\n")
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,early,150\n2,1,Early,390\n3,1,leaked,400\n3,1,future,550\n2,2,beta-tag,100\n")


@pytest.mark.parametrize(("setting", "alpha", "beta", "left_out"), [
    ("cut", "Alpha (1990). Genres: Drama. Tags: early", "Beta (1991). Genres: Comedy. Tags: beta-tag", 2),
    ("all", "Alpha (1990). Genres: Drama. Tags: early, leaked, future", "Beta (1991). Genres: Comedy. Tags: beta-tag", 0),
    ("none", "Alpha (1990). Genres: Drama", "Beta (1991). Genres: Comedy", 5),
    ("'1970-01-01T00:02:00Z'", "Alpha (1990). Genres: Drama", "Beta (1991). Genres: Comedy. Tags: beta-tag", 4),
    ("'160'", "Alpha (1990). Genres: Drama. Tags: early", "Beta (1991). Genres: Comedy. Tags: beta-tag", 3),
])
def test_tags_dated_after_the_boundary_never_reach_item_texts(tmp_path: Path, setting, alpha, beta, left_out) -> None:
    d = tmp_path / "ml"
    _tag_world(d)
    work = tmp_path / "w"
    result = runner.invoke(app, ["--quiet", "preprocess", str(work), "-f", "movielens-latest", "-i", str(d),
                                 "--set", "evaluate.test_fraction=0.5", "--set", f"data.tags_before={setting}"])
    assert result.exit_code == 0, result.output
    texts = dict(zip(*(pq.read_table(work / "items.parquet").column(c).to_pylist() for c in ("item_id", "text"))))
    assert texts["1"].rstrip(". :Tags") == alpha.rstrip(". :Tags") or texts["1"] == alpha
    assert "leaked" not in texts["1"] or setting == "all"
    assert texts["2"].startswith(beta.split(". Tags")[0])
    assert ("beta-tag" in texts["2"]) == ("beta-tag" in beta)
    record = json.loads((work / "manifest.json").read_text())["tags_before"]
    assert record["left_out"] == left_out and record["used"] == 5 - left_out
    if setting == "cut":
        from dyembed.split import TEST, temporal_split

        ts = pq.read_table(work / "events.parquet").column("ts").to_numpy()
        roles = temporal_split(ts, test_fraction=0.5)
        assert record["before_ts"] == 400 == ts[roles == TEST].min()  # the evaluation's own cut


def test_tags_limit_is_kept_across_append(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    _tag_world(d)
    work = tmp_path / "w"
    assert runner.invoke(app, ["--quiet", "preprocess", str(work), "-f", "movielens-latest", "-i", str(d),
                               "--set", "evaluate.test_fraction=0.5"]).exit_code == 0
    (d / "more.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,9000\n2,2,4.0,9100\n")
    result = runner.invoke(app, ["--quiet", "preprocess", str(work), "--append", "--events", str(d / "more.csv"),
                                 "--set", "evaluate.test_fraction=0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((work / "manifest.json").read_text())["tags_before"]["before_ts"] == 400
    assert "leaked" not in pq.read_table(work / "items.parquet").column("text").to_pylist()[0]


def test_tags_without_a_timestamp_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    _tag_world(d)
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,early,\n")
    result = runner.invoke(app, ["--quiet", "preprocess", str(tmp_path / "w"), "-f", "movielens-latest", "-i", str(d)])
    assert result.exit_code == 3
    assert re.search(r"tags\.csv line 2 has no unix timestamp", error_lines(result)[0])
