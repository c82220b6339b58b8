"""`dyembed recommend`: known, unknown and all users; exclude-seen; output formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dyembed.config import Config
from dyembed.errors import ConfigError
from evaluate_world import loo_workdir  # noqa: F401 - module fixture

runner = CliRunner()


def invoke(*args):
    from dyembed_cli.app import app

    return runner.invoke(app, [str(a) for a in args])


def _model(workdir):
    from dyembed.replay import api

    trained = api.load_trained(workdir)
    V = trained.item_matrix().astype(np.float64)
    return trained, V, trained.item_bias().astype(np.float64), float(trained.temperature)


def test_known_user_gets_the_models_top_k(loo_workdir):
    from dyembed.evaluate.recommend import recommend
    from dyembed.replay import api

    trained, V, b, tau = _model(loo_workdir)
    U = trained.state.U
    summary = recommend(loo_workdir, Config(), user_ids=["u3"], k=5)
    rows = summary["rows"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and {r["user_id"] for r in rows} == {"u3"}
    scores = U[3].astype(np.float64) @ V.T / tau + b
    expected = np.argsort(-scores, kind="stable")[:5]
    assert [r["item_id"] for r in rows] == [f"i{j}" for j in expected]
    np.testing.assert_allclose([r["score"] for r in rows], scores[expected], rtol=1e-5)
    assert not any(r["cold_start"] for r in rows) and summary["notes"] == []
    assert rows[0]["text"].startswith(f"item {expected[0]} about topic")


def test_exclude_seen_removes_the_users_items(loo_workdir):
    import pyarrow.parquet as pq

    from dyembed.evaluate.recommend import recommend

    events = pq.read_table(loo_workdir / "events.parquet").to_pandas()
    seen = {f"i{j}" for j in events.loc[events.user_idx == 3, "item_idx"]}
    rows = recommend(loo_workdir, Config(), user_ids=["u3"], k=10, exclude_seen=True)["rows"]
    assert len(rows) == 10 and not seen & {r["item_id"] for r in rows}


def test_unknown_user_gets_the_prior_list_and_a_note(loo_workdir):
    from dyembed.evaluate.recommend import recommend

    trained, V, b, tau = _model(loo_workdir)
    summary = recommend(loo_workdir, Config(), user_ids=["nobody", "u1", "ghost"], k=4)
    assert summary["cold_start_users"] == 2
    assert any("nobody" in n and "ghost" in n and "cold-start" in n for n in summary["notes"])
    by_user = {}
    for r in summary["rows"]:
        by_user.setdefault(r["user_id"], []).append(r)
    prior_scores = np.asarray(trained.prior(), np.float64) @ V.T / tau + b
    expected = [f"i{j}" for j in np.argsort(-prior_scores, kind="stable")[:4]]
    assert [r["item_id"] for r in by_user["nobody"]] == expected == [r["item_id"] for r in by_user["ghost"]]
    assert all(r["cold_start"] for r in by_user["nobody"]) and not any(r["cold_start"] for r in by_user["u1"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_all_users_stream_to_a_file(loo_workdir, tmp_path, suffix):
    from dyembed.evaluate.recommend import recommend

    cfg = Config()
    cfg.evaluate.max_block_mb = 1e-4  # a few users per block: exercises the streaming path
    out = tmp_path / f"recs{suffix}"
    summary = recommend(loo_workdir, cfg, k=3, out=out)
    n_users = 30
    assert summary["rows_written"] == 3 * n_users and summary["users"] == n_users
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.column_names == ["user_id", "rank", "item_id", "score", "text", "cold_start"]
        users = table.column("user_id").to_pylist()
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        users = pacsv.read_csv(out).column("user_id").to_pylist()
    else:
        users = [json.loads(line)["user_id"] for line in out.read_text().splitlines()]
    assert len(users) == 3 * n_users and sorted(set(users)) == sorted(f"u{u}" for u in range(n_users))
    # the same lists as asking user by user
    single = recommend(loo_workdir, Config(), user_ids=["u7"], k=3)["rows"]
    all_rows = recommend(loo_workdir, cfg, k=3, out=tmp_path / "again.jsonl")
    assert all_rows["rows"][21:24] == single


def test_recommend_errors(loo_workdir, tmp_path):
    from dyembed.evaluate.recommend import recommend

    with pytest.raises(ConfigError, match="needs --out"):
        recommend(loo_workdir, Config(), k=3)
    with pytest.raises(ConfigError, match="unknown format"):
        recommend(loo_workdir, Config(), user_ids=["u1"], out=tmp_path / "x.xlsx")


def test_recommend_cli(loo_workdir, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("user_id\nu2\n\nstranger\n")
    result = invoke("recommend", loo_workdir, "--users-file", ids, "--k", "3")
    assert result.exit_code == 0, result.output
    assert "u2" in result.output and "cold start" in result.output and "note: unknown user(s) stranger" in result.output
    result = invoke("recommend", loo_workdir, "--k", "3")
    assert result.exit_code == 2 and "error: recommending for all users needs --out" in result.output
    out = tmp_path / "all.csv"
    result = invoke("--quiet", "recommend", loo_workdir, "--k", "2", "--exclude-seen", "--out", out)
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 1 + 2 * 30


def test_user_without_replayed_events_gets_the_prior_list(loo_workdir, monkeypatch):
    from dyembed.evaluate.recommend import recommend
    from dyembed.replay import api

    real = api.load_trained

    def idle_user_5(workdir):
        trained = real(workdir)
        trained.state.count[5] = 0  # as if u5's only events came after the last train
        return trained

    monkeypatch.setattr(api, "load_trained", idle_user_5)
    summary = recommend(loo_workdir, Config(), user_ids=["u5", "nobody"], k=3)
    rows = summary["rows"]
    assert all(r["cold_start"] for r in rows) and summary["cold_start_users"] == 2 and summary["unknown_users"] == 1
    assert [r["item_id"] for r in rows[:3]] == [r["item_id"] for r in rows[3:]]
    assert any("no replayed event yet" in n for n in summary["notes"])
