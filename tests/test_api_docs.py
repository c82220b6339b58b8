"""docs/api.md's examples run: every ```python block, in order, in one namespace, in an empty directory
(a synthetic world and the hashing encoder: nothing downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_api_examples_run(tmp_path, monkeypatch, capsys):
    blocks = code_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DYEMBED_USER_ID_SALT", raising=False)
    namespace: dict = {}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"docs/api.md block {number}", "exec"), namespace)  # noqa: S102 - the doc's own code
    printed = capsys.readouterr().out
    assert "refused: 1 of 2 user id(s) not in" in printed
    assert "did you mean 'model.dim'?" in printed
    # the API's results are the CLI's: the same top-5 for the same user
    import json

    from typer.testing import CliRunner

    from dyembed_cli.app import app

    user = namespace["user"]
    result = CliRunner().invoke(app, ["recommend", "work", "--user", user, "--k", "5", "--json"])
    assert result.exit_code == 0, result.output
    cli_items = [r["item_id"] for r in json.loads(result.stdout)["rows"]]
    assert cli_items == namespace["wd"].recommend([user], k=5)["item_id"].tolist()
