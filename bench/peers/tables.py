"""Markdown tables from the JSONs of bench/peers/run.py (the tables of docs/peers.md).

    python bench/peers/tables.py runs/peers            # every *-auto.json / *-off.json there

One table per masking setting (rows dataset · protocol, columns the peers' test NDCG@10 with the
95 % user-bootstrap interval), then per run the chosen settings, training and tuning times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ["ml-100k", "ml-latest-small", "amazon"]
PEERS = ["pop", "ease", "als", "bpr", "sasrec"]
NAMES = {"pop": "Pop", "ease": "EASE", "als": "ALS", "bpr": "BPR", "sasrec": "SASRec-CE"}


def load(folder: Path) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    key = lambda r: (ORDER.index(r["dataset"]) if r["dataset"] in ORDER else 99, r["dataset"], r["protocol"])  # noqa: E731
    return sorted(reports, key=key)


def cell(rec: dict | None, metric: str, best: bool) -> str:
    if rec is None:
        return "—"
    value = rec["test"]["per_event"][metric]
    lo, hi = rec["test"]["ci95_per_event"][metric]
    text = f"{value:.4f} [{lo:.4f}, {hi:.4f}]"
    return f"**{text}**" if best else text


def metric_table(reports: list[dict], mask: str, metric: str) -> list[str]:
    rows = [r for r in reports if r["evaluate"]["mask_seen"] == mask]
    if not rows:
        return []
    lines = [f"| dataset · protocol | masked | {' | '.join(NAMES[p] for p in PEERS)} |",
             "|---|---|" + "---|" * len(PEERS)]
    for r in rows:
        values = {p: r["peers"][p]["test"]["per_event"][metric] for p in PEERS if p in r["peers"]}
        top = max((v for p, v in values.items() if p != "pop"), default=None)
        masked = "yes" if r["masking_test"]["seen_masked"] else "no"
        cells = [cell(r["peers"].get(p), metric, p != "pop" and values.get(p) == top) for p in PEERS]
        lines.append(f"| {r['dataset']} · {r['protocol']} | {masked} | {' | '.join(cells)} |")
    return lines


def settings_table(reports: list[dict], mask: str) -> list[str]:
    lines = ["| dataset · protocol | peer | chosen on validation | validation NDCG@10 | train s | tuning s (grid points) | at a grid end (axes of 3+ values) |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        if r["evaluate"]["mask_seen"] != mask:
            continue
        for p in PEERS:
            rec = r["peers"].get(p)
            if rec is None or p == "pop":
                continue
            chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec["chosen"].items())
            extra = ""
            if p == "sasrec":
                point = next(v for v in rec["validation"] if v["setting"] == rec["chosen"])
                extra = f"; best epoch {point['best_epoch']} of {point['epochs']} ({point['stopped']})"
            # a value at the end of a grid axis of 3+ values: the optimum may lie beyond the grid
            edges = [k for k, v in rec["chosen"].items() if isinstance(rec["grid"].get(k), list)
                     and len(rec["grid"][k]) > 2 and v in (rec["grid"][k][0], rec["grid"][k][-1])]
            lines.append(f"| {r['dataset']} · {r['protocol']} | {NAMES[p]} | {chosen}{extra} | "
                         f"{rec['validation_ndcg@10']:.4f} | {rec['train_seconds']:.1f} | "
                         f"{rec['tuning_seconds']:.0f} ({len(rec['validation'])}) | {', '.join(edges) or '—'} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    reports = load(args.folder)
    for mask, title in (("auto", "Seen items masked by dyembed's rule (mask_seen = auto)"),
                        ("off", "Not masked (mask_seen = off)")):
        for metric in ("ndcg@10", "recall@10"):
            lines = metric_table(reports, mask, metric)
            if lines:
                print(f"### {title}: test {metric.upper().replace('NDCG', 'NDCG').replace('RECALL', 'Recall')}\n")
                print("\n".join(lines) + "\n")
        lines = settings_table(reports, mask)
        if len(lines) > 2:
            print(f"### Chosen settings and times ({title.split(' (')[0].lower()})\n")
            print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
