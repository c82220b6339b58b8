"""Peers on dyembed's own split: tune on validation, report the test once, write JSON, print a table.

    python bench/peers/run.py --workdir /work/wd/ml-100k --protocol loo --out runs/peers/ml-100k-loo.json
    python bench/peers/run.py --workdir /work/wd/amazon --protocol temporal --peers ease,als,bpr,sasrec \\
        --mask-seen auto,off --out 'runs/peers/amazon-temporal-{mask}.json' --time-budget 900

Evaluation settings are dyembed's defaults (the work dir's config.toml is not read): test_fraction
0.2, train.validation_fraction 0.1, ks [10, 20], bootstrap 200 (user resampling), seed 0,
mask_seen from --mask-seen (auto = dyembed's one rule; several settings comma-separated share the
training: every grid point is scored on validation under each setting, and each setting gets its
own choice and test). With several settings, --out must contain '{mask}'.

Peers: pop (dyembed's PopScorer, the harness check), ease, als, bpr (need `pip install -e '.[peers]'`),
sasrec (TensorFlow). --time-budget S caps each training run (grid point) of the iterative peers
(SASRec stops between epochs and keeps its best checkpoint); 0 = no cap.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.peers.harness import PopPeer, World, machine_load, run_peer  # noqa: E402
from dyembed.config import EvaluateConfig  # noqa: E402
from dyembed.masking import SETTINGS  # noqa: E402

PEERS = ["pop", "ease", "als", "bpr", "sasrec"]
SCHEMA = "dyembed-peers/1"
SHOWN = ["ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr"]


def make_peer(name: str, seed: int, args):
    grid = args.grids.get(name, {})
    if name == "pop":
        return PopPeer()
    if name == "ease":
        from bench.peers.ease import EasePeer

        return EasePeer(grid.get("lambda"))
    if name == "als":
        from bench.peers.implicit_peers import ALS_GRID, AlsPeer

        return AlsPeer({**ALS_GRID, **grid}, seed=seed)
    if name == "bpr":
        from bench.peers.implicit_peers import BPR_GRID, BprPeer

        return BprPeer({**BPR_GRID, **grid}, seed=seed)
    if name == "sasrec":
        from bench.peers.sasrec import SasrecPeer

        return SasrecPeer({"dropout": args.sasrec_dropout, "learning_rate": args.sasrec_lr}, seed=seed,
                          max_epochs=args.sasrec_epochs, maxlen=args.sasrec_maxlen)
    raise SystemExit(f"error: unknown peer {name!r} (choices: {', '.join(PEERS)})")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_grid(text: str) -> tuple[str, dict[str, list]]:
    """'als:factors=64,128/regularization=1,10' → ("als", {"factors": [64, 128], "regularization": [1, 10]})."""
    peer, _, body = text.partition(":")
    if not body:
        raise argparse.ArgumentTypeError(f"--grid wants PEER:key=v1,v2/key=v1,…; got {text!r}")
    spec = {}
    for part in body.split("/"):
        key, _, values = part.partition("=")
        try:
            spec[key.strip()] = [number(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"--grid {text!r}: values of {key!r} must be numbers") from None
        if not spec[key.strip()]:
            raise argparse.ArgumentTypeError(f"--grid {text!r}: no values for {key!r}")
    return peer.strip(), spec


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--workdir", required=True, type=Path, help="a prepared dyembed work dir (events/items/users.parquet)")
    ap.add_argument("--protocol", required=True, choices=["loo", "temporal"])
    ap.add_argument("--out", required=True, help="JSON path; with several --mask-seen settings it must contain {mask}")
    ap.add_argument("--peers", default="pop,ease,als,bpr,sasrec", help="comma-separated, from: " + ", ".join(PEERS))
    ap.add_argument("--mask-seen", default="auto", help="auto|on|off, or several comma-separated")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds per training run of an iterative peer (0 = none)")
    ap.add_argument("--sasrec-epochs", type=int, default=200, help="SASRec epoch cap per training run")
    ap.add_argument("--sasrec-maxlen", type=int, default=50, help="SASRec sequence length (200 on ml-latest-small)")
    ap.add_argument("--sasrec-dropout", type=floats, default=[0.2, 0.5], help="SASRec grid: dropout rates")
    ap.add_argument("--sasrec-lr", type=floats, default=[1e-3, 3e-3], help="SASRec grid: Adam learning rates")
    ap.add_argument("--grid", type=parse_grid, action="append", default=[], metavar="PEER:KEY=V,V/KEY=V",
                    help="replace grid values of ease (lambda), als or bpr, e.g. 'als:factors=64,128/alpha=10'")
    ap.add_argument("--update", action="store_true",
                    help="add these peers to an existing --out JSON of the same work dir, protocol and masking")
    ap.add_argument("--dataset", default=None, help="name in the JSON and table (default: the work dir's name)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--validation-fraction", type=float, default=0.1)
    args = ap.parse_args(argv)
    args.peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.grids = {}
    for peer, spec in args.grid:
        if peer not in ("ease", "als", "bpr"):
            ap.error(f"--grid: peer must be ease, als or bpr (SASRec: --sasrec-dropout / --sasrec-lr); got {peer!r}")
        args.grids.setdefault(peer, {}).update(spec)
    args.masks = [m.strip() for m in args.mask_seen.split(",") if m.strip()]
    for m in args.masks:
        if m not in SETTINGS:
            ap.error(f"--mask-seen must be among {', '.join(SETTINGS)}; got {m!r}")
    for p in args.peer_names:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (choices: {', '.join(PEERS)})")
    if len(args.masks) > 1 and "{mask}" not in args.out:
        ap.error("with several --mask-seen settings, --out must contain '{mask}'")
    if not (args.workdir / "events.parquet").is_file():
        ap.error(f"{args.workdir} is not a prepared work dir (no events.parquet)")
    return args


def fmt_metric(test: dict, name: str) -> str:
    value = test["per_event"][name]
    lo, hi = test["ci95_per_event"][name]
    return f"{value:.4f} [{lo:.4f}, {hi:.4f}]"


def print_table(report: dict) -> None:
    print(f"\n{report['dataset']} · {report['protocol']} · mask_seen={report['evaluate']['mask_seen']} "
          f"(test: {report['masking_test']['reason']}; masked: {'yes' if report['masking_test']['seen_masked'] else 'no'})")
    header = ["peer", *SHOWN, "chosen", "train s", "tuning s"]
    rows = []
    for name, rec in report["peers"].items():
        rows.append([name, *(fmt_metric(rec["test"], m) for m in SHOWN), json.dumps(rec["chosen"]),
                     f"{rec['train_seconds']:.1f}", f"{rec['tuning_seconds']:.1f}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    ev = EvaluateConfig(protocol=args.protocol, test_fraction=args.test_fraction, ks=[10, 20],
                        mask_seen=args.masks[0], bootstrap=args.bootstrap, seed=args.seed)
    world = World(args.workdir, ev, args.validation_fraction)
    dataset = args.dataset or args.workdir.name
    load_start = machine_load()
    print(f"{dataset} · {args.protocol}: {world.counts()}", flush=True)
    by_mask = {m: {} for m in args.masks}
    for name in args.peer_names:
        peer = make_peer(name, args.seed, args)
        print(f"{name}: tuning on validation ({len(peer.grid(world))} grid points)", flush=True)
        records = run_peer(peer, world, args.masks, time_budget=args.time_budget, say=lambda s: print(s, flush=True))
        for m, rec in records.items():
            rec["time_budget"] = args.time_budget
            by_mask[m][name] = rec
            print(f"  → {m}: chosen {rec['chosen']}, test ndcg@10 {rec['test']['per_event']['ndcg@10']:.4f} "
                  f"(refit {rec['train_seconds']:.1f} s)", flush=True)
    command = "python bench/peers/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for m, peers in by_mask.items():
        out = Path(args.out.replace("{mask}", m))
        first = next(iter(peers.values()))
        commands = [command]
        if args.update and out.is_file():
            old = json.loads(out.read_text())
            if (old["workdir"], old["protocol"], old["evaluate"]["mask_seen"]) != (str(args.workdir), args.protocol, m):
                raise SystemExit(f"error: {out} holds another run (work dir, protocol or masking differ); not updated")
            peers = {**{k: v for k, v in old["peers"].items() if k not in peers}, **peers}
            commands = [c for c in old.get("commands", [old.get("command")]) if c] + commands
        report = {
            "schema": SCHEMA,
            "dataset": dataset,
            "workdir": str(args.workdir),
            "protocol": args.protocol,
            "split": world.split_info,
            "counts": world.counts(),
            "evaluate": {"protocol": args.protocol, "test_fraction": args.test_fraction,
                         "validation_fraction": args.validation_fraction, "ks": [10, 20], "mask_seen": m,
                         "repeat_threshold": ev.repeat_threshold, "bootstrap": args.bootstrap, "seed": args.seed,
                         "validation_metric": "ndcg@10 per event"},
            "masking_validation": first["masking"]["validation"],
            "masking_test": first["masking"]["test"],
            "peers": peers,
            "commands": commands,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "load_start": load_start, "load_end": machine_load()},
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out)
        print_table(report)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
