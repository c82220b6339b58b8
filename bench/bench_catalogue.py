"""Catalogue-scale benchmark: a 1M-item work dir through `dyembed train`, `evaluate` and `recommend`.

    python bench/bench_catalogue.py                               # 1M items, 10k users, 150k events
    python bench/bench_catalogue.py --users 20000 --events 500000 # the full-size run (~40 min)
    python bench/bench_catalogue.py --work /tmp/cat1m --reuse     # keep / reuse the built work dir
    python bench/bench_catalogue.py --users 2000 --events 50000   # 1M items, quick (~7 min)
    python bench/bench_catalogue.py --protocols loo,temporal --temporal-fraction 0.02

The work dir is built the honest way, with the commands a user runs: `dyembed synth` (a drifting-
interest world with --items items), `dyembed preprocess --format synth` with
`data.keep_unused_items = true` (so every item of the catalogue is in items.parquet, also the
ones no event touches) and `dyembed encode --model hashing` (unit-norm D = 384 features).

Then, per protocol (loo by default; temporal adds a second training with its own split):
- `dyembed train` with `model.loss = "sampled"` (`model.num_negatives`, default 1024 shared
  negatives per t-batch), --epochs (default 1) and, by default, `train.validation = false` (the
  per-epoch validation replay ranks every replayed row, training rows included, over the whole
  catalogue: about an hour per epoch at the full size; --validation turns it on). A training
  step costs ~90 ms at 1M items whatever its lane count, and a window needs at least as many
  steps as its busiest user has events (synth's Pareto activity: about 2 % of all events), so the
  training time follows --events, not --users;
- `dyembed evaluate` (full ranking over every item for dyembed and each baseline, --baselines);
and once `dyembed recommend --k 10 --mask-seen on --out recs.parquet` for every user.

Every command runs in its own subprocess (the CLI called in-process by this file's --child mode),
so the peak RSS reported for it (VmHWM from /proc, MiB; it includes ~410 MiB of TensorFlow's
shared-library pages) is that command's alone. The cap settings (`runtime.max_block_mb`,
`evaluate.max_block_mb`) are passed explicitly and recorded.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(out_json: Path, argv: list[str]) -> None:
    """Run one `dyembed` command in this process and write its wall time and peak RSS."""
    from dyembed_cli.app import app

    started = time.perf_counter()
    code: int | str | None = 0
    try:
        code = app(argv, prog_name="dyembed", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    seconds = time.perf_counter() - started
    out_json.write_text(json.dumps({"exit_code": int(code or 0) if not isinstance(code, str) else 1,
                                    "seconds": round(seconds, 2), "peak_rss_mb": round(_status_mb("VmHWM")),
                                    "rss_file_mb_at_end": round(_status_mb("RssFile"))}))


def run(name: str, argv: list[str], logs: Path) -> dict:
    """One command in a fresh subprocess; its output goes to logs/<name>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    result_file = logs / f"{name}.result.json"
    result_file.unlink(missing_ok=True)
    load0 = os.getloadavg()[0]
    with open(logs / f"{name}.log", "w") as log:
        proc = subprocess.run([sys.executable, __file__, "--child", str(result_file), "--", *argv],
                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0 or not result_file.is_file():
        tail = (logs / f"{name}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(result_file.read_text())
    if res["exit_code"] != 0:
        raise SystemExit(f"{name}: dyembed exited {res['exit_code']}; see {logs / (name + '.log')}")
    res["load_avg_start"] = round(load0, 2)
    res["load_avg_end"] = round(os.getloadavg()[0], 2)
    res["command"] = "dyembed " + " ".join(argv)
    print(f"{name:<22} {res['seconds']:>8.1f} s   peak RSS {res['peak_rss_mb']:>6,} MiB   (load {load0:.1f})", flush=True)
    return res


def build(work: Path, raw: Path, args, logs: Path, report: dict) -> None:
    """synth → preprocess (all items kept) → encode (hashing, D = 384)."""
    q = ["--quiet"]
    s = run("synth", q + ["synth", "--out", str(raw), "--users", str(args.users), "--items", str(args.items),
                          "--events", str(args.events), "--seed", "0"], logs)
    s["events_per_s"] = round(args.events / s["seconds"])
    p = run("preprocess", q + ["preprocess", str(work), "--format", "synth", "--input", str(raw),
                               "--set", "data.keep_unused_items=true"], logs)
    p["rows_per_s"] = round(args.events / p["seconds"])
    e = run("encode", q + ["encode", str(work), "--model", "hashing", "--set", f"encode.hashing_dim={args.dim}"], logs)
    e["items_per_s"] = round(args.items / e["seconds"])
    report["steps"].update(synth=s, preprocess=p, encode=e)


def workdir_facts(work: Path) -> dict:
    import pyarrow.parquet as pq

    import numpy as np

    meta = pq.ParquetFile(work / "item_embeddings.parquet")
    users = pq.read_table(work / "events.parquet", columns=["user_idx"]).column(0).to_numpy()
    return {"items": pq.ParquetFile(work / "items.parquet").metadata.num_rows,
            "busiest_user_events": int(np.bincount(users).max()),
            "users": pq.ParquetFile(work / "users.parquet").metadata.num_rows,
            "events": pq.ParquetFile(work / "events.parquet").metadata.num_rows,
            "feature_dim": meta.schema_arrow.field("embedding").type.list_size,
            "item_embeddings_mb": round((work / "item_embeddings.parquet").stat().st_size / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--dim", type=int, default=384, help="feature dimension D (encode.hashing_dim)")
    ap.add_argument("--work", type=Path, help="work directory (default: a temporary one, removed at the end)")
    ap.add_argument("--reuse", action="store_true", help="reuse --work when it already holds item_embeddings.parquet")
    ap.add_argument("--protocols", default="loo", help="comma-separated: loo, temporal")
    ap.add_argument("--temporal-fraction", type=float, default=0.02, help="evaluate.test_fraction for temporal")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--negatives", type=int, default=1024, help="model.num_negatives")
    ap.add_argument("--validation", action="store_true", help="keep train's per-epoch validation replay")
    ap.add_argument("--baselines", default="pop,recent-pop,random,history-mean",
                    help="evaluate --baselines (static = full-softmax fit over every item: hours at 1M items)")
    ap.add_argument("--runtime-block-mb", type=int, help="runtime.max_block_mb (default: the config default)")
    ap.add_argument("--eval-block-mb", type=float, help="evaluate.max_block_mb (default: the config default)")
    ap.add_argument("--lanes", type=int, help="train.batch_size (lanes; default: the config default)")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the state already in --work")
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--skip-recommend", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for train/evaluate/recommend")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rest[1:] if args.rest[:1] == ["--"] else args.rest)
        return

    from dyembed.config import Config

    defaults = Config()
    runtime_mb = args.runtime_block_mb if args.runtime_block_mb is not None else defaults.runtime.max_block_mb
    eval_mb = args.eval_block_mb if args.eval_block_mb is not None else defaults.evaluate.max_block_mb
    temp = None
    if args.work is None:
        temp = Path(tempfile.mkdtemp(prefix="dyembed-catalogue-"))
        args.work = temp / "work"
    base = args.work.parent / (args.work.name + "-bench")
    raw, logs = base / "raw", base / "logs"
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
                    "sizes": {"items": args.items, "users": args.users, "events": args.events, "dim": args.dim},
                    "caps": {"runtime.max_block_mb": runtime_mb, "evaluate.max_block_mb": eval_mb},
                    "train": {"loss": "sampled", "num_negatives": args.negatives,
                              "batch_size": args.lanes or defaults.train.batch_size,
                              "epochs": args.epochs, "validation": args.validation},
                    "baselines": args.baselines, "protocols": args.protocols,
                    "steps": {}}
    started = time.perf_counter()
    try:
        if not (args.reuse and (args.work / "item_embeddings.parquet").is_file()):
            if args.work.exists():
                shutil.rmtree(args.work)
            build(args.work, raw, args, logs, report)
            shutil.rmtree(raw, ignore_errors=True)
        report["workdir"] = workdir_facts(args.work)
        print(f"work dir {args.work}: {report['workdir']}", flush=True)
        common = ["--set", f"runtime.max_block_mb={runtime_mb}", "--set", f"evaluate.max_block_mb={eval_mb}"]
        for s in args.sets:
            common += ["--set", s]
        train_sets = ['model.loss="sampled"', f"model.num_negatives={args.negatives}",
                      f"train.validation={'true' if args.validation else 'false'}"]
        if args.lanes:
            train_sets.append(f"train.batch_size={args.lanes}")
        for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
            split = ["--set", f'evaluate.protocol="{protocol}"']
            if protocol == "temporal":
                split += ["--set", f"evaluate.test_fraction={args.temporal_fraction}"]
            if not args.skip_train:
                tj = logs / f"train-{protocol}.json"
                t = run(f"train-{protocol}", ["--quiet", "train", str(args.work), "--epochs", str(args.epochs), "--json-file", str(tj)]
                        + [x for s in train_sets for x in ("--set", s)] + split + common, logs)
                summary = json.loads(tj.read_text())
                t.update({k: summary.get(k) for k in ("train_events", "validation_events", "test_events", "epochs_run",
                                                       "train_seconds", "train_events_per_second", "users", "items")})
                t["train_events_per_s_wall"] = round(summary["train_events"] * summary["epochs_run"] / t["seconds"], 1)
                report["steps"][f"train-{protocol}"] = t
                print(f"    {summary['train_events']:,} training events: {summary['train_events_per_second']:,.0f} events/s "
                      f"in the training passes", flush=True)
            if args.skip_evaluate:
                continue
            ej = logs / f"evaluate-{protocol}.json"
            e = run(f"evaluate-{protocol}", ["--quiet", "evaluate", str(args.work), "--json-file", str(ej),
                                             "--baselines", args.baselines or "none"] + split + common, logs)
            rep = json.loads(ej.read_text())
            n_test = rep["counts"]["test_events"]
            e["counts"] = rep["counts"]
            e["models"] = {name: {"seconds": m["seconds"], "events_per_s": round(n_test / max(m["seconds"], 1e-9), 1),
                                  "ndcg@10": m["per_event"].get("ndcg@10"), "recall@10": m["per_event"].get("recall@10"),
                                  "coverage@10": m["coverage"].get("@10")}
                           for name, m in rep["models"].items()}
            e["test_events_per_s_all_models"] = round(n_test * len(rep["models"]) / e["seconds"], 1)
            report["steps"][f"evaluate-{protocol}"] = e
            for name, m in e["models"].items():
                print(f"    {name:<14} {m['seconds']:>7.1f} s  {m['events_per_s']:>9,.1f} test events/s  "
                      f"NDCG@10 {m['ndcg@10'] or 0:.4f}", flush=True)
        if not args.skip_recommend:
            out = base / "recs.parquet"
            r = run("recommend", ["--quiet", "recommend", str(args.work), "--k", "10", "--mask-seen", "on", "--out", str(out)]
                    + common, logs)
            import pyarrow.parquet as pq

            r["rows_written"] = pq.ParquetFile(out).metadata.num_rows
            r["users_per_s"] = round(report["workdir"]["users"] / r["seconds"], 1)
            report["steps"]["recommend"] = r
            out.unlink()
    finally:
        report["seconds_total"] = round(time.perf_counter() - started, 1)
        report["machine"]["load_avg_at_end"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    print(f"total {report['seconds_total']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
