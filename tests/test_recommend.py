"""`dyembed recommend`: known, unknown and all users; seen-item masking; output formats; no TensorFlow."""

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
    summary = recommend(loo_workdir, Config(), user_ids=["u3"], k=10, mask_seen="on")
    rows = summary["rows"]
    assert len(rows) == 10 and not seen & {r["item_id"] for r in rows}
    assert summary["exclude_seen"] is True and summary["mask_seen"]["setting"] == "on"


def test_mask_seen_default_is_evaluates_rule(loo_workdir):
    """auto = dyembed/masking.py on the whole log: this world repeats items (34 %), so seen items stay;
    the setting comes from evaluate.mask_seen, the key evaluate reads too."""
    import pyarrow.parquet as pq

    from dyembed.evaluate.recommend import recommend
    from dyembed.masking import repeat_rate

    events = pq.read_table(loo_workdir / "events.parquet")
    rate = repeat_rate(events.column("user_idx").to_numpy(), events.column("item_idx").to_numpy())
    assert rate > 0.05
    auto = recommend(loo_workdir, Config(), user_ids=["u3"], k=10)
    assert auto["exclude_seen"] is False and auto["mask_seen"]["setting"] == "auto"
    assert auto["mask_seen"]["repeat_rate"] == pytest.approx(rate, abs=1e-6)
    cfg = Config()
    cfg.evaluate.repeat_threshold = 0.5  # the same rule, a threshold above this world's rate: masked
    assert recommend(loo_workdir, cfg, user_ids=["u3"], k=10)["exclude_seen"] is True
    cfg = Config()
    cfg.evaluate.mask_seen = "on"
    assert recommend(loo_workdir, cfg, user_ids=["u3"], k=10)["rows"] == \
        recommend(loo_workdir, Config(), user_ids=["u3"], k=10, mask_seen="on")["rows"]


def test_unknown_user_is_a_data_error(loo_workdir):
    from dyembed.errors import InputDataError
    from dyembed.evaluate.recommend import recommend

    with pytest.raises(InputDataError, match=r"2 of 3 user id\(s\) not in .*users.parquet: nobody, ghost; .*--allow-unknown"):
        recommend(loo_workdir, Config(), user_ids=["nobody", "u1", "ghost"], k=4)


def test_allow_unknown_lists_them_with_the_prior_list(loo_workdir):
    from dyembed.evaluate.recommend import recommend

    trained, V, b, tau = _model(loo_workdir)
    summary = recommend(loo_workdir, Config(), user_ids=["nobody", "u1", "ghost"], k=4, allow_unknown=True)
    assert summary["cold_start_users"] == 2 and summary["unknown_users"] == 2
    assert any("nobody" in n and "ghost" in n and "cold-start" in n for n in summary["notes"])
    by_user = {}
    for r in summary["rows"]:
        by_user.setdefault(r["user_id"], []).append(r)
    prior_scores = np.asarray(trained.prior(), np.float64) @ V.T / tau + b
    expected = [f"i{j}" for j in np.argsort(-prior_scores, kind="stable")[:4]]
    assert [r["item_id"] for r in by_user["nobody"]] == expected == [r["item_id"] for r in by_user["ghost"]]
    assert all(r["cold_start"] and r["unknown"] for r in by_user["nobody"])
    assert not any(r["cold_start"] or r["unknown"] for r in by_user["u1"])


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
        assert table.column_names == ["user_id", "rank", "item_id", "score", "text", "cold_start", "unknown"]
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
    assert result.exit_code == 3 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: 1 of 2 user id(s) not in {loo_workdir}/users.parquet: stranger; check the ids, or pass "
        "--allow-unknown to list them with the cold-start list"]
    result = invoke("recommend", loo_workdir, "--users-file", ids, "--k", "3", "--allow-unknown")
    assert result.exit_code == 0, result.output
    assert "u2" in result.stdout and "stranger (unknown id, cold start)" in result.stdout
    assert "note: 1 of 2 user id(s) not in" in result.stderr
    result = invoke("recommend", loo_workdir, "--k", "3")
    assert result.exit_code == 2 and "error: recommending for all users needs --out" in result.output
    out = tmp_path / "all.csv"
    result = invoke("--quiet", "recommend", loo_workdir, "--k", "2", "--mask-seen", "on", "--out", out)
    assert result.exit_code == 0 and result.output == "" and len(out.read_text().splitlines()) == 1 + 2 * 30


def test_exclude_seen_is_a_deprecated_alias(loo_workdir):
    new = invoke("recommend", loo_workdir, "--user", "u3", "--mask-seen", "on", "--json")
    old = invoke("recommend", loo_workdir, "--user", "u3", "--exclude-seen", "--json")
    assert new.exit_code == old.exit_code == 0, old.output
    assert json.loads(old.stdout)["rows"] == json.loads(new.stdout)["rows"]
    assert old.stderr.strip() == "warning: --exclude-seen is deprecated; use --mask-seen on (or the default auto, evaluate's rule)"
    both = invoke("recommend", loo_workdir, "--user", "u3", "--exclude-seen", "--mask-seen", "off")
    assert both.exit_code == 2 and "--exclude-seen (deprecated) means --mask-seen on" in both.stderr


def test_recommend_json_is_one_line(loo_workdir):
    result = invoke("recommend", loo_workdir, "--user", "u3", "--k", "2", "--json")
    assert result.exit_code == 0 and result.stdout.count("\n") == 1
    summary = json.loads(result.stdout)
    assert [r["rank"] for r in summary["rows"]] == [1, 2] and summary["state_version"] == 1


def test_recommend_never_imports_tensorflow(loo_workdir):
    """`dyembed recommend` computes nothing in TensorFlow, so a fresh process never imports it."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from dyembed_cli.app import app; "
            f"r = CliRunner().invoke(app, ['recommend', {str(loo_workdir)!r}, '--user', 'u3']); "
            "assert r.exit_code == 0, r.output; print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False"]


def test_user_without_replayed_events_gets_the_prior_list(loo_workdir, monkeypatch):
    from dyembed.evaluate.recommend import recommend
    from dyembed.replay import api

    real = api.load_trained

    def idle_user_5(workdir, **kw):
        trained = real(workdir, **kw)
        trained.state.count[5] = 0  # as if u5's only events came after the last train
        return trained

    monkeypatch.setattr(api, "load_trained", idle_user_5)
    summary = recommend(loo_workdir, Config(), user_ids=["u5", "nobody"], k=3, allow_unknown=True)
    rows = summary["rows"]
    assert all(r["cold_start"] for r in rows) and summary["cold_start_users"] == 2 and summary["unknown_users"] == 1
    assert [r["item_id"] for r in rows[:3]] == [r["item_id"] for r in rows[3:]]
    assert any("no replayed event yet" in n for n in summary["notes"])
