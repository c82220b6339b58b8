"""A small trained work directory and a "tomorrow's log" for the update / state / crash tests.

`build_world(root)` generates a synthetic world, splits its events file by time into base.csv
(first 80 %) and new.csv (the rest, plus a few events of brand-new users), then runs preprocess →
encode (hashing encoder, no model download) → train (1 epoch, protocol none) on base.csv.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from dyembed.config import Config, SynthConfig, to_toml


def world_config(raw: Path) -> Config:
    cfg = Config()
    cfg.data.format = "synth"
    cfg.data.events = str(raw / "base.csv")
    cfg.data.items = str(raw / "items.jsonl")
    cfg.encode.encoder = "hashing"
    cfg.encode.hashing_dim = 16
    cfg.model.dim = 8
    cfg.train.epochs = 1
    cfg.train.protocol = "none"
    cfg.evaluate.bootstrap = 0
    return cfg


def split_log(raw: Path, fraction: float = 0.8, new_users: int = 3) -> None:
    with open(raw / "events.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0]) and r[2].isdigit()]
    body.sort(key=lambda r: int(r[2]))
    cut = int(len(body) * fraction)
    base, new = body[:cut], body[cut:]
    last_ts = int(new[-1][2])
    items = [r[1] for r in base[:new_users]]
    new += [[f"newuser{k}", items[k], str(last_ts + 10 + k), "click"] for k in range(new_users)]
    new += [[f"newuser{k}", items[(k + 1) % new_users], str(last_ts + 100 + k), "click"] for k in range(new_users)]
    for name, part in (("base.csv", base), ("new.csv", new)):
        with open(raw / name, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([header] + part)


def build_world(root: Path) -> tuple[Path, Path, Config]:
    """(workdir, raw dir, config) of a trained work dir under `root`."""
    from dyembed.encode.run import encode
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.train import train
    from dyembed.synth import generate

    raw, work = root / "raw", root / "work"
    generate(SynthConfig(users=30, items=40, events=1200, topics=4, seed=11, malformed_rows=0), raw)
    split_log(raw)
    cfg = world_config(raw)
    preprocess(work, cfg)
    encode(work, cfg)
    train(work, cfg)
    (root / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
    return work, raw, cfg


_BUILT: dict[str, tuple[Path, Path, Config]] = {}


def shared_world(tmp_path_factory) -> tuple[Path, Path, Config]:
    """One trained world per test session (every test copies it before changing anything)."""
    if "world" not in _BUILT:
        _BUILT["world"] = build_world(tmp_path_factory.mktemp("update_world"))
    return _BUILT["world"]


def shared_updated_world(tmp_path_factory) -> tuple[Path, Path, Config]:
    """The shared world after one `update` with new.csv (state version 2, state.prev = version 1)."""
    if "updated" not in _BUILT:
        from dyembed.update import update

        work, raw, cfg = shared_world(tmp_path_factory)
        dest = tmp_path_factory.mktemp("updated_world")
        updated = copy_world((work, raw, cfg), dest)
        update(updated, cfg, new_log=raw / "new.csv")
        _BUILT["updated"] = (updated, raw, cfg)
    return _BUILT["updated"]


def copy_world(world: tuple[Path, Path, Config], dest: Path) -> Path:
    work = dest / "work"
    shutil.copytree(world[0], work)
    return work
