"""`dyembed demo`: the whole pipeline on a synthetic drifting-interest world.

Each step is the very library function its CLI command calls, so the demo grows with them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dyembed.artefacts import write_json, write_text
from dyembed.config import Config, to_toml

log = logging.getLogger(__name__)

StepCallback = Callable[[str, dict[str, Any]], None]


def run_demo(out_dir: str | Path, cfg: Config, *, model: str | None = None, on_step: StepCallback | None = None) -> dict[str, Any]:
    """synth → preprocess → encode → train → evaluate under `out_dir`; returns every step's summary.

    `on_step(name, summary)` is called after each step (the CLI prints a line per step with it).
    Writes `out_dir/metrics.json` (the evaluation report) and `out_dir/config.toml`.
    """
    from dyembed.encode.run import encode
    from dyembed.evaluate.run import evaluate
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.train import train
    from dyembed.synth import generate

    out_dir = Path(out_dir)
    raw_dir, work_dir = out_dir / "raw", out_dir / "work"
    cfg = copy.deepcopy(cfg)
    cfg.data.format = "synth"
    cfg.data.events = str(raw_dir / "events.csv")
    cfg.data.items = str(raw_dir / "items.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.toml", to_toml(cfg))

    summaries: dict[str, Any] = {}

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        summary = fn()
        summary = dict(summary or {})
        summary.setdefault("seconds", round(time.perf_counter() - started, 3))
        summaries[name] = summary
        if on_step:
            on_step(name, summary)
        return summary

    step("synth", lambda: generate(cfg.synth, raw_dir))
    step("preprocess", lambda: preprocess(work_dir, cfg))
    step("encode", lambda: encode(work_dir, cfg, model=model))
    step("train", lambda: train(work_dir, cfg))
    report = step("evaluate", lambda: evaluate(work_dir, cfg, json_path=out_dir / "metrics.json"))
    write_json(out_dir / "demo_summary.json", summaries)
    return {"steps": summaries, "report": report, "out_dir": str(out_dir)}
