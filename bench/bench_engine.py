"""Engine speed at catalogue scale: sampled training, frozen replay and full-ranking evaluate.

    nice python bench/bench_engine.py                          # this tree, the default sizes
    nice python bench/bench_engine.py --before /work/main      # also the code in /work/main, A,B,A,B
    python bench/bench_engine.py --quick                       # small sizes (a smoke run)
    python bench/bench_engine.py --only train --items 10000,1000000

Workloads (engine level, deterministic; the same in every tree measured):
- train: `Engine.replay(train=True)` with the sampled loss (1,024 shared negatives per t-batch),
  d = 64, adam rule, 64 lanes (train.batch_size; $BENCH_TRAIN_LANES) × 25 steps (train.truncation), D = 384 unit
  features, item residual E and bias b on, at each --items size. The first block's call (tracing)
  is a separate warm-up replay; events/s is over the timed replay only.
- replay: the frozen sampled replay of `train`'s final pass (θ fixed, users updated, no ranks,
  1,024 lanes), at --replay-items.
- evaluate: full ranking as `evaluate` runs it (frozen Model: V precomputed, ranks of every event,
  256 lanes × 64 steps, no masking), at --eval-items; its limit is a plain [lanes, d] @ [d, N]
  matmul of the same shape timed in the same process (events/s = lanes / its time), and the
  tracing time is the first call's time minus a steady call's.

Each (tree, workload, size) runs in its own subprocess with that tree first on sys.path, so the
trees never share a process; with --before the pairs run A, B, A, B (--rounds) and the best round
of each is reported with `uptime` before and after. Results go to stdout and, with --json, a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
FEATURE_DIM, DIM, NEGATIVES = 384, 64, 1024


def world(n_items: int, n_users: int, n_events: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_items, FEATURE_DIM), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    users = rng.integers(0, n_users, n_events).astype(np.int32)
    # Zipf-ish items, so negatives, targets and the sampler's Q look like a real catalogue's
    items = np.minimum(rng.zipf(1.2, n_events) - 1, n_items - 1).astype(np.int32)
    items = rng.permutation(n_items).astype(np.int32)[items]
    ts = np.sort(rng.integers(1_000_000, 1_000_000 + 30 * 86_400, n_events)).astype(np.int64)
    return X, users, items, ts


def engine_for(X, items, n_users: int, *, frozen: bool, lr: float):
    from dyembed.config import ModelConfig
    from dyembed.replay.engine import Engine
    from dyembed.replay.model import Model, init_theta
    from dyembed.replay.spec import RuleSpec

    cfg = ModelConfig(dim=DIM, rule="adam", loss="sampled", num_negatives=NEGATIVES)
    theta = init_theta(X, cfg, seed=0, train_items=items)
    model = Model(X, theta, cfg, frozen=frozen)
    return Engine(model, RuleSpec.from_config(cfg), None, n_users=n_users, lr=lr, num_negatives=NEGATIVES)


def run_train(n_items: int, events: int) -> dict:
    n_users = max(64, events // 8)
    X, users, items, ts = world(n_items, n_users, events)
    engine = engine_for(X, items, n_users, frozen=False, lr=0.01)
    del X
    rng = np.random.default_rng(1)
    lanes = int(os.environ.get("BENCH_TRAIN_LANES", "64"))
    warm = lanes * 25
    t0 = time.perf_counter()
    engine.replay(users[:warm], items[:warm], ts[:warm], update=True, train=True, lanes=lanes, steps=25, rng=rng)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = engine.replay(users, items, ts, update=True, train=True, lanes=lanes, steps=25, rng=rng, shuffle=True)
    secs = time.perf_counter() - t0
    return {"events": events, "lanes": lanes, "seconds": secs, "events_per_s": events / secs, "warmup_s": warm_s,
            "loss": res.loss_sum / max(res.weight_sum, 1e-12)}


def run_replay(n_items: int, events: int) -> dict:
    n_users = max(1024, events // 10)
    X, users, items, ts = world(n_items, n_users, events)
    engine = engine_for(X, items, n_users, frozen=False, lr=0.01)  # train's final pass: θ trainable, fixed here
    del X
    rng = np.random.default_rng(1)
    warm = 4096
    engine.replay(users[:warm], items[:warm], ts[:warm], update=True, lanes=1024, steps=25, rng=rng)
    engine.reset_users()
    t0 = time.perf_counter()
    engine.replay(users, items, ts, update=True, lanes=1024, steps=25, rng=rng)
    secs = time.perf_counter() - t0
    return {"events": events, "seconds": secs, "events_per_s": events / secs}


def run_evaluate(n_items: int, events: int) -> dict:
    import tensorflow as tf

    n_users = max(256, events // 10)
    X, users, items, ts = world(n_items, n_users, events)
    engine = engine_for(X, items, n_users, frozen=True, lr=0.0)
    del X
    lanes, steps = engine.rank_lanes(256), 64
    t0 = time.perf_counter()
    # one block of `lanes` users × 1 step: tracing + one step
    engine.replay(np.arange(lanes, dtype=np.int32), items[:lanes], ts[:lanes], update=True, ranks=True,
                  lanes=lanes, steps=steps)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.replay(np.arange(lanes, dtype=np.int32), items[:lanes], ts[:lanes], update=True, ranks=True,
                  lanes=lanes, steps=steps)
    again = time.perf_counter() - t0
    engine.reset_users()
    t0, c0 = time.perf_counter(), time.process_time()
    res = engine.replay(users, items, ts, update=True, ranks=True, lanes=lanes, steps=steps)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the matmul limit: [lanes, d] @ [d, N] of the same shape, same process
    V = tf.random.normal([n_items, DIM], seed=3)
    q = tf.random.normal([lanes, DIM], seed=4)
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b, transpose_b=True)[:, :1]))
    mm(q, V).numpy()
    best, c1 = float("inf"), time.process_time()
    for _ in range(20):
        t1 = time.perf_counter()
        mm(q, V).numpy()
        best = min(best, time.perf_counter() - t1)
    mm_cpu = (time.process_time() - c1) / 20
    limit = lanes / best
    # on a shared machine wall time carries the load: CPU seconds per event against the matmul's
    # CPU seconds per event is the load-free ratio
    return {"events": events, "seconds": secs, "events_per_s": events / secs, "lanes": lanes,
            "matmul_events_per_s": limit, "pct_of_matmul": 100.0 * events / secs / limit,
            "pct_of_matmul_cpu": 100.0 * (mm_cpu / lanes) / (cpu / events),
            "trace_s": first - again, "mean_rank": float(np.mean(res.ranks))}


WORKLOADS = {"train": run_train, "replay": run_replay, "evaluate": run_evaluate}


def child(tree: str, workload: str, n_items: int, events: int) -> None:
    sys.path.insert(0, tree)
    import dyembed

    assert str(Path(dyembed.__file__).resolve()).startswith(str(Path(tree).resolve())), dyembed.__file__
    out = WORKLOADS[workload](n_items, events)
    print("RESULT " + json.dumps(out))


def measure(tree: Path, workload: str, n_items: int, events: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, __file__, "--child", str(tree), workload, str(n_items), str(events)],
                          capture_output=True, text=True, env=env, cwd=str(tree))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="another tree (e.g. /work/main) measured side by side")
    ap.add_argument("--only", default="train,replay,evaluate")
    ap.add_argument("--items", default="10000,100000,1000000", help="train: catalogue sizes")
    ap.add_argument("--train-events", type=int, default=16_000)
    ap.add_argument("--replay-items", type=int, default=1_000_000)
    ap.add_argument("--replay-events", type=int, default=200_000)
    ap.add_argument("--eval-items", type=int, default=100_000)
    ap.add_argument("--eval-events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.items, args.train_events = "2000", 3200
        args.replay_items, args.replay_events = 2000, 8192
        args.eval_items, args.eval_events = 2000, 2048
    jobs = []
    only = args.only.split(",")
    if "train" in only:
        jobs += [("train", int(n), args.train_events) for n in args.items.split(",")]
    if "replay" in only:
        jobs.append(("replay", args.replay_items, args.replay_events))
    if "evaluate" in only:
        jobs.append(("evaluate", args.eval_items, args.eval_events))
    trees = [("after", REPO)] + ([("before", args.before)] if args.before else [])
    report = {"uptime_start": uptime(), "results": []}
    print(report["uptime_start"], flush=True)
    for workload, n_items, events in jobs:
        for r in range(args.rounds):
            for name, tree in trees:
                res = measure(tree, workload, n_items, events)
                row = {"tree": name, "workload": workload, "items": n_items, "round": r, **res}
                report["results"].append(row)
                print(json.dumps(row), flush=True)
    report["uptime_end"] = uptime()
    print(report["uptime_end"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
