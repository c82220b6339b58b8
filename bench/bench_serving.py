"""What `dyembed export` costs and how fast its SavedModel answers (docs/serving.md#figures).

    python bench/bench_serving.py --workdir ../wd/ml-100k             # a trained work dir (read only)
    python bench/bench_serving.py --workdir W --rounds 200 --events 10

1. `dyembed export WORKDIR` in a subprocess: wall time, the phases of its summary, SavedModel and
   ANN table sizes.
2. In a fresh interpreter that cannot import dyembed: tf.saved_model.load time, then each request
   kind called --rounds times after two warm-up calls (the first call traces the graph), wall
   latency median and 90th percentile of the in-process call (no network: TensorFlow Serving adds
   its REST / gRPC overhead on top):
       recommend, 1 and 32 users, k = 10, exclude_seen
       update_and_recommend, 1 and 32 users × --events events each, k = 10, exclude_seen
       embed_items, 100 items
3. `dyembed recommend --user U --k 10` end to end, for comparison (median of 3 runs).
The load (`uptime`) is printed before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = r'''
import importlib.abc, json, sys, time
class _NoDyembed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dyembed", "dyembed_cli"):
            raise ImportError(name)
sys.meta_path.insert(0, _NoDyembed())
import numpy as np
import pyarrow.parquet as pq
t0 = time.perf_counter()
import tensorflow as tf
t_import = time.perf_counter() - t0
model_dir, ann_dir, rounds, events, feature_dim, last_ts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
t0 = time.perf_counter()
model = tf.saved_model.load(model_dir)
t_load = time.perf_counter() - t0
users = pq.read_table(ann_dir + "/users.parquet", columns=["user_id"]).column("user_id").to_pylist()
items = pq.read_table(ann_dir + "/items.parquet", columns=["item_id"]).column("item_id").to_pylist()
rng = np.random.default_rng(0)

def update_inputs(n_users):
    who = rng.choice(users, n_users, replace=False)
    u = np.repeat(who, events)
    it = rng.choice(items, len(u))
    ts = last_ts + 60 * np.tile(np.arange(1, events + 1), n_users)
    return dict(user_ids=tf.constant(u.tolist()), item_ids=tf.constant(it.tolist()), timestamps=tf.constant(ts, tf.int64),
                weights=tf.ones([len(u)]), k=tf.constant(10), exclude_seen=tf.constant(True))

cases = {
    "recommend 1 user": ("recommend", lambda: dict(user_ids=tf.constant(rng.choice(users, 1).tolist()), k=tf.constant(10), exclude_seen=tf.constant(True))),
    "recommend 32 users": ("recommend", lambda: dict(user_ids=tf.constant(rng.choice(users, 32).tolist()), k=tf.constant(10), exclude_seen=tf.constant(True))),
    f"update_and_recommend 1 user x {events} events": ("update_and_recommend", lambda: update_inputs(1)),
    f"update_and_recommend 32 users x {events} events": ("update_and_recommend", lambda: update_inputs(32)),
    "embed_items 100 items": ("embed_items", lambda: dict(features=tf.constant(rng.standard_normal((100, feature_dim)).astype(np.float32)))),
}
out = {"tf_import_s": round(t_import, 3), "load_s": round(t_load, 3), "cases": {}}
for name, (sig, make) in cases.items():
    fn = model.signatures[sig]
    t0 = time.perf_counter(); fn(**make()); first = time.perf_counter() - t0
    fn(**make())
    times = []
    for _ in range(rounds):
        args = make()
        t0 = time.perf_counter(); res = fn(**args); _ = {k: v.numpy() for k, v in res.items()}; times.append(time.perf_counter() - t0)
    times = np.array(times) * 1000
    out["cases"][name] = {"first_call_ms": round(first * 1000, 1), "median_ms": round(float(np.median(times)), 2),
                          "p90_ms": round(float(np.percentile(times, 90)), 2)}
assert not [m for m in sys.modules if m.split(".")[0] == "dyembed"]
print(json.dumps(out))
'''


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split()[0:3].__str__()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="export directory (default: a temp dir, removed)")
    args = ap.parse_args()
    dyembed = [sys.executable, "-m", "dyembed_cli.app"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    out = args.out or tmp / "export"
    print(f"load before: {uptime()}")
    t0 = time.perf_counter()
    proc = subprocess.run(dyembed + ["export", str(args.workdir), "--out", str(out), "--force", "--json"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr)
    summary = json.loads(proc.stdout)
    result = {"export_wall_s": round(wall, 2), "export_durations": summary["durations"],
              "saved_model_mb": round(summary["saved_model_bytes"] / 2**20, 2),
              "ann_mb": round(summary["ann_bytes"] / 2**20, 2), "users": summary["n_users"], "items": summary["n_items"],
              "dim": summary["dim"], "history": summary["history"], "model": summary["model"]}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(out / summary["saved_model"]), str(out / "ann"),
                           str(args.rounds), str(args.events), str(summary["feature_dim"]),
                           str(summary["watermark"]["last_ts"])], capture_output=True, text=True, env=env, cwd=tmp)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    result["serving"] = json.loads(proc.stdout.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    user = pq.read_table(out / "ann/users.parquet", columns=["user_id"]).column("user_id")[0].as_py()
    cli = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(dyembed + ["recommend", str(args.workdir), "--user", str(user), "--k", "10"], capture_output=True,
                       check=True)
        cli.append(time.perf_counter() - t0)
    result["dyembed_recommend_cli_s"] = round(sorted(cli)[1], 2)
    print(json.dumps(result, indent=2))
    print(f"load after: {uptime()}")
    if args.out is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
