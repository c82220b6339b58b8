"""Every relative link in the docs points at a file of the repo (docs/model.md once named a file
outside it)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    dead = []
    for doc in [REPO / "README.md", REPO / "data" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # code is not prose
        text = re.sub(r"`[^`]*`", "", text)
        for target in LINK.findall(text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            if not (doc.parent / path).exists():
                dead.append(f"{doc.relative_to(REPO)} → {target}")
    assert dead == []


def test_no_bare_reference_to_files_outside_the_repo():
    text = (REPO / "docs" / "model.md").read_text(encoding="utf-8")
    assert "(PEERS.md" not in text
