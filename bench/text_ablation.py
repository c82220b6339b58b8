"""What item text is worth: MiniLM vs hashing vs no text, on dyembed's own splits.

    nice -n 10 .venv/bin/python bench/text_ablation.py run  --datasets amazon-magazine-2018 ml-100k
    nice -n 10 .venv/bin/python bench/text_ablation.py tune --datasets amazon-magazine-2018 --protocols temporal
    .venv/bin/python bench/text_ablation.py report --doc docs/text-ablation.md   # tables from the rank dumps

Variants (the same events.parquet, split, masking and metric code; only item_embeddings differ):
- `minilm`  : `dyembed encode --model ../shared/models/all-MiniLM-L6-v2` (D 384)
- `hashing` : `dyembed encode --model hashing` (bag of stemmed words, D 384)
- `none`    : ID only — X is a seeded random unit vector per item (D 384), so the projection X P
              carries no content; what the model knows of an item is learned in its residual E
              (and bias) from the training events, like an ID-embedding model.

Every run uses the config dyembed ships for the dataset (`-c NAME`; ml-latest-small: the
MovieLens one with the text "{title}. Genres: {genres}" — its default text holds user tags, a
third of them dated after the temporal cut, issue 11 §3), with the epoch chosen on the validation
split by `train`'s early stopping (a larger epoch cap than the shipped one, the same for every
variant, so the slower-learning ID-only variant is not cut short). Test is evaluated once per run.

`report` recomputes every number from the rank dumps (`evaluate --dump-ranks`) with
dyembed.evaluate.metrics and dyembed.evaluate.breakdown: NDCG@10 overall and per target-item
warmness bucket (0 = cold: the item has no history row; 1-4; 5+), with paired user-bootstrap
95 % intervals of the differences minilm − hashing and minilm − none.

Work dirs and logs go to --runs (default runs/text-ablation, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("DYEMBED_SHARED", REPO.parent / "shared"))
MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
VARIANTS = ["minilm", "hashing", "none"]
PROTOCOLS = ["loo", "temporal"]
K = 10

# (format, input dir, shipped config, extra --set for preprocess, train --set)
DATASETS: dict[str, dict[str, Any]] = {
    "amazon-magazine-2018": {"format": "amazon-2018", "input": "data/amazon-magazine-2018", "config": "amazon-2018",
                             "pre": [], "train": []},
    "ml-100k": {"format": "movielens-100k", "input": "data/ml-100k", "config": "movielens-100k",
                "pre": [], "train": ["train.epochs=8", "train.patience=2"]},
    "ml-latest-small": {"format": "movielens-latest", "input": "data/ml-latest-small", "config": "movielens-100k",
                        "pre": ["data.text_template={title}. Genres: {genres}"],
                        "train": ["train.epochs=4", "train.patience=1"]},
}
BASE_FILES = ["events.parquet", "items.parquet", "users.parquet", "manifest.json", "config.toml", "rejected.parquet"]
ENC_FILES = ["item_embeddings.parquet", "encode_manifest.json"]


def dyembed(*args: str, log: Path) -> None:
    """One CLI command, output appended to `log`; a failure stops the bench with the log's tail."""
    cmd = [sys.executable, "-m", "dyembed", "--quiet", *args]
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        fh.write(f"# exit {rc} after {time.perf_counter() - t0:.1f} s\n")
    if rc != 0:
        raise SystemExit(f"error: {' '.join(args[:2])} failed (exit {rc}); see {log}")


def sets(pairs: list[str]) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def copy_files(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def random_features(workdir: Path, seed: int = 0) -> None:
    """Replace item_embeddings.parquet's vectors by seeded random unit vectors (same schema, same D)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = workdir / "item_embeddings.parquet"
    table = pq.read_table(path)
    dim = table.schema.field("embedding").type.list_size
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((table.num_rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), dim)
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding",
                             column.cast(table.schema.field("embedding").type))
    pq.write_table(table, path)
    manifest = json.loads((workdir / "encode_manifest.json").read_text())
    manifest["ablation"] = f"vectors replaced by seeded random unit vectors (seed {seed}): no text"
    (workdir / "encode_manifest.json").write_text(json.dumps(manifest, indent=2))


def run_dataset(name: str, runs: Path, protocols: list[str], variants: list[str]) -> None:
    spec = DATASETS[name]
    root = runs / name
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    base = root / "base"
    if not (base / "events.parquet").exists():
        dyembed("preprocess", str(base), "--format", spec["format"], "--input", str(SHARED / spec["input"]),
                "-c", spec["config"], *sets(spec["pre"]), log=log)
    for variant in variants:
        enc = root / f"enc-{variant}"
        if not (enc / "item_embeddings.parquet").exists():
            copy_files(base, enc, BASE_FILES)
            dyembed("encode", str(enc), "--model", str(MODEL) if variant == "minilm" else "hashing", log=log)
            if variant == "none":
                random_features(enc)
        for protocol in protocols:
            run = root / f"{variant}-{protocol}"
            if (run / "metrics.json").exists():
                continue
            copy_files(base, run, BASE_FILES)
            copy_files(enc, run, ENC_FILES)
            dyembed("train", str(run), "--protocol", protocol, "--json", str(run / "train.json"),
                    *sets(spec["train"]), log=log)
            dyembed("evaluate", str(run), "--protocol", protocol, "--baselines", "pop", "--json",
                    str(run / "metrics.json"), "--dump-ranks", str(run / "ranks.parquet"), log=log)


def tune_dataset(name: str, runs: Path, protocols: list[str], variants: list[str], budget: float, trials: int,
                 epochs: int) -> None:
    """Per variant and protocol: `dyembed tune` on the validation split (same budget, trials and
    seed for every variant), then `train --config tune/best.toml` and one evaluate."""
    root = runs / name
    log = root / "log-tune.txt"
    for protocol in protocols:
        for variant in variants:
            enc = root / f"enc-{variant}"
            run = root / f"tuned-{variant}-{protocol}"
            if (run / "metrics.json").exists():
                continue
            copy_files(root / "base", run, BASE_FILES)
            copy_files(enc, run, ENC_FILES)
            dyembed("tune", str(run), "--protocol", protocol, "--budget-minutes", str(budget), "--trials", str(trials),
                    "--epochs", str(epochs), "--json", str(run / "tune.json"), log=log)
            dyembed("train", str(run), "--config", str(run / "tune" / "best.toml"), "--protocol", protocol,
                    "--json", str(run / "train.json"), log=log)
            dyembed("evaluate", str(run), "--protocol", protocol, "--baselines", "pop", "--json",
                    str(run / "metrics.json"), "--dump-ranks", str(run / "ranks.parquet"), log=log)


def cold_probe(name: str, runs: Path, protocols: list[str], variants: list[str]) -> None:
    """Diagnostic (not a model change, not a choice): re-evaluate each finished run with the items
    that had no training row given the treatment θ gives items appended after training (the
    median bias, a zero residual: text features only), instead of the bias and residual that the
    full softmax pushed down while they were never a positive. Ranks → ranks-newitem.parquet."""
    import numpy as np

    from dyembed.config import Config, apply_mapping
    from dyembed.evaluate import run as ev_run
    from dyembed.replay import api

    load = api.load_trained

    def load_as_new_items(workdir, view="serving"):
        trained = load(workdir, view=view)
        roles = np.asarray(trained.split)
        items = ev_run.load_event_log(Path(workdir)).item_idx[: roles.size]
        seen = np.bincount(items[roles == 0], minlength=trained.n_items) > 0
        theta = trained.theta
        theta.b[~seen] = np.median(theta.b[seen])
        if theta.E is not None:
            theta.E[~seen] = 0.0
        return trained

    api.load_trained = load_as_new_items
    try:
        for protocol in protocols:
            for variant in variants:
                run = runs / name / f"{variant}-{protocol}"
                if not (run / "metrics.json").exists() or (run / "ranks-newitem.parquet").exists():
                    continue
                import tomllib

                cfg = apply_mapping(Config(), tomllib.loads((run / "config.toml").read_text()), "config.toml")
                cfg.evaluate.protocol = protocol
                cfg.evaluate.baselines = []
                ev_run.evaluate(run, cfg, json_path=run / "metrics-newitem.json", dump_ranks=run / "ranks-newitem.parquet")
    finally:
        api.load_trained = load


# --------------------------------------------------------------------------- report


def paired_interval(a: np.ndarray, b: np.ndarray, users: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Per-event mean difference of two metric arrays on the same events, and its 95 % interval
    from a bootstrap over users (the same resampled users for both: a paired interval)."""
    _, inv = np.unique(users, return_inverse=True)
    n = int(inv.max()) + 1 if inv.size else 0
    diff_sum = np.bincount(inv, weights=a - b, minlength=n)
    count = np.bincount(inv, minlength=n).astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(rounds)
    for r in range(rounds):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        stats[r] = (w @ diff_sum) / max(w @ count, 1.0)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(diff_sum.sum() / max(count.sum(), 1.0)), float(lo), float(hi)


def load_run(run: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    if not (run / "ranks.parquet").exists():
        return None
    dump = pq.read_table(run / "ranks.parquet").to_pandas()
    train = json.loads((run / "train.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return {"dump": dump, "train": train, "metrics": metrics}


def test_warmness(workdir: Path, protocol: str) -> np.ndarray:
    """Warmness bucket label of every test event of the run's split (evaluate's own roles)."""
    from dyembed.config import EvaluateConfig
    from dyembed.evaluate.breakdown import WARMNESS_BUCKETS, bucket_labels, slices_of_test_events
    from dyembed.evaluate.run import load_event_log, make_roles

    log_ = load_event_log(workdir)
    roles, _ = make_roles(log_, EvaluateConfig(protocol=protocol, test_fraction=0.2))
    slices = slices_of_test_events(log_.user_idx, log_.item_idx, roles, log_.n_items)
    return bucket_labels(slices["item_warmness"], WARMNESS_BUCKETS)


def report(runs: Path, datasets: list[str], protocols: list[str], prefix: str = "") -> dict[str, str]:
    from dyembed.evaluate.metrics import mrr_at_k, ndcg_at_k

    lines = ["| dataset | protocol | text | val NDCG@10 (epoch) | test NDCG@10 | cold (0) | 1-4 | 5+ | Δ vs hashing [95 %] | Δ vs none [95 %] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cold_lines = ["| dataset | protocol | bucket | events | minilm | hashing | none | minilm − hashing [95 %] | minilm − none [95 %] "
                  "| median rank minilm / hashing / none | MRR minilm − none [95 %] |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in datasets:
        for protocol in protocols:
            loaded = {v: load_run(runs / name / f"{prefix}{v}-{protocol}") for v in VARIANTS}
            if any(x is None for x in loaded.values()):
                continue
            ref = loaded["minilm"]["dump"]
            ref = ref[ref.model == "dyembed"].reset_index(drop=True)
            buckets = test_warmness(runs / name / f"{prefix}minilm-{protocol}", protocol)
            users = ref.user_id.to_numpy()
            nd, rk = {}, {}
            for v, x in loaded.items():
                d = x["dump"][x["dump"].model == "dyembed"].reset_index(drop=True)
                assert (d.user_id.to_numpy() == users).all() and (d.item_id.to_numpy() == ref.item_id.to_numpy()).all()
                rk[v] = d["rank"].to_numpy()
                nd[v] = ndcg_at_k(rk[v], K)
            for v in VARIANTS:
                t = loaded[v]["train"]
                cells = [name, protocol, v, f"{t['best_val']:.4f} ({t['best_epoch']}/{t['epochs_run']})",
                         f"{nd[v].mean():.4f}"]
                cells += [f"{nd[v][buckets == b].mean():.4f}" if (buckets == b).any() else "–" for b in ("0", "1-4", "5+")]
                if v == "minilm":
                    for other in ("hashing", "none"):
                        m, lo, hi = paired_interval(nd["minilm"], nd[other], users)
                        cells.append(f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]")
                else:
                    cells += ["", ""]
                lines.append("| " + " | ".join(cells) + " |")
            for b in ("0", "1-4", "5+"):
                sel = buckets == b
                if not sel.any():
                    continue
                cells = [name, protocol, b, str(int(sel.sum()))] + [f"{nd[v][sel].mean():.4f}" for v in VARIANTS]
                for other in ("hashing", "none"):
                    m, lo, hi = paired_interval(nd["minilm"][sel], nd[other][sel], users[sel])
                    cells.append(f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]")
                cells.append(" / ".join(f"{np.median(rk[v][sel]):.0f}" for v in VARIANTS))
                m, lo, hi = paired_interval(mrr_at_k(rk["minilm"][sel]), mrr_at_k(rk["none"][sel]), users[sel])
                cells.append(f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]")
                cold_lines.append("| " + " | ".join(cells) + " |")
    return {"main": "\n".join(lines) + "\n", "buckets": "\n".join(cold_lines) + "\n",
            "probe": probe_report(runs, datasets, protocols), "tuned": tuned_report(runs, datasets, protocols)}


def tuned_report(runs: Path, datasets: list[str], protocols: list[str]) -> str:
    lines = ["| dataset | protocol | text | trials | tuned val NDCG@10 | tuned test NDCG@10 | shipped val / test | chosen settings |",
             "|---|---|---|---|---|---|---|---|"]
    for name in datasets:
        for protocol in protocols:
            for v in VARIANTS:
                run = runs / name / f"tuned-{v}-{protocol}"
                if not (run / "metrics.json").exists():
                    continue
                t = json.loads((run / "tune.json").read_text())
                m = json.loads((run / "metrics.json").read_text())["models"]["dyembed"]["per_event"][f"ndcg@{K}"]
                base = runs / name / f"{v}-{protocol}"
                bv = json.loads((base / "train.json").read_text())["best_val"]
                bt = json.loads((base / "metrics.json").read_text())["models"]["dyembed"]["per_event"][f"ndcg@{K}"]
                settings = " ".join(f"{k.split('.')[1]}={x:.3g}" if isinstance(x, float) else f"{k.split('.')[1]}={x}"
                                    for k, x in sorted(t["best"]["settings"].items()))
                lines.append(f"| {name} | {protocol} | {v} | {len(t['trials'])} | {t['best']['value']:.4f} | {m:.4f} | "
                             f"{bv:.4f} / {bt:.4f} | {settings} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def fill_doc(path: Path, sections: dict[str, str]) -> None:
    """Replace each `<!-- begin:NAME -->…<!-- end:NAME -->` block of the document."""
    import re

    text = path.read_text(encoding="utf-8")
    for name, body in sections.items():
        text = re.sub(rf"(<!-- begin:{name} -->\n).*?(<!-- end:{name} -->)", lambda mt: mt.group(1) + body + mt.group(2),
                      text, flags=re.S)
    path.write_text(text, encoding="utf-8")


def probe_report(runs: Path, datasets: list[str], protocols: list[str]) -> str:
    """The cold-probe runs beside the originals: NDCG@10 and median rank per warmness bucket."""
    import pyarrow.parquet as pq

    from dyembed.evaluate.metrics import ndcg_at_k

    lines = ["| dataset | protocol | text | bucket | events | NDCG@10 as trained | NDCG@10 untrained items as new | "
             "median rank as trained / as new | Δ [95 %] |", "|---|---|---|---|---|---|---|---|---|"]
    for name in datasets:
        for protocol in protocols:
            for v in VARIANTS:
                run = runs / name / f"{v}-{protocol}"
                if not (run / "ranks-newitem.parquet").exists():
                    continue
                a = pq.read_table(run / "ranks.parquet").to_pandas()
                a = a[a.model == "dyembed"].reset_index(drop=True)
                b = pq.read_table(run / "ranks-newitem.parquet").to_pandas()
                b = b[b.model == "dyembed"].reset_index(drop=True)
                buckets = test_warmness(run, protocol)
                users = a.user_id.to_numpy()
                for bucket in ("0", "1-4", "5+"):
                    sel = buckets == bucket
                    if not sel.any():
                        continue
                    ra, rb = a["rank"].to_numpy()[sel], b["rank"].to_numpy()[sel]
                    m, lo, hi = paired_interval(ndcg_at_k(rb, K), ndcg_at_k(ra, K), users[sel])
                    lines.append(f"| {name} | {protocol} | {v} | {bucket} | {int(sel.sum())} | {ndcg_at_k(ra, K).mean():.4f} | "
                                 f"{ndcg_at_k(rb, K).mean():.4f} | {np.median(ra):.0f} / {np.median(rb):.0f} | "
                                 f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "tune", "cold-probe", "report"])
    parser.add_argument("--doc", type=Path, help="report: fill the result blocks of this markdown file")
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="tune: per variant and protocol")
    parser.add_argument("--trials", type=int, default=20, help="tune: per variant and protocol")
    parser.add_argument("--epochs", type=int, default=30, help="tune: epoch cap of a trial")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--protocols", nargs="+", default=PROTOCOLS, choices=PROTOCOLS)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "text-ablation")
    args = parser.parse_args()
    if args.what == "run":
        for name in args.datasets:
            run_dataset(name, args.runs, args.protocols, args.variants)
    elif args.what == "cold-probe":
        for name in args.datasets:
            cold_probe(name, args.runs, args.protocols, args.variants)
    elif args.what == "tune":
        for name in args.datasets:
            tune_dataset(name, args.runs, args.protocols, args.variants, args.budget_minutes, args.trials, args.epochs)
    else:
        sections = report(args.runs, args.datasets, args.protocols)
        if args.doc:
            fill_doc(args.doc, sections)
        print("\n".join(sections.values()))


if __name__ == "__main__":
    main()
