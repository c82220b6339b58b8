"""Benchmark `dyembed encode` (TensorFlow) against sentence-transformers (torch) on the same texts.

Workloads: the 1,682 ml-100k titles (u.item, latin-1) and N synthetic ~60-word descriptions
(default 20,000; seeded, topic words + filler words, 50–70 words each).

dyembed runs `HFEncoder` exactly as `dyembed encode` does (length-sorted batches padded to a
multiple of 8, one compiled forward). sentence-transformers runs in this process when it is
importable, else in the interpreter given by --st-python (a separate virtualenv with torch; this
file's `--half st` mode needs only numpy + sentence-transformers), in the same run. The two
encoders alternate block by block (--block texts each), so both see the machine in the same
state; each block is preceded by a warm-up on its first 256 texts (not timed).

Reported per workload: items/s (wall clock), items per CPU-second (user + system time of the
encoding process: less disturbed when other jobs share the machine), dyembed's achieved matmul
GFLOP/s, the ratios dyembed / sentence-transformers, and the per-item cosine between the two
encoders' vectors (the reference check: min cosine ≥ 0.9999) with the largest absolute deviation.

    /work/venv/bin/python bench/bench_encode.py                      # both halves, defaults
    /work/venv/bin/python bench/bench_encode.py --n-synth 2000       # quicker
    /work/venv/bin/python bench/bench_encode.py --half dyembed       # TF half only
    /work/venv-st/bin/python bench/bench_encode.py ...               # a venv with both: one process
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DYEMBED_SHARED", ROOT.parent / "shared"))
DEFAULT_MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
ML100K_ITEMS = SHARED / "data" / "ml-100k" / "u.item"
DEFAULT_ST_PYTHON = Path("/work/venv-st/bin/python")
WARMUP = 256


# --------------------------------------------------------------------------- workloads


def ml100k_titles(path: Path = ML100K_ITEMS) -> list[str]:
    with open(path, encoding="latin-1") as fh:
        return [line.split("|")[1] for line in fh if line.strip()]


def synthetic_descriptions(n: int, seed: int = 0) -> list[str]:
    """n descriptions of 50–70 words (mean 60): 60 % topic words, 40 % filler, split into sentences."""
    from dyembed.synth import FILLER, TOPIC_WORDS

    rng = np.random.default_rng(seed)
    topics = list(TOPIC_WORDS)
    texts = []
    for _ in range(n):
        words = TOPIC_WORDS[topics[rng.integers(len(topics))]]
        body = [words[rng.integers(len(words))] if rng.random() < 0.6 else FILLER[rng.integers(len(FILLER))]
                for _ in range(int(rng.integers(50, 71)))]
        sentences = [" ".join(body[i:i + 12]).capitalize() + "." for i in range(0, len(body), 12)]
        texts.append(" ".join(sentences))
    return texts


def cpu_seconds() -> float:
    """User + system CPU time of this process: a figure that other jobs on the machine disturb less."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- halves


def dyembed_load(args):
    from dyembed.encode.hf import HFEncoder

    started = time.perf_counter()
    encoder = HFEncoder(str(args.model), batch_size=args.batch_size, max_length=args.max_length,
                        jit_compile=args.jit, threads=args.threads)
    encoder.encode(["load the model"])  # builds the TF model (done lazily by dyembed)
    return encoder, time.perf_counter() - started


def dyembed_run(encoder, name: str, texts: list[str], out: Path) -> dict:
    from dyembed.encode.hf import plan_batches

    cfg = encoder.config
    d, layers, ffn = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    t0 = time.perf_counter()
    encoder.encode(texts[:WARMUP])
    warmup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu_seconds()
    vectors = encoder.encode(texts)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    np.save(out / f"dyembed-{name}.npy", vectors)
    lengths = [len(x) for x in encoder.tokenize(texts)]
    batches = plan_batches(lengths, encoder.batch_size, encoder.max_length)
    padded = sum(len(idx) * width for idx, width in batches)
    # matmul FLOPs of one forward: per token 2·layers·(4d² + 2d·ffn), attention 4·layers·L·d per token
    flops = sum((2 * layers * (4 * d * d + 2 * d * ffn) + 4 * layers * w * d) * w * len(idx) for idx, w in batches)
    return {"items": len(texts), "warmup_seconds": warmup, "seconds": seconds, "cpu_seconds": cpu,
            "tokens": sum(lengths), "padded_tokens": padded, "flops": flops}


def combine(parts: list[dict]) -> dict:
    """Sum the blocks of one workload; rates are totals over totals."""
    total = {k: sum(p[k] for p in parts) for k in ("items", "seconds", "cpu_seconds", "warmup_seconds")}
    for k in ("tokens", "padded_tokens", "flops"):
        if k in parts[0]:
            total[k] = sum(p[k] for p in parts)
    total["items_per_second"] = total["items"] / total["seconds"]
    total["items_per_cpu_second"] = total["items"] / total["cpu_seconds"]
    return total


_ST_MODEL: dict = {}


def st_run(args, name: str, texts: list[str], out: Path) -> dict:
    """sentence-transformers on one workload (model loaded once per process)."""
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    if "model" not in _ST_MODEL:
        started = time.perf_counter()
        model = SentenceTransformer(str(args.model), device="cpu")
        model.max_seq_length = args.st_max_length or args.max_length
        _ST_MODEL.update(model=model, load_seconds=time.perf_counter() - started)
    model = _ST_MODEL["model"]
    t0 = time.perf_counter()
    model.encode(texts[:WARMUP], batch_size=args.batch_size)
    warmup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu_seconds()
    vectors = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    np.save(out / f"st-{name}.npy", vectors.astype(np.float32))
    return {"items": len(texts), "warmup_seconds": warmup, "seconds": seconds, "cpu_seconds": cpu,
            "load_seconds": _ST_MODEL["load_seconds"], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "sentence_transformers": sentence_transformers.__version__, "max_length": model.max_seq_length,
            "peak_rss_mb": peak_rss_mb()}


def st_importable() -> bool:
    try:
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def matmul_gflops() -> float:
    """The machine's float32 matmul rate (numpy/BLAS, all cores), best of 3."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(5):
            a @ a
        best = max(best, 5 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9)
    return best


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--n-synth", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block", type=int, default=2000, help="texts per alternation between the two encoders")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="0: the library's default (all cores)")
    parser.add_argument("--jit", action="store_true", help="XLA-compile one forward per bucket shape")
    parser.add_argument("--half", choices=["all", "dyembed", "st"], default="all", help="st: internal child mode")
    parser.add_argument("--st-python", type=Path, default=DEFAULT_ST_PYTHON)
    parser.add_argument("--st-max-length", type=int, default=None, help="(internal) the length dyembed used")
    parser.add_argument("--only", default=None, help="(internal) the workload a --half st child runs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dyembed-bench-encode"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.half == "st":  # child mode: one workload, texts from the driver's file
        texts = json.loads((args.out / "texts.json").read_text(encoding="utf-8"))[args.only]
        result = st_run(args, args.only, texts, args.out)
        (args.out / f"st-{args.only}.json").write_text(json.dumps(result, indent=2))
        return 0

    workloads = {"ml100k-titles": ml100k_titles(), f"synth-{args.n_synth}-60w": synthetic_descriptions(args.n_synth)}
    print(f"machine: {os.cpu_count()} cpus, float32 matmul {matmul_gflops():.0f} GFLOP/s (numpy), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    encoder, load_seconds = dyembed_load(args)
    print(f"dyembed (TF): load {load_seconds:.1f}s, max_length {encoder.max_length}, batch {encoder.batch_size}, "
          f"jit_compile {encoder.jit_compile}", flush=True)
    args.st_max_length = encoder.max_length
    how = None
    if args.half == "all":
        if st_importable():
            how = "in this process"
        elif args.st_python.is_file():
            how = f"in {args.st_python} (separate virtualenv, same run)"
        else:
            print("sentence-transformers not importable and no --st-python: TF half only")

    summary = {"dyembed": {"load_seconds": load_seconds, "max_length": encoder.max_length, "workloads": {}},
               "sentence_transformers": {}, "comparison": {}, "load_average_start": os.getloadavg()}
    # the two encoders alternate block by block (--block texts), so both see the machine in the same state
    blocks = {name: [(f"{name}.{k}", texts[i:i + args.block]) for k, i in enumerate(range(0, len(texts), args.block))]
              for name, texts in workloads.items()}
    (args.out / "texts.json").write_text(json.dumps({b: t for parts in blocks.values() for b, t in parts}))
    for name, parts in blocks.items():
        mine, theirs = [], []
        for block, texts in parts:
            mine.append(dyembed_run(encoder, block, texts, args.out))
            if how == "in this process":
                theirs.append(st_run(args, block, texts, args.out))
            elif how:
                cmd = [str(args.st_python), __file__, "--half", "st", "--only", block, "--out", str(args.out),
                       "--model", str(args.model), "--batch-size", str(args.batch_size),
                       "--st-max-length", str(encoder.max_length), "--threads", str(args.threads)]
                subprocess.run(cmd, check=True)
                theirs.append(json.loads((args.out / f"st-{block}.json").read_text()))
            print(f"  {block}: dyembed {len(texts) / mine[-1]['seconds']:.1f} items/s"
                  + (f", sentence-transformers {len(texts) / theirs[-1]['seconds']:.1f} items/s" if theirs else "")
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
        summary["dyembed"]["workloads"][name] = combine(mine)
        np.save(args.out / f"dyembed-{name}.npy", np.concatenate([np.load(args.out / f"dyembed-{b}.npy") for b, _ in parts]))
        if theirs:
            summary["sentence_transformers"][name] = {**theirs[0], **combine(theirs)}
            np.save(args.out / f"st-{name}.npy", np.concatenate([np.load(args.out / f"st-{b}.npy") for b, _ in parts]))
    summary["dyembed"]["peak_rss_mb"] = peak_rss_mb()
    summary["load_average_end"] = os.getloadavg()

    theirs = summary["sentence_transformers"]
    if theirs:
        first = next(iter(theirs.values()))
        print(f"sentence-transformers {first['sentence_transformers']} / torch {first['torch']} ({how}), "
              f"{first['threads']} threads, max_seq_length {first['max_length']}: load {first['load_seconds']:.1f}s, "
              f"peak RSS {max(t['peak_rss_mb'] for t in theirs.values()):.0f} MB")
    print(f"dyembed peak RSS {summary['dyembed']['peak_rss_mb']:.0f} MB")
    print(f"{'workload':<20} {'items':>6} {'tokens':>6} {'pad':>4} {'dyembed/s':>9} {'/cpu-s':>7} {'GFLOP/s':>7}"
          f" {'st/s':>6} {'/cpu-s':>7} {'ratio':>6} {'cpu ratio':>9} {'min cos':>10} {'max |d|':>8}")
    for name in workloads:
        w = summary["dyembed"]["workloads"][name]
        row = (f"{name:<20} {w['items']:>6} {w['tokens'] / w['items']:>6.1f} {1 - w['tokens'] / w['padded_tokens']:>4.0%}"
               f" {w['items_per_second']:>9.1f} {w['items_per_cpu_second']:>7.1f} {w['flops'] / w['seconds'] / 1e9:>7.1f}")
        if name in theirs:
            t = theirs[name]
            a, b = np.load(args.out / f"dyembed-{name}.npy"), np.load(args.out / f"st-{name}.npy")
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            ratio, cpu_ratio = w["items_per_second"] / t["items_per_second"], w["items_per_cpu_second"] / t["items_per_cpu_second"]
            summary["comparison"][name] = {"ratio": ratio, "cpu_ratio": cpu_ratio, "min_cosine": float(cos.min()),
                                           "max_abs_diff": float(np.abs(a - b).max()), "worst_item": int(cos.argmin())}
            row += (f" {t['items_per_second']:>6.1f} {t['items_per_cpu_second']:>7.1f} {ratio:>6.2f} {cpu_ratio:>9.2f}"
                    f" {cos.min():>10.7f} {np.abs(a - b).max():>8.1e}")
        print(row)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"(vectors and JSON in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
