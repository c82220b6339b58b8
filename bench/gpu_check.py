"""GPU readiness check: engine events/s on the GPU and the CPU-vs-GPU agreement of the states.

    python bench/gpu_check.py            # on a machine with an NVIDIA GPU: < 5 minutes
    python bench/gpu_check.py --tiny     # small sizes (the CPU test runs this)

Prints, per catalogue size (10k and 1M items; --tiny: 2k), events/s of sampled training, frozen
sampled replay and full-ranking evaluate (bench_engine.py's workloads, smaller event counts) on
the GPU, then replays one small workload (two training blocks, then a frozen replay with ranks)
on the CPU and on the GPU from the same start and compares θ and the user states
(rtol 1e-4, atol 1e-5), and the ranks. Without a GPU visible to TensorFlow the GPU part is
skipped with a message and the same workloads run on the CPU only (exit 0), so the script stays
tested here. Exit 1 when the states disagree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_engine as be  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def speeds(tf, device: str, sizes: list[int], events: dict[str, int]) -> None:
    for n_items in sizes:
        with tf.device(device):
            tr = be.run_train(n_items, events["train"])
            rp = be.run_replay(n_items, events["replay"])
            ev = be.run_evaluate(n_items, events["evaluate"])
        print(f"{device} items={n_items:>9,}  train {tr['events_per_s']:>10,.0f} ev/s   "
              f"replay {rp['events_per_s']:>10,.0f} ev/s   evaluate {ev['events_per_s']:>10,.0f} ev/s "
              f"({ev['pct_of_matmul']:.0f}% of its matmul)", flush=True)


def replay_states(tf, device: str, n_items: int) -> dict[str, np.ndarray]:
    """Two training blocks, then a frozen replay with ranks, on `device`, from the same start."""
    with tf.device(device):
        X, users, items, ts = be.world(n_items, 256, 64 * 25 * 2)
        engine = be.engine_for(X, items, 256, frozen=False, lr=0.01)
        engine.replay(users, items, ts, update=True, train=True, lanes=64, steps=25, rng=np.random.default_rng(3))
        res = engine.replay(users, items, ts, update=True, ranks=True, lanes=256, steps=25,
                            rng=np.random.default_rng(4))
        state = engine.get_state()
        theta = engine.model.to_theta()
    out = {"U": state.U, "ranks": res.ranks, "scores": res.scores}
    out.update({f"theta.{k}": v for k, v in theta.arrays().items() if v is not None})
    return out


def agreement(cpu: dict, gpu: dict) -> bool:
    ok = True
    for name, a in cpu.items():
        b = gpu[name]
        if name == "ranks":
            differ = int(np.sum(a != b))
            print(f"  ranks: {differ} of {len(a)} differ (near-ties may flip between devices)")
            continue
        close = np.allclose(a, b, rtol=RTOL, atol=ATOL)
        rel = float(np.max(np.abs(a - b) / (np.abs(a) + ATOL / RTOL))) if a.size else 0.0
        print(f"  {name:<22} {'agrees' if close else 'DIFFERS'}  (max |Δ|/(|x|+{ATOL / RTOL:g}) = {rel:.2e})")
        ok &= bool(close)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="2k items and few events (seconds on a CPU)")
    args = ap.parse_args(argv)
    from dyembed.replay.runtime import apply_device

    started = time.perf_counter()
    device = apply_device("auto")
    import tensorflow as tf

    if args.tiny:
        sizes, events, agree_items = [2000], {"train": 3200, "replay": 8192, "evaluate": 512}, 500
    else:
        sizes, events, agree_items = [10_000, 1_000_000], {"train": 16_000, "replay": 200_000, "evaluate": 20_000}, 10_000
    if device != "gpu":
        print("no GPU visible to TensorFlow: skipping the GPU part (events/s and CPU-vs-GPU agreement); "
              "CPU figures only")
        speeds(tf, "/CPU:0", sizes, events)
        print(f"done in {time.perf_counter() - started:.0f} s")
        return 0
    print("GPU:", [d.name for d in tf.config.list_logical_devices("GPU")])
    speeds(tf, "/GPU:0", sizes, events)
    print(f"CPU vs GPU agreement ({agree_items:,} items, rtol {RTOL:g}, atol {ATOL:g}):")
    ok = agreement(replay_states(tf, "/CPU:0", agree_items), replay_states(tf, "/GPU:0", agree_items))
    print(f"{'PASS' if ok else 'FAIL'} in {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
