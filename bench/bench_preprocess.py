"""Benchmark `dyembed preprocess` on synthetic logs: rows/s and peak RSS at 1M and 10M events.

    python bench/bench_preprocess.py                    # 1M and 10M events
    python bench/bench_preprocess.py --events 1000000   # one size
    python bench/bench_preprocess.py --io-only          # only stream the CSV (reader cost)

The raw files are generated once with `dyembed.synth.generate` (deterministic) under --cache and
reused. Each measurement runs in a fresh subprocess, so the peak RSS (ru_maxrss) is that of
preprocessing alone (it includes the interpreter with numpy/pyarrow loaded, ~100 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def world_dir(cache: Path, events: int) -> Path:
    from dyembed.config import SynthConfig
    from dyembed.synth import generate

    users, items = max(1_000, events // 100), max(2_000, events // 500)
    out = cache / f"synth-{events}"
    if not (out / "world.json").is_file():
        started = time.perf_counter()
        generate(SynthConfig(users=users, items=items, events=events, topics=16, seed=0), out)
        print(f"# generated {events:,} events ({users:,} users, {items:,} items) in {time.perf_counter() - started:.0f} s -> {out}", file=sys.stderr)
    return out


def worker(raw: Path, work: Path, io_only: bool) -> dict:
    """Runs inside the subprocess: one preprocess (or one read-only pass) and its own peak RSS."""
    from dyembed.config import Config

    cfg = Config()
    cfg.data.format = "synth"
    cfg.data.input = str(raw)
    started = time.perf_counter()
    if io_only:
        from dyembed.preprocess.formats import make_plan

        rows = 0
        for source in make_plan(cfg.data).events:
            for chunk in source.reader():
                rows += chunk.table.num_rows + len(chunk.malformed)
        result = {"rows_in": rows}
    else:
        from dyembed.preprocess.run import preprocess

        summary = preprocess(work, cfg)
        result = {"rows_in": summary["rows_in"], "events_out": summary["events_out"], "users": summary["users"], "items": summary["items"],
                  "rejected": summary["rejected_total"]}
    seconds = time.perf_counter() - started
    result["seconds"] = round(seconds, 2)
    result["rows_per_s"] = round(result["rows_in"] / seconds)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, action="append", help="sizes to run (default 1M and 10M)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dyembed-bench")
    parser.add_argument("--io-only", action="store_true", help="only stream the events file through the reader")
    parser.add_argument("--worker", nargs=2, metavar=("RAW", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]), args.io_only)))
        return
    print(f"# machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
    print("| events | mode | seconds | rows/s | peak RSS (MB) | users | items |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for events in args.events or [1_000_000, 10_000_000]:
        raw = world_dir(args.cache, events)
        with tempfile.TemporaryDirectory(dir=args.cache) as work:
            cmd = [sys.executable, __file__, "--worker", str(raw), work] + (["--io-only"] if args.io_only else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        mode = "read only" if args.io_only else "preprocess"
        print(f"| {events:,} | {mode} | {r['seconds']:.1f} | {r['rows_per_s']:,} | {r['peak_rss_mb']:,} | {r.get('users', '–')} | {r.get('items', '–')} |", flush=True)


if __name__ == "__main__":
    main()
