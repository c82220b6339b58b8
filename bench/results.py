"""Generate docs/results.md: dyembed vs its baselines on the shared reference datasets.

    /work/venv/bin/python bench/results.py                      # all datasets, both protocols
    /work/venv/bin/python bench/results.py --datasets ml-100k --protocols loo

For each dataset: preprocess → encode (MiniLM from ../shared/models) once, then for each protocol
(loo, temporal) a copy of the work dir is trained and evaluated with the exact configs printed in
the document. The peers (EASE, ALS, BPR, SASRec-CE) come from bench/peers/run.py's JSONs in --peers
(default runs/peers, files DATASET-PROTOCOL-auto.json: the same work dir's log, split, masking rule
and rank code); each is shown beside dyembed with its interval, and dyembed minus the best peer with
a paired user bootstrap over the same test events. Work dirs go to --runs (default runs/results,
git-ignored); the per-run JSON reports and rank dumps stay there.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dyembed.config import Config, apply_mapping, load_config  # noqa: E402

SHARED = Path(os.environ.get("DYEMBED_SHARED", REPO.parent / "shared"))

# Every dataset runs with the config dyembed ships for it (configs/NAME.toml, what a user gets with
# `-c NAME`); the bench adds only the shared evaluation settings below and, per protocol, the
# protocol and the masking. ml-latest-small has no config of its own: it uses the MovieLens one.
COMMON: dict[str, dict[str, Any]] = {
    "evaluate": {"ks": [10, 20], "bootstrap": 200, "seed": 0, "test_fraction": 0.2,
                 "baselines": ["pop", "recent-pop", "random", "history-mean", "static", "frozen"]},
}
SHIPPED_CONFIG = {"ml-100k": "movielens-100k", "ml-latest-small": "movielens-100k",
                  "amazon-magazine-2018": "amazon-2018"}
DATASETS: dict[str, dict[str, dict[str, Any]]] = {
    "ml-100k": {"data": {"format": "movielens-100k", "input": "data/ml-100k"}},
    "ml-latest-small": {"data": {"format": "movielens-latest", "input": "data/ml-latest-small"}},
    "amazon-magazine-2018": {"data": {"format": "amazon-2018", "input": "data/amazon-magazine-2018"}},
}
# masking follows dyembed's one rule (dyembed/masking.py, evaluate.mask_seen = "auto"): the same
# for every protocol and every model; --set evaluate.mask_seen=off shows the unmasked numbers
PROTOCOLS = ["loo", "temporal"]
COPY = ["events.parquet", "items.parquet", "users.parquet", "item_embeddings.parquet", "manifest.json",
        "encode_manifest.json", "config.toml", "rejected.parquet"]
SHOWN = ["dyembed", "frozen", "static", "history-mean", "pop", "recent-pop", "random"]


OVERRIDES: dict[str, dict[str, Any]] = {}  # --set section.key=value (printed in the document's command)


def dataset_config(name: str, protocol: str, model_dir: Path) -> tuple[Config, dict[str, dict[str, Any]]]:
    """The shipped config of the dataset, then COMMON, the dataset's data paths, the protocol, --set."""
    mapping: dict[str, dict[str, Any]] = copy.deepcopy(COMMON)
    for layer in (DATASETS[name], OVERRIDES):
        for section, values in layer.items():
            mapping.setdefault(section, {}).update(copy.deepcopy(values))
    mapping["data"]["input"] = str(SHARED / mapping["data"]["input"])
    mapping.setdefault("encode", {})["encoder"] = f"hf:{model_dir}"
    mapping["evaluate"]["protocol"] = protocol
    # ml-latest-small keeps the MovieLens template (title, genres): its user tags are dated, a third
    # of them after the temporal cut, so the format's default text (which adds them) would leak
    cfg = load_config(SHIPPED_CONFIG[name])
    cfg = apply_mapping(cfg, mapping, f"bench/results.py:{name}")
    return cfg, mapping


def run_one(name: str, protocols: list[str], runs: Path, model_dir: Path, log) -> None:
    """preprocess + encode once, then train + evaluate per protocol; everything lands in runs/NAME/."""
    from dyembed.encode.run import encode
    from dyembed.evaluate.run import evaluate
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.train import train

    base = runs / name / "base"
    timings: dict[str, Any] = {"train_seconds": {}, "evaluate_seconds": {}}
    cfg, _ = dataset_config(name, protocols[0], model_dir)
    t0 = time.perf_counter()
    preprocess(base, cfg)
    timings["preprocess_seconds"] = time.perf_counter() - t0
    log(f"{name}: preprocessed in {timings['preprocess_seconds']:.1f} s")
    t0 = time.perf_counter()
    encode(base, cfg)
    timings["encode_seconds"] = time.perf_counter() - t0
    log(f"{name}: encoded in {timings['encode_seconds']:.1f} s")
    for protocol in protocols:
        cfg, _ = dataset_config(name, protocol, model_dir)
        work = runs / name / protocol
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        for f in COPY:
            if (base / f).exists():
                shutil.copy2(base / f, work / f)
        t0 = time.perf_counter()
        train(work, cfg)
        timings["train_seconds"][protocol] = time.perf_counter() - t0
        log(f"{name}/{protocol}: trained in {timings['train_seconds'][protocol]:.1f} s")
        t0 = time.perf_counter()
        evaluate(work, cfg, json_path=work / "metrics.json", plot=work / "eval.png", dump_ranks=work / "ranks.parquet")
        timings["evaluate_seconds"][protocol] = time.perf_counter() - t0
        log(f"{name}/{protocol}: evaluated in {timings['evaluate_seconds'][protocol]:.1f} s")
    (runs / name / "timings.json").write_text(json.dumps(timings, indent=2))


CONFIG_SECTIONS = ("data", "encode", "model", "train", "evaluate", "runtime")


def config_sections(toml_text: str) -> str:
    """The sections of a resolved config.toml that shape these numbers (drops e.g. [synth])."""
    keep, out = False, []
    for line in toml_text.splitlines():
        if line.startswith("["):
            keep = line.strip("[] ") in CONFIG_SECTIONS
        if keep:
            out.append(line)
    return "\n".join(out)


PEER_NAMES = {"ease": "EASE", "als": "ALS", "bpr": "BPR", "sasrec": "SASRec-CE"}


def peers_of(peers_dir: Path, name: str, protocol: str, work: Path) -> dict[str, Any] | None:
    """The peers' JSON of this dataset × protocol (masking by the rule), paired with dyembed's test ranks.

    Pairing is by test row: the JSON's rows must be the rows whose ranks `evaluate` dumped (same
    log, same split); anything else is refused rather than compared."""
    import numpy as np
    import pyarrow.parquet as pq

    from dyembed.evaluate.metrics import paired_difference

    path = peers_dir / f"{name}-{protocol}-auto.json"
    if not path.is_file() or not (work / "ranks.parquet").is_file():
        return None
    report = json.loads(path.read_text())
    dump = pq.read_table(work / "ranks.parquet", filters=[("model", "=", "dyembed")]).to_pandas()
    events = pq.read_table(work / "events.parquet", columns=["user_idx", "ts"]).to_pandas()
    out: dict[str, Any] = {"path": str(path), "peers": {}, "load": report.get("load"), "error": None}
    for peer, rec in report["peers"].items():
        if peer not in PEER_NAMES:
            continue
        rows = np.asarray(rec["test_ranks"]["rows"], dtype=np.int64)
        if rows.size != len(dump) or not np.array_equal(events.ts.to_numpy()[rows], dump.ts.to_numpy()):
            out["error"] = f"{path.name}: its test rows are not the rows dyembed ranked (another log or split)"
            return out
        users = events.user_idx.to_numpy()[rows]
        paired = paired_difference(dump["rank"].to_numpy(), np.asarray(rec["test_ranks"]["ranks"]), users, 10,
                                   bootstrap=1000, seed=0)
        out["peers"][peer] = {"record": rec, "paired": paired}
    return out


def collect(runs: Path, name: str, protocols: list[str], peers_dir: Path | None = None) -> dict[str, Any]:
    """Everything the document shows, read back from the run's artefacts."""
    base = runs / name / "base"
    if not (base / "manifest.json").is_file():
        return {"error": f"no run in {runs / name}"}
    manifest = json.loads((base / "manifest.json").read_text())
    enc = json.loads((base / "encode_manifest.json").read_text()).get("summary", {})
    timings_path = runs / name / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    out: dict[str, Any] = {"counts": manifest.get("counts", {}), "encode": enc, "timings": timings, "protocols": {}}
    for protocol in protocols:
        work = runs / name / protocol
        if not (work / "metrics.json").is_file():
            continue
        state = json.loads((work / "state" / "manifest.json").read_text())
        out["protocols"][protocol] = {
            "report": json.loads((work / "metrics.json").read_text()),
            "train": state.get("train", {}),
            "train_seconds": timings.get("train_seconds", {}).get(protocol, state.get("train", {}).get("train_seconds")),
            # the resolved config the state was trained with (what produced these numbers)
            "config": config_sections((work / "state" / "config.toml").read_text()),
            "peers": peers_of(peers_dir, name, protocol, work) if peers_dir else None,
        }
    return out


# --------------------------------------------------------------------------- the document


def _cell(res: dict[str, Any], metric: str, ci: bool = False) -> str:
    v = res["per_event"].get(metric)
    if v is None:
        return "–"
    if ci:
        lo, hi = res["ci95_per_event"][metric]
        return f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
    return f"{v:.4f}"


def _lift(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.0f}%"


def model_table(report: dict[str, Any]) -> list[str]:
    rows = ["| model | Recall@10 | NDCG@10 (95 % CI over users) | MRR@10 | Recall@20 | NDCG@20 | MRR | "
            "cov@10 | pop%@10 | NDCG@10 vs static | NDCG@10 vs pop | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    models = report["models"]
    for name in [m for m in SHOWN if m in models]:
        r = models[name]
        label = f"**{name}**" if name == "dyembed" else name
        rows.append(f"| {label} | {_cell(r, 'recall@10')} | {_cell(r, 'ndcg@10', True)} | {_cell(r, 'mrr@10')} | "
                    f"{_cell(r, 'recall@20')} | {_cell(r, 'ndcg@20')} | {_cell(r, 'mrr')} | "
                    f"{r['coverage']['@10']:.3f} | {r['pop_percentile']['@10']:.1f} | "
                    f"{_lift(r['lift']['static']['ndcg@10'])} | {_lift(r['lift']['pop']['ndcg@10'])} | {r['seconds']:.1f} |")
    return rows


def _verdict(paired: dict[str, float]) -> str:
    if paired["lo"] > 0:
        return "win"
    return "loss" if paired["hi"] < 0 else "tie"


def best_peer(peers: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """The peer with the highest test NDCG@10 (the bar dyembed must clear: the strictest choice)."""
    if not peers or peers.get("error") or not peers["peers"]:
        return None
    name = max(peers["peers"], key=lambda p: peers["peers"][p]["record"]["test"]["per_event"]["ndcg@10"])
    return name, peers["peers"][name]


def peer_table(peers: dict[str, Any] | None) -> list[str]:
    if peers is None:
        return ["Peers: not measured for this dataset and protocol (no `bench/peers/run.py` JSON)."]
    if peers.get("error"):
        return [f"Peers: not compared — {peers['error']}."]
    rows = ["Peers on the same split, masking and rank code (`bench/peers/run.py`, tuned on validation, "
            f"test once; `{Path(peers['path']).name}`). dyembed − peer: per-event NDCG@10 difference on the "
            "same test events, 95 % paired user bootstrap (1,000 rounds); an interval containing 0 is a tie.", "",
            "| peer | chosen on validation | validation NDCG@10 | test NDCG@10 (95 % CI) | Recall@10 | "
            "dyembed − peer (95 % CI) | verdict | train s | tuning s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for peer, entry in peers["peers"].items():
        rec, d = entry["record"], entry["paired"]
        test = rec["test"]
        lo, hi = test["ci95_per_event"]["ndcg@10"]
        rows.append(f"| {PEER_NAMES[peer]} | `{json.dumps(rec['chosen'])}` | {rec['validation_ndcg@10']:.4f} | "
                    f"{test['per_event']['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}] | {test['per_event']['recall@10']:.4f} | "
                    f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] | {_verdict(d)} | "
                    f"{rec['train_seconds']:.0f} | {rec['tuning_seconds']:.0f} |")
    return rows


def summary_table(results: dict[str, Any]) -> list[str]:
    """One line per dataset × protocol: dyembed against the best baseline, NDCG@10 with 95 % CI."""
    rows = ["## Summary (NDCG@10, per event, 95 % CI over users)", "",
            "| dataset | protocol | masked | dyembed | best baseline | best peer | dyembed / peer | "
            "dyembed − peer (95 % paired CI) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for protocol, pr in res.get("protocols", {}).items():
            models = pr["report"]["models"]
            base = {m: r for m, r in models.items() if m != "dyembed" and r["per_event"]["ndcg@10"] is not None}
            if "dyembed" not in models or not base:
                continue
            best = max(base, key=lambda m: base[m]["per_event"]["ndcg@10"])
            masked = "yes" if pr["report"]["masking"]["seen_masked"] else "no"
            top = best_peer(pr.get("peers"))
            if top is None:
                peer_cells = "– | – | – | –"
            else:
                peer, entry = top
                test, d = entry["record"]["test"], entry["paired"]
                lo, hi = test["ci95_per_event"]["ndcg@10"]
                ratio = d["a"] / d["b"] if d["b"] else float("nan")
                peer_cells = (f"{PEER_NAMES[peer]} {test['per_event']['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}] | "
                              f"{ratio:.2f}× | {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] | {_verdict(d)}")
            rows.append(f"| {name} | {protocol} | {masked} | {_cell(models['dyembed'], 'ndcg@10', True)} | "
                        f"{best} {_cell(base[best], 'ndcg@10', True)} | {peer_cells} |")
    return rows + [""]


def render(results: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    import numpy as np
    import tensorflow as tf

    out = [
        "# Results: dyembed vs baselines on the reference datasets",
        "",
        f"Generated on this machine ({os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}, TensorFlow {tf.__version__}, numpy {np.__version__}) by the commands "
        "below; do not edit by hand: rerun them (`--render-only` rewrites the document from the runs on disk).",
        "",
        *[f"- {name}: `{r['command']}` on {r['started']}, {r['seconds'] / 60:.1f} min, load average "
          f"{r.get('load', '?')} at the start" for name, r in runs.items()],
        "",
        "Metric definitions, protocols, tie handling (pessimistic) and baselines: [metrics.md](metrics.md). "
        "All numbers are full-ranking (every item of the catalogue is a candidate), per-event averages; "
        "95 % intervals are a bootstrap over users. `pop%@10` is the mean popularity percentile of the "
        "top-10 (50 = neutral). Lifts are relative to the per-event NDCG@10 of `static` and `pop`. "
        "Wall times were taken on a 2-core machine shared with other jobs: read them as upper bounds.",
        "",
        "Each dataset runs with the config dyembed ships for it (" + ", ".join(
            f"{n}: `configs/{c}.toml`" for n, c in SHIPPED_CONFIG.items()) + "); the bench sets only the "
        "protocol and the evaluation settings (masking follows the one rule of [metrics.md](metrics.md): seen items masked iff the history barely repeats). The exact "
        "resolved config of every run is under its table.",
        "",
    ]
    out += summary_table(results)
    for name, res in results.items():
        out += [f"## {name}", ""]
        if "error" in res:
            out += [f"Not measured: `{res['error']}`", ""]
            continue
        counts, enc, tm = res["counts"], res["encode"], res["timings"]
        pre_s = f"{tm['preprocess_seconds']:.1f} s" if "preprocess_seconds" in tm else "–"
        enc_s = tm.get("encode_seconds", enc.get("seconds"))
        out += [f"Preprocess {pre_s}: {counts.get('events_out')} events kept of {counts.get('rows_in')} rows, "
                f"{counts.get('users')} users, {counts.get('items')} items. Encode "
                f"{'–' if enc_s is None else f'{enc_s:.1f} s'} ({enc.get('items_encoded', '?')} distinct item texts, "
                f"{enc.get('encoder', '?')}).", ""]
        for protocol, pr in res["protocols"].items():
            rep = pr["report"]
            c = rep["counts"]
            head = (f"### {name} · {protocol} · seen items masked: {'yes' if rep['masking']['seen_masked'] else 'no'}")
            out += [head, ""]
            extra = (f"{c['skipped_users']} users skipped (< 3 events)" if protocol == "loo"
                     else f"cut {dt.datetime.fromtimestamp(rep['split']['cut_ts'], dt.timezone.utc):%Y-%m-%d} "
                          f"(last {rep['split']['test_fraction']:.0%} of events)")
            tr = pr["train"]
            out += [f"{c['test_events']:,} test events of {c['test_users']:,} users, {c['items']:,} items; {extra}. "
                    f"Train {pr['train_seconds'] or 0:.0f} s ({tr.get('epochs_run', '?')} epochs, best {tr.get('best_epoch', '?')}, "
                    f"validation {tr.get('val_metric') or '–'} {tr.get('best_val') if tr.get('best_val') is not None else '–'}), "
                    f"evaluate {rep['seconds']:.0f} s.", ""]
            out += model_table(rep) + [""]
            out += peer_table(pr.get("peers")) + [""]
            out += ["<details><summary>exact config (state/config.toml of this run)</summary>", "", "```toml",
                    pr["config"].strip(), "```", "", "</details>", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "results")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "results.md")
    ap.add_argument("--peers", type=Path, default=REPO / "runs" / "peers",
                    help="folder of bench/peers/run.py JSONs (DATASET-PROTOCOL-auto.json)")
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config key for every dataset (e.g. train.epochs=2 for a smoke run)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the document from the runs already on disk")
    args = ap.parse_args(argv)
    from dyembed.config import parse_set_value

    for item in args.set:
        key, _, raw = item.partition("=")
        section, _, name = key.strip().partition(".")
        OVERRIDES.setdefault(section, {})[name] = parse_set_value(raw.strip())
    names = [n for n in args.datasets.split(",") if n]
    protocols = [p for p in args.protocols.split(",") if p]
    for n in names:
        if n not in DATASETS:
            ap.error(f"unknown dataset {n}")
    args.runs.mkdir(parents=True, exist_ok=True)
    info_path = args.runs / "run_info.json"
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - a bench program may print
    # one record per dataset (command, start, minutes, load, failure), so datasets run by separate
    # invocations into the same --runs folder render into one document that names every command
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info = info if "runs" in info else {"runs": {}}
    if not args.render_only:
        command = "python bench/results.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
        for name in names:
            started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            record: dict[str, Any] = {"command": command, "started": started, "load": round(load, 1)}
            try:
                run_one(name, protocols, args.runs, args.model, log)
            except Exception as exc:  # noqa: BLE001 - record the failure in the document and go on
                log(f"{name}: FAILED {type(exc).__name__}: {exc}")
                record["failure"] = f"{type(exc).__name__}: {exc}"
            record["seconds"] = time.perf_counter() - t0
            # re-read first: another invocation may have finished a dataset meanwhile
            latest = json.loads(info_path.read_text()) if info_path.is_file() else {}
            info = latest if "runs" in latest else {"runs": {}}
            info["runs"][name] = record
            info_path.write_text(json.dumps(info, indent=2))
    shown = [n for n in names if n in info["runs"]] if args.render_only else names
    results = {name: ({"error": info["runs"][name]["failure"]} if "failure" in info["runs"].get(name, {})
                      else collect(args.runs, name, protocols, args.peers)) for name in shown}
    text = render(results, {n: info["runs"][n] for n in shown if n in info["runs"]})
    from dyembed.artefacts import write_text

    write_text(args.doc, text)
    log(f"wrote {args.doc}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
