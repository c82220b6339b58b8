"""Replay engine benchmark: events/s for training and frozen replay, FLOP/s vs the machine's matmul
rate, peak RSS, a naive per-event GradientTape loop for comparison, and the 1M-user memory check.

    python bench/bench_replay.py                      # everything, defaults below
    python bench/bench_replay.py --ml100k /tmp/ml100k # use an existing ml-100k work dir
    python bench/bench_replay.py --synth-events 5000000 --synth-train-events 500000
    python bench/bench_replay.py --memory-only        # the 1M users × d=64 Adam state RSS check

Workloads (deterministic):
- ml-100k: events.parquet + item features of an existing work dir (`--ml100k`), or built here from
  ../shared/data/ml-100k with `dyembed preprocess` and the hashing encoder (features do not change
  the speed). Full softmax over 1,682 items, d = 64, sgd.
- synthetic: 100k users × 50k items × 5M events (Zipf users and items, D = 384), sampled softmax
  with 1,024 shared negatives per t-batch, d = 64, adam. Training is timed on a prefix
  (`--synth-train-events`); frozen replay (update on, θ frozen, no ranking) on the whole log.

FLOPs counted per event (model FLOPs, like nanoGPT's MFU): full softmax 4·d·n_items (scores +
Vᵀp), sampled 4·d·(S+1); training ×3 (backward ≈ 2× forward); ranking adds nothing (compare/sum).
The reference rate is a 2048³ float32 matmul measured in the same run.
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

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DYEMBED_SHARED", REPO.parent / "shared"))


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss would include a parent's peak across fork+exec)."""
    value = _status_mb("VmHWM")
    return value if value == value else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def matmul_rate(tf, n: int = 2048, reps: int = 8) -> float:
    a = tf.random.normal([n, n], seed=1)
    b = tf.random.normal([n, n], seed=2)
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def build_ml100k(tmp: Path) -> Path:
    from dyembed.config import load_config
    from dyembed.encode.run import encode
    from dyembed.preprocess.run import preprocess

    raw = SHARED / "data" / "ml-100k"
    cfg = load_config(overrides=["data.format=movielens-100k", f'data.events="{raw / "u.data"}"',
                                 f'data.items="{raw / "u.item"}"', 'encode.encoder="hashing"'])
    wd = tmp / "ml100k"
    preprocess(wd, cfg)
    encode(wd, cfg)
    return wd


def make_engine(X, items_for_init, *, dim, rule, loss, negatives, n_users, lr):
    from dyembed.config import ModelConfig
    from dyembed.replay.engine import Engine
    from dyembed.replay.model import Model, init_theta
    from dyembed.replay.spec import RuleSpec
    from dyembed.replay.state import UserState

    cfg = ModelConfig(dim=dim, rule=rule, loss=loss, num_negatives=negatives)
    theta = init_theta(X, cfg, seed=0, train_items=items_for_init)
    model = Model(X, theta, cfg)
    spec = RuleSpec.from_config(cfg)
    state = UserState.fresh(n_users, dim, spec.n_slots, u0=theta.u0)
    return Engine(model, spec, state, lr=lr, num_negatives=negatives), state


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench_ml100k(tf, wd: Path, rate: float, lanes: int, steps: int) -> dict:
    from dyembed.replay.io import load_features, read_events

    ev = read_events(wd)
    X = load_features(wd)
    n_items, d = X.shape[0], 64
    engine, fresh = make_engine(X, ev.item_idx, dim=d, rule="sgd", loss="full", negatives=1, n_users=int(ev.user_idx.max()) + 1, lr=0.01)
    rng = np.random.default_rng(0)
    out = {"events": len(ev), "items": n_items, "dim": d}
    # training: warm-up epoch (traces the step), then a timed epoch
    engine.set_state(fresh)
    _, warm = timed(engine.replay, ev.user_idx, ev.item_idx, ev.ts, train=True, lanes=lanes, steps=steps, rng=rng, shuffle=True)
    engine.set_state(fresh)
    _, secs = timed(engine.replay, ev.user_idx, ev.item_idx, ev.ts, train=True, lanes=lanes, steps=steps, rng=rng, shuffle=True)
    flops = 4 * d * n_items * 3
    out["train"] = {"events_per_s": len(ev) / secs, "seconds": secs, "first_epoch_seconds_incl_trace": warm,
                    "gflops": flops * len(ev) / secs / 1e9, "fraction_of_matmul": flops * len(ev) / secs / rate}
    for ranks in (False, True):
        engine.set_state(fresh)
        engine.replay(ev.user_idx[:2000], ev.item_idx[:2000], ev.ts[:2000], ranks=ranks, lanes=1024, steps=steps)
        engine.set_state(fresh)
        _, secs = timed(engine.replay, ev.user_idx, ev.item_idx, ev.ts, ranks=ranks, lanes=1024, steps=steps)
        flops = 4 * d * n_items
        out["frozen_ranks" if ranks else "frozen"] = {
            "events_per_s": len(ev) / secs, "seconds": secs, "gflops": flops * len(ev) / secs / 1e9,
            "fraction_of_matmul": flops * len(ev) / secs / rate}
    out["naive"] = bench_naive(tf, engine, ev, n=300)
    out["naive"]["speedup_vs_frozen"] = out["frozen"]["events_per_s"] / out["naive"]["events_per_s"]
    out["naive"]["speedup_vs_train"] = out["train"]["events_per_s"] / out["naive"]["events_per_s"]
    out["naive_train"] = bench_naive_train(tf, engine, ev, n=200)
    out["naive_train"]["speedup_vs_train"] = out["train"]["events_per_s"] / out["naive_train"]["events_per_s"]
    return out


def _per_event_rate(one, users: dict, ev, n: int) -> dict:
    """Events/s of calling one(user, item) on the first n events, after a 20-event warm-up."""
    for k in range(20):
        one(int(ev.user_idx[k]), int(ev.item_idx[k]))
    users.clear()
    t0 = time.perf_counter()
    for k in range(n):
        one(int(ev.user_idx[k]), int(ev.item_idx[k]))
    return {"events": n, "events_per_s": n / (time.perf_counter() - t0)}


def bench_naive(tf, engine, ev, n: int) -> dict:
    """The same sgd rule as a straightforward loop: one eager GradientTape + optimiser step per event."""
    V = engine.model.item_matrix_tf()
    b = engine.model.b
    alpha = float(np.mean(engine.model.alpha()))
    tau = engine.model.temperature
    users = {}
    u0 = engine.model.u0.numpy()

    def one(user, item):
        if user not in users:
            users[user] = tf.Variable(u0)
        u = users[user]
        with tf.GradientTape() as tape:
            scores = tf.linalg.matvec(V, u) / tau + b
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=item, logits=scores)
        u.assign_sub(alpha * tape.gradient(loss, u))

    return _per_event_rate(one, users, ev, n)


def bench_naive_train(tf, engine, ev, n: int) -> dict:
    """The training pass as a straightforward loop: per event, one eager GradientTape through the
    model (V = X·P, scores, softmax loss with the user's state before the event), an Adam step on
    θ (P, b) and the user's sgd step — what dyembed's train pass does per block of events."""
    X = engine.model.X
    P = tf.Variable(engine.model.P.numpy())
    b = tf.Variable(engine.model.b.numpy())
    alpha = float(np.mean(engine.model.alpha()))
    tau = engine.model.temperature
    u0 = engine.model.u0.numpy()
    theta = [P, b]
    m = [tf.Variable(tf.zeros_like(v)) for v in theta]
    v2 = [tf.Variable(tf.zeros_like(v)) for v in theta]
    lr, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    users: dict = {}
    step = [0]

    def one(user, item):
        if user not in users:
            users[user] = tf.Variable(u0)
        u = users[user]
        with tf.GradientTape() as tape:
            scores = tf.linalg.matvec(tf.matmul(X, P), u) / tau + b
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=item, logits=scores)
        grads = tape.gradient(loss, theta + [u])
        step[0] += 1
        for var, g, mv, vv in zip(theta, grads[:2], m, v2):
            mv.assign(beta1 * mv + (1 - beta1) * g)
            vv.assign(beta2 * vv + (1 - beta2) * g * g)
            var.assign_sub(lr * (mv / (1 - beta1 ** step[0])) / (tf.sqrt(vv / (1 - beta2 ** step[0])) + eps))
        u.assign_sub(alpha * grads[2])

    return _per_event_rate(one, users, ev, n)


def synth_log(n_users: int, n_items: int, n_events: int, seed: int = 0, user_exponent: float = 0.5):
    """Zipf users (exponent 0.5: the busiest user has ~0.16 % of 5M events, i.e. ~8k events, which
    bounds the number of sequential steps) and Zipf items (exponent 1), uniform times over 90 days."""
    rng = np.random.default_rng(seed)
    user_w = 1.0 / np.arange(1, n_users + 1) ** user_exponent
    item_w = 1.0 / np.arange(1, n_items + 1) ** 1.0
    users = np.searchsorted(np.cumsum(user_w / user_w.sum()), rng.random(n_events)).astype(np.int32)
    items = np.searchsorted(np.cumsum(item_w / item_w.sum()), rng.random(n_events)).astype(np.int32)
    users = rng.permutation(n_users).astype(np.int32)[np.minimum(users, n_users - 1)]
    items = np.minimum(items, n_items - 1)
    ts = np.sort(rng.integers(1_500_000_000, 1_500_000_000 + 90 * 86400, n_events)).astype(np.int64)
    return users, items, ts


def bench_synth(tf, rate: float, n_users: int, n_items: int, n_events: int, train_events: int, lanes: int,
                steps: int, negatives: int) -> dict:
    t0 = time.perf_counter()
    users, items, ts = synth_log(n_users, n_items, n_events)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n_items, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    gen_secs = time.perf_counter() - t0
    d = 64
    engine, fresh = make_engine(X, items, dim=d, rule="adam", loss="sampled", negatives=negatives, n_users=n_users, lr=0.01)
    out = {"users": n_users, "items": n_items, "events": n_events, "dim": d, "negatives": negatives,
           "rule": "adam", "generate_seconds": gen_secs, "busiest_user_events": int(np.bincount(users).max()),
           "busiest_user_events_in_train_prefix": int(np.bincount(users[:train_events]).max())}
    m = min(train_events, n_events)
    engine.replay(users[:20_000], items[:20_000], ts[:20_000], train=True, lanes=lanes, steps=steps, rng=rng)  # trace
    engine.set_state(fresh)
    _, secs = timed(engine.replay, users[:m], items[:m], ts[:m], train=True, lanes=lanes, steps=steps, rng=rng,
                    window=1_000_000)
    flops = 4 * d * (negatives + 1) * 3
    out["train"] = {"events": m, "events_per_s": m / secs, "seconds": secs, "gflops": flops * m / secs / 1e9,
                    "fraction_of_matmul": flops * m / secs / rate}
    engine.replay(users[:20_000], items[:20_000], ts[:20_000], lanes=4096, steps=steps, rng=rng)  # trace
    engine.set_state(fresh)
    _, secs = timed(engine.replay, users, items, ts, lanes=4096, steps=steps, rng=rng, window=1_000_000)
    flops = 4 * d * (negatives + 1)
    out["frozen"] = {"events": n_events, "events_per_s": n_events / secs, "seconds": secs,
                     "gflops": flops * n_events / secs / 1e9, "fraction_of_matmul": flops * n_events / secs / rate}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _memory_setup(n_users: int, dim: int, n_items: int, events: int):
    from dyembed.envcheck import import_tensorflow

    import_tensorflow()
    from dyembed.config import ModelConfig
    from dyembed.replay.model import Model, init_theta
    from dyembed.replay.spec import RuleSpec

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_items, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    cfg = ModelConfig(dim=dim, rule="adam", loss="sampled", num_negatives=512)
    users, items, ts = synth_log(n_users, n_items, events)
    theta = init_theta(X, cfg, train_items=items)
    return Model(X, theta, cfg), RuleSpec.from_config(cfg), (users, items, ts), rng


def memory_check(state_dir: Path, *, load: bool, n_users: int = 1_000_000, dim: int = 64, n_items: int = 10_000,
                 events: int = 200_000) -> dict:
    """1M users × d=64 with Adam slots: the user table on the device plus a replay; peak RSS.

    Stage 1 (load=False): fresh table built on the device, replay, save the state (streamed).
    Stage 2 (load=True, a new process): read that state back chunk by chunk, replay again."""
    from dyembed.replay.engine import Engine
    from dyembed.replay.state import load_state, save_state
    from dyembed.replay.train import EVAL_LANES

    model, spec, (users, items, ts), rng = _memory_setup(n_users, dim, n_items, events)
    base = peak_rss_mb()
    if load:
        _, _, streamed, _ = load_state(state_dir, streamed=True)
        engine = Engine(model, spec, streamed, lr=0.0, num_negatives=512)
    else:
        engine = Engine(model, spec, None, n_users=n_users, lr=0.0, num_negatives=512)  # table built on the device
    after_table = peak_rss_mb()
    engine.replay(users, items, ts, lanes=EVAL_LANES, steps=25, rng=rng)  # the lanes train's frozen replay uses
    out = {"stage": "load+replay" if load else "create+replay+save", "users": n_users, "dim": dim, "rule": "adam",
           "events_replayed": events, "user_table_mb": n_users * dim * 4 * 3 / 2**20,
           "rss_before_table_mb": base, "peak_rss_after_table_mb": after_table, "peak_rss_after_replay_mb": peak_rss_mb()}
    if not load:
        save_state(state_dir, users=engine.streamed_state(), theta=model.to_theta().arrays(),
                   manifest={"watermark": {"rows": events, "last_ts": int(ts[-1])}}, config_toml="")
    out.update(peak_rss_mb=peak_rss_mb(), rss_file_mb=_status_mb("RssFile"), rss_anon_mb=_status_mb("RssAnon"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml100k", type=Path, help="existing ml-100k work dir (else built from ../shared with the hashing encoder)")
    ap.add_argument("--lanes", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--synth-users", type=int, default=100_000)
    ap.add_argument("--synth-items", type=int, default=50_000)
    ap.add_argument("--synth-events", type=int, default=5_000_000)
    ap.add_argument("--synth-train-events", type=int, default=500_000)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-ml100k", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the 1M-user memory check")
    ap.add_argument("--memory-stage", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()

    if args.memory_stage:
        stage, directory = args.memory_stage
        print(json.dumps(memory_check(Path(directory), load=stage == "load")))
        return
    report: dict = {}
    if args.memory_only:
        args.skip_ml100k = args.skip_synth = True
    from dyembed.envcheck import import_tensorflow

    tf = import_tensorflow()
    report = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "tensorflow": tf.__version__}}
    rate = matmul_rate(tf)
    report["machine"]["matmul_gflops"] = rate / 1e9
    print(f"float32 matmul (2048³): {rate / 1e9:.1f} GFLOP/s   load average {os.getloadavg()[0]:.2f}", flush=True)
    if not args.skip_ml100k:
        with tempfile.TemporaryDirectory() as tmp:
            wd = args.ml100k or build_ml100k(Path(tmp))
            report["ml100k"] = r = bench_ml100k(tf, wd, rate, args.lanes, args.steps)
        print(f"ml-100k  train {r['train']['events_per_s']:,.0f} ev/s ({r['train']['fraction_of_matmul']:.1%} of matmul rate) · "
              f"frozen {r['frozen']['events_per_s']:,.0f} ev/s · frozen+ranks {r['frozen_ranks']['events_per_s']:,.0f} ev/s · "
              f"naive {r['naive']['events_per_s']:,.1f} ev/s → {r['naive']['speedup_vs_frozen']:,.0f}× (frozen), "
              f"{r['naive']['speedup_vs_train']:,.0f}× (train)", flush=True)
        print(f"  naive training loop (GradientTape + θ Adam step + user step per event) "
              f"{r['naive_train']['events_per_s']:,.1f} ev/s → train is {r['naive_train']['speedup_vs_train']:,.0f}× faster",
              flush=True)
    if not args.skip_synth:
        report["synthetic"] = s = bench_synth(tf, rate, args.synth_users, args.synth_items, args.synth_events,
                                              args.synth_train_events, max(args.lanes, 1024), args.steps, args.negatives)
        print(f"synthetic {s['users']:,} users × {s['items']:,} items × {s['events']:,} events (sampled, S={s['negatives']}): "
              f"train {s['train']['events_per_s']:,.0f} ev/s ({s['train']['fraction_of_matmul']:.1%}) · "
              f"frozen {s['frozen']['events_per_s']:,.0f} ev/s ({s['frozen']['fraction_of_matmul']:.1%}) · "
              f"peak RSS {s['peak_rss_mb']:,.0f} MB", flush=True)
    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as tmp:
            stages = []
            for stage in ("create", "load"):
                proc = subprocess.run([sys.executable, __file__, "--memory-stage", stage, tmp], capture_output=True,
                                      text=True, check=True)
                stages.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        report["memory_1m_users"] = stages
        for mem in stages:
            print(f"1M users × d=64 adam ({mem['stage']}): user table {mem['user_table_mb']:.0f} MB, peak RSS "
                  f"{mem['peak_rss_mb']:,.0f} MB (of which shared-library pages {mem['rss_file_mb']:,.0f} MB; "
                  f"before the table {mem['rss_before_table_mb']:,.0f} MB)", flush=True)
    report["peak_rss_mb"] = peak_rss_mb()
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
