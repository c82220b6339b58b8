"""What the lineage check (dyembed/lineage.py) costs the commands that read a state.

    python bench/bench_lineage.py                          # the reference work dirs + a 5M-row log
    python bench/bench_lineage.py --events 5000000 --users 100000 --items 50000 --dim 384
    python bench/bench_lineage.py --workdir ../wd/ml-100k  # one prepared work dir (copied, never modified)

For each work dir: the parts of the check timed alone (the streaming pass over events.parquet,
the id maps, the vector digest folded into load_features), and `dyembed recommend` for one user
end to end with the check and with it switched off, alternated A, B, A, B in one process. Every
figure is the median of --rounds runs of process CPU time (steadier than wall time on a shared
machine; the work is single-threaded, so on an idle machine the two agree). The state is a random θ and
random users written with the real lineage record (the numbers it recommends do not matter here).
Synthetic logs are written straight as the work dir's parquet artefacts, once, under --cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_workdir(root: Path, events: int, users: int, items: int, dim: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = root / f"lineage-{events}-{users}-{items}-{dim}"
    if (work / "item_embeddings.parquet").is_file():
        return work
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(1_600_000_000, 1_650_000_000, events)).astype(np.int64)
    pq.write_table(pa.table({"user_idx": rng.integers(0, users, events).astype(np.int32),
                             "item_idx": rng.integers(0, items, events).astype(np.int32), "ts": ts}),
                   work / "events.parquet", compression="zstd")
    pq.write_table(pa.table({"user_idx": np.arange(users, dtype=np.int32), "user_id": [f"u{u:08d}" for u in range(users)]}),
                   work / "users.parquet", compression="zstd")
    pq.write_table(pa.table({"item_idx": np.arange(items, dtype=np.int32), "item_id": [f"i{j:08d}" for j in range(items)],
                             "text": [f"item {j}" for j in range(items)]}), work / "items.parquet", compression="zstd")
    X = rng.standard_normal((items, dim)).astype(np.float32)
    pq.write_table(pa.table({"item_idx": np.arange(items, dtype=np.int32),
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim),
                             "text_hash": [f"h{j}" for j in range(items)]}), work / "item_embeddings.parquet",
                   compression="zstd")
    return work


def write_random_state(work: Path, d: int = 64) -> None:
    """A state/ whose lineage is the real one for this work dir (θ and users random)."""
    import pyarrow.parquet as pq

    from dyembed import lineage
    from dyembed.config import Config, to_toml
    from dyembed.replay.io import load_features
    from dyembed.replay.state import UserState, save_state

    vectors = lineage.vector_digest()
    X = load_features(work, digest=vectors)
    n_users = pq.ParquetFile(work / "users.parquet").metadata.num_rows
    n_items, D = X.shape
    sc = lineage.scan(work, vectors=vectors)
    rng = np.random.default_rng(1)
    theta = {"P": (rng.standard_normal((D, d)) / np.sqrt(D)).astype(np.float32), "b": np.zeros(n_items, np.float32),
             "log_tau": np.array(0.0, np.float32), "log_alpha": np.array(np.log(0.05), np.float32),
             "u0": np.zeros(d, np.float32)}
    users = UserState.fresh(n_users, d, 0)
    users.U[:] = rng.standard_normal(users.U.shape).astype(np.float32)
    users.count[:] = 1
    cfg = Config()
    cfg.model.dim, cfg.model.item_residual = d, False
    save_state(work, users=users, theta=theta, config_toml=to_toml(cfg),
               manifest={"watermark": {"rows": sc.events.rows, "last_ts": 0}, "n_users": n_users, "n_items": n_items,
                         "dim": d, "feature_dim": D, "split": {"protocol": "none"}, "eval": None,
                         "lineage": lineage.record(sc, rows=sc.events.rows, n_users=n_users, n_items=n_items)})


def clock() -> float:
    return time.process_time()


def timed(fn, rounds: int = 3) -> float:
    out = []
    for _ in range(rounds):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return statistics.median(out)


def measure(work: Path, rounds: int) -> dict:
    import pyarrow.parquet as pq

    from dyembed import lineage
    from dyembed.config import Config
    from dyembed.evaluate.recommend import recommend
    from dyembed.replay import api
    from dyembed.replay.io import load_features

    rows = pq.ParquetFile(work / "events.parquet").metadata.num_rows
    n_users = pq.ParquetFile(work / "users.parquet").metadata.num_rows
    n_items = pq.ParquetFile(work / "item_embeddings.parquet").metadata.num_rows
    user = pq.read_table(work / "users.parquet").column("user_id")[0].as_py()
    parts = {
        "events pass": timed(lambda: lineage.scan(work, vectors=lineage.vector_digest()), rounds)
        - timed(lambda: lineage.scan(work, events=False, vectors=lineage.vector_digest()), rounds),
        "id maps": timed(lambda: lineage.scan(work, events=False, vectors=lineage.vector_digest()), rounds),
    }
    plain, digest = [], []
    for _ in range(rounds):  # A, B, A, B: load_features alone vs with the vector digest folded in
        t0 = clock()
        load_features(work)
        plain.append(clock() - t0)
        t0 = clock()
        load_features(work, digest=lineage.vector_digest())
        digest.append(clock() - t0)
    parts["vector digest (in load_features)"] = statistics.median(digest) - statistics.median(plain)
    parts["load_features alone (for scale)"] = statistics.median(plain)

    real_scan, real_require = lineage.scan, lineage.require

    def run(check: bool) -> float:
        if not check:  # the check switched off: no scan, no comparison
            lineage.scan = lambda *a, **k: lineage.Scan(work)
            lineage.require = lambda *a, **k: None
        try:
            t0 = clock()
            recommend(work, Config(), user_ids=[user], k=10)
            return clock() - t0
        finally:
            lineage.scan, lineage.require = real_scan, real_require

    run(True)  # warm the page cache and the imports
    with_check, without = [], []
    for _ in range(rounds):
        without.append(run(False))
        with_check.append(run(True))
    print(f"# {work.name}: recommend CPU s without the check {[round(x, 3) for x in without]}, with {[round(x, 3) for x in with_check]}", file=sys.stderr)
    api.load_trained(work)  # the real path passes
    return {"work": str(work), "events": rows, "users": n_users, "items": n_items, "parts": parts,
            "recommend": (statistics.median(without), statistics.median(with_check))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, action="append", help="a prepared work dir (copied to --cache first)")
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dyembed-bench-lineage")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    sources = args.workdir if args.workdir else [p for p in (REPO.parent / "wd").glob("*") if (p / "events.parquet").is_file()]
    works = []
    for src in sources:
        dest = args.cache / src.name
        if dest.resolve() != src.resolve():  # prepared work dirs are copied, never modified
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("state*", ".dyembed.lock"))
        works.append(dest)
    if not args.workdir:
        works.append(synthetic_workdir(args.cache, args.events, args.users, args.items, args.dim))
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}", file=sys.stderr)
    print("CPU seconds, medians of", args.rounds, "rounds", file=sys.stderr)
    print("| work dir | events | users | items | events pass | id maps | vector digest | (load_features) "
          "| recommend 1 user: no check → check | overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for work in works:
        write_random_state(work)
        r = measure(work, args.rounds)
        p = r["parts"]
        a, b = r["recommend"]
        print(f"| {Path(r['work']).name} | {r['events']:,} | {r['users']:,} | {r['items']:,} | {p['events pass']:.3f} s "
              f"| {p['id maps']:.3f} s | {p['vector digest (in load_features)']:.3f} s "
              f"| {p['load_features alone (for scale)']:.3f} s | {a:.2f} → {b:.2f} s | {b - a:+.2f} s ({(b / a - 1) * 100:+.0f} %) |",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
