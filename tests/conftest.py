"""Shared fixtures. Tests that need ../shared (real data, the MiniLM model) skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DYEMBED_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when it is not on this machine."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (needs ../shared)")
    return path


@pytest.fixture
def synth_world(tmp_path: Path) -> Path:
    """A small synthetic drifting-interest world's raw files."""
    from dyembed.config import SynthConfig
    from dyembed.synth import generate

    out = tmp_path / "raw"
    generate(SynthConfig(users=60, items=80, events=3000, topics=6, seed=7, malformed_rows=8), out)
    return out
