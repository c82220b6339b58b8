"""Wall time of `dyembed recommend W --user U` end to end (a fresh process per call, as a user runs it).

    python bench/bench_recommend.py --workdir ../wd/ml-100k --user 42
    python bench/bench_recommend.py --workdir ../wd/ml-100k --user 42 --base ../checkout-of-main --rounds 7

Each round starts `dyembed recommend` in a new Python process and times it from start to exit
(wall, and the child's user+sys CPU time: steadier on a shared machine). With --base (a checkout
of another revision, e.g. `git worktree add /tmp/base main`) that revision's code runs the same
command on the same work dir, alternated A, B, A, B; the figures are medians. Each child also
reports whether TensorFlow ended up in sys.modules. `uptime` is printed before and after.
The work dir is only read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# runs the `dyembed` CLI of the checkout at argv[1] (its dyembed/ and cli/ ahead of any install)
RUNNER = r"""
import atexit, importlib.util, json, sys
root = sys.argv[1]
sys.path.insert(0, root)
spec = importlib.util.spec_from_file_location("dyembed_cli", root + "/cli/__init__.py",
                                              submodule_search_locations=[root + "/cli"])
module = importlib.util.module_from_spec(spec)
sys.modules["dyembed_cli"] = module
spec.loader.exec_module(module)
atexit.register(lambda: sys.stderr.write("BENCH " + json.dumps({"tensorflow": "tensorflow" in sys.modules}) + "\n"))
sys.argv = ["dyembed"] + sys.argv[2:]
from dyembed_cli.app import main
main()
"""


def run_once(root: Path, args: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(root), *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{root}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    marks = [json.loads(line[6:]) for line in proc.stderr.splitlines() if line.startswith("BENCH ")]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "tensorflow": marks[-1]["tensorflow"] if marks else None}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="a trained work dir (only read)")
    ap.add_argument("--user", default="42")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base", type=Path, help="checkout of the revision to compare with (B)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    cmd = ["--quiet", "recommend", str(args.workdir), "--user", args.user, "--k", str(args.k)]
    sides = {"this": REPO} | ({"base": args.base.resolve()} if args.base else {})
    print(f"load before: {uptime()}")
    for root in sides.values():  # warm the page cache and .pyc files once per side
        run_once(root, cmd)
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, root in sides.items():
            runs[name].append(run_once(root, cmd))
    print(f"load after:  {uptime()}")
    result = {}
    for name, rs in runs.items():
        result[name] = {"root": str(sides[name]), "wall_median_s": round(statistics.median(r["wall"] for r in rs), 3),
                        "cpu_median_s": round(statistics.median(r["cpu"] for r in rs), 3),
                        "wall_min_s": round(min(r["wall"] for r in rs), 3),
                        "tensorflow_imported": sorted({r["tensorflow"] for r in rs}, key=str)}
        r = result[name]
        print(f"{name:5} {r['root']}: wall median {r['wall_median_s']:.2f} s (min {r['wall_min_s']:.2f}), "
              f"CPU median {r['cpu_median_s']:.2f} s, TensorFlow imported: {r['tensorflow_imported']}")
    if args.json:
        args.json.write_text(json.dumps({"command": cmd, "rounds": args.rounds, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
