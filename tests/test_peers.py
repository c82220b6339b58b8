"""bench/peers: the harness ranks with dyembed's code (checked against brute force and against
`evaluate`'s own pop ranks), EASE's closed form, ALS fold-in, and SASRec on a world it must learn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.peers import harness  # noqa: E402
from bench.peers.ease import EasePeer, EaseScorer, ease_weights, gram  # noqa: E402
from dyembed.config import EvaluateConfig  # noqa: E402
from evaluate_world import build_workdir, tiny_config  # noqa: E402


def write_log(workdir: Path, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Path:
    """A work dir with only what the peers read: events (row order = time order), items, users."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    workdir.mkdir(parents=True, exist_ok=True)
    ts = 1_600_000_000 + 60 * np.arange(len(users), dtype=np.int64)
    pq.write_table(pa.table({"user_idx": np.asarray(users, np.int32), "item_idx": np.asarray(items, np.int32), "ts": ts}),
                   workdir / "events.parquet")
    pq.write_table(pa.table({"item_idx": np.arange(n_items, dtype=np.int32), "item_id": [f"i{j}" for j in range(n_items)]}),
                   workdir / "items.parquet")
    pq.write_table(pa.table({"user_idx": np.arange(n_users, dtype=np.int32), "user_id": [f"u{u}" for u in range(n_users)]}),
                   workdir / "users.parquet")
    return workdir


def random_log(workdir: Path, *, seed: int = 0, n: int = 600, n_users: int = 25, n_items: int = 30) -> Path:
    rng = np.random.default_rng(seed)
    # skewed item popularity so that items repeat and some scores tie; user 0 appears only in the test period
    users = rng.integers(1, n_users, n)
    users[-5:] = 0
    items = np.minimum(rng.geometric(0.12, n) - 1, n_items - 1)
    return write_log(workdir, users, items, n_users, n_items)


def brute_rank(scores: np.ndarray, target: int, masked: set[int]) -> int:
    """Pessimistic rank by a full argsort: items by score descending, the target after every equal
    score, masked items (never the target) left out."""
    keep = np.array([j for j in range(scores.size) if j == target or j not in masked])
    is_target = keep == target
    order = keep[np.lexsort((is_target, -scores[keep]))]
    return int(np.flatnonzero(order == target)[0]) + 1


def brute_ease_ranks(world: harness.World, stage: harness.Stage, B: np.ndarray, masked: bool) -> np.ndarray:
    """Seen (masked) items = the user's items before the event: history rows and earlier ranked rows."""
    log = world.log
    stage_rows = set(stage.fit_rows.tolist()) | set(stage.target_rows.tolist())
    out = []
    for r in stage.target_rows:
        u = log.user_idx[r]
        x = np.zeros(log.n_items)
        for q in range(r):  # the user's earlier rows of the stage, one at a time
            if q in stage_rows and log.user_idx[q] == u:
                x[log.item_idx[q]] = 1.0
        out.append(brute_rank(x @ B, int(log.item_idx[r]), set(np.flatnonzero(x).tolist()) if masked else set()))
    return np.array(out)


# --------------------------------------------------------------------------- histories and ranks


@pytest.mark.parametrize("protocol", ["loo", "temporal"])
def test_histories_are_the_users_earlier_rows_of_the_stage(tmp_path, protocol):
    world = harness.World(random_log(tmp_path), EvaluateConfig(protocol=protocol, test_fraction=0.25), 0.2)
    log = world.log
    for stage in (world.validation, world.test):
        allowed = set(stage.fit_rows.tolist()) | set(stage.target_rows.tolist())
        padded = stage.histories.padded(stage.target_rows, 4)
        counts = stage.histories.csr(stage.target_rows, log.n_items, binary=False).toarray()
        for n, r in enumerate(stage.target_rows):
            earlier = [int(log.item_idx[q]) for q in range(r) if q in allowed and log.user_idx[q] == log.user_idx[r]]
            expect = np.zeros(4, np.int32)
            tail = np.array(earlier[-4:], np.int32) + 1
            expect[4 - tail.size:] = tail
            np.testing.assert_array_equal(padded[n], expect)
            np.testing.assert_array_equal(counts[n], np.bincount(earlier, minlength=log.n_items))
    # the validation stage never sees a test row; the test stage sees the validation rows
    assert not set(world.validation.target_rows) & set(world.test.target_rows)
    assert set(np.flatnonzero(world.roles == 1)) <= set(world.test.fit_rows)


@pytest.mark.parametrize("protocol", ["loo", "temporal"])
@pytest.mark.parametrize("mask", ["on", "off"])
def test_ease_ranks_from_rank_rows_equal_a_brute_force_argsort(tmp_path, protocol, mask):
    world = harness.World(random_log(tmp_path, seed=1), EvaluateConfig(protocol=protocol, test_fraction=0.25), 0.2)
    for stage in (world.validation, world.test):
        B = ease_weights(gram(world.log.n_items, world.log.user_idx[stage.fit_rows], world.log.item_idx[stage.fit_rows]), 3.0)
        masking, exclude = world.masking(stage, mask)
        ranks = harness.rank(world, stage, EaseScorer(B, stage.histories, world.log.n_items), exclude)
        np.testing.assert_array_equal(ranks, brute_ease_ranks(world, stage, B, masking.masked))
    if protocol == "temporal":  # user 0 has no history at its first test event: every score 0, a full tie
        first = world.test.target_rows[world.log.user_idx[world.test.target_rows] == 0][0]
        index = int(np.flatnonzero(world.test.target_rows == first)[0])
        assert ranks[index] == world.log.n_items


def test_ranking_under_two_maskings_scores_once_and_equals_separate_runs(tmp_path):
    world = harness.World(random_log(tmp_path, seed=2), EvaluateConfig(protocol="loo"), 0.1)
    stage = world.validation
    B = ease_weights(gram(world.log.n_items, world.log.user_idx[stage.fit_rows], world.log.item_idx[stage.fit_rows]), 5.0)
    calls = []

    class Counting(EaseScorer):
        def scores(self, rows):
            calls.append(rows.size)
            return super().scores(rows)

    maskings = {m: world.masking(stage, m) for m in ("on", "off", "auto")}
    ranks = harness.rank_each(world, stage, lambda: Counting(B, stage.histories, world.log.n_items), maskings)
    assert sum(calls) == stage.target_rows.size  # one scoring pass for both decisions
    for m, (_, exclude) in maskings.items():
        np.testing.assert_array_equal(ranks[m], harness.rank(world, stage, EaseScorer(B, stage.histories, world.log.n_items), exclude))
    assert not np.array_equal(ranks["on"], ranks["off"])


@pytest.mark.parametrize("protocol, mask", [("loo", "on"), ("temporal", "auto"), ("temporal", "on")])
def test_harness_pop_ranks_equal_dyembed_evaluate_pop_ranks(tmp_path, tmp_path_factory, protocol, mask):
    """Same rows, same masking, same ranks as `evaluate` (its rank dump), event by event."""
    import pyarrow.parquet as pq

    from dyembed.evaluate.run import evaluate

    workdir = build_workdir(tmp_path_factory.getbasetemp(), protocol)
    cfg = tiny_config(protocol)
    cfg.evaluate.mask_seen = mask
    report = evaluate(workdir, cfg, dump_ranks=tmp_path / "ranks.parquet", models=["pop"])
    dump = pq.read_table(tmp_path / "ranks.parquet").to_pandas()
    world = harness.World(workdir, cfg.evaluate, cfg.train.validation_fraction)
    records = harness.run_peer(harness.PopPeer(), world, [cfg.evaluate.mask_seen])
    masking, exclude = world.masking(world.test, cfg.evaluate.mask_seen)
    ranks = harness.rank(world, world.test, harness.bl.PopScorer(world.log, world.test.fit_rows), exclude)
    test_rows = world.test.target_rows
    assert list(dump.ts) == list(world.log.ts[test_rows])
    assert list(dump.item_id) == [f"i{j}" for j in world.log.item_idx[test_rows]]
    np.testing.assert_array_equal(dump["rank"].to_numpy(), ranks)
    assert report["masking"]["seen_masked"] == masking.masked == (mask == "on")
    saved = records[cfg.evaluate.mask_seen]["test_ranks"]
    assert saved["rows"] == test_rows.tolist()
    np.testing.assert_array_equal(saved["ranks"], dump["rank"].to_numpy())
    got = records[cfg.evaluate.mask_seen]["test"]
    assert got["per_event"] == report["models"]["pop"]["per_event"]
    assert got["ci95_per_event"] == report["models"]["pop"]["ci95_per_event"]


# --------------------------------------------------------------------------- EASE


def test_ease_closed_form_equals_a_direct_constrained_ridge_solve():
    rng = np.random.default_rng(0)
    X = (rng.random((40, 9)) < 0.3).astype(np.float64)
    lam = 2.5
    B = ease_weights(X.T @ X, lam)
    # min ||X - XB||² + λ||B||² with B_jj = 0: column j is a ridge regression of x_j on the other columns
    for j in range(X.shape[1]):
        others = [i for i in range(X.shape[1]) if i != j]
        A = X[:, others]
        coef = np.linalg.solve(A.T @ A + lam * np.eye(len(others)), A.T @ X[:, j])
        np.testing.assert_allclose(B[others, j], coef, rtol=1e-10, atol=1e-12)
        assert B[j, j] == 0.0
    users, items = np.nonzero(X)
    np.testing.assert_array_equal(gram(9, users, items), X.T @ X)


def test_ease_peer_tunes_on_validation_and_refits_for_the_test(tmp_path):
    world = harness.World(random_log(tmp_path, seed=3, n=900), EvaluateConfig(protocol="temporal", test_fraction=0.2), 0.2)
    records = harness.run_peer(EasePeer([1.0, 30.0]), world, ["auto", "off"])
    for m, rec in records.items():
        scores = [v["ndcg@10"] for v in rec["validation"]]
        assert rec["chosen"] == rec["validation"][int(np.argmax(scores))]["setting"]
        assert rec["test"]["events"] == world.test.target_rows.size
        lo, hi = rec["test"]["ci95_per_event"]["ndcg@10"]
        assert lo <= rec["test"]["per_event"]["ndcg@10"] <= hi
    assert records["auto"]["masking"]["test"]["setting"] == "auto"
    assert records["off"]["masking"]["test"]["seen_masked"] is False


# --------------------------------------------------------------------------- implicit


def test_als_folds_the_user_in_from_the_history_up_to_each_event(tmp_path):
    pytest.importorskip("implicit")
    from bench.peers.implicit_peers import AlsFoldInScorer, AlsPeer, user_item_counts

    world = harness.World(random_log(tmp_path, seed=4, n=800), EvaluateConfig(protocol="temporal", test_fraction=0.25), 0.1)
    peer = AlsPeer(seed=0)
    setting = {"factors": 6, "regularization": 0.3, "alpha": 4.0, "iterations": 5}
    model = peer._model(setting)
    model.fit(user_item_counts(world, world.test.fit_rows), show_progress=False)
    scorer = AlsFoldInScorer(model, world.test, world.log.n_items)
    Y = np.asarray(model.item_factors, np.float64)
    counts = world.test.histories.csr(world.test.target_rows, world.log.n_items, binary=False).toarray()
    # implicit's own fold-in (rebuilt per row) gives the same factors as the incremental one
    implicit_factors = model.recalculate_user(np.arange(counts.shape[0]), world.test.histories.csr(
        world.test.target_rows, world.log.n_items, binary=False))
    np.testing.assert_allclose(scorer.user_factors, implicit_factors, rtol=2e-3, atol=2e-4)
    for n, r in enumerate(world.test.target_rows):
        # implicit's objective: confidence α·r on observed pairs (1 elsewhere), preference 1 on observed pairs
        c = setting["alpha"] * counts[n]
        observed = c > 0
        A = Y.T @ Y + (Y[observed].T * (c[observed] - 1.0)) @ Y[observed] + setting["regularization"] * np.eye(6)
        u = np.linalg.solve(A, Y[observed].T @ c[observed])
        np.testing.assert_allclose(scorer.scores(np.array([r]))[0], Y @ u, rtol=2e-3, atol=2e-4)
    # and the peer's ranks come from rank_rows like every other model
    ranks = harness.rank(world, world.test, scorer, None)
    assert ranks.min() >= 1 and ranks.max() <= world.log.n_items


def test_bpr_scores_use_the_users_fitted_factors(tmp_path):
    pytest.importorskip("implicit")
    from bench.peers.implicit_peers import BprPeer, FrozenUserScorer, user_item_counts

    world = harness.World(random_log(tmp_path, seed=5), EvaluateConfig(protocol="loo"), 0.1)
    peer = BprPeer(seed=0)
    model = peer._model({"factors": 4, "learning_rate": 0.05, "regularization": 0.01, "iterations": 3})
    model.fit(user_item_counts(world, world.test.fit_rows), show_progress=False)
    rows = world.test.target_rows
    expect = np.asarray(model.user_factors)[world.log.user_idx[rows]] @ np.asarray(model.item_factors).T
    np.testing.assert_allclose(FrozenUserScorer(model, world.log).scores(rows), expect, rtol=1e-6)


# --------------------------------------------------------------------------- SASRec


def test_sasrec_learns_a_fixed_next_item_transition(tmp_path):
    """Each user walks a fixed permutation of the items from a random start: the next item is a
    function of the previous one, so the test Recall@1 must reach ~1."""
    from bench.peers.sasrec import SasrecPeer, training_windows

    rng = np.random.default_rng(0)
    n_items, n_users, length = 24, 120, 12
    successor = rng.permutation(n_items)
    rows = []
    for u in range(n_users):
        item = int(rng.integers(n_items))
        for _ in range(length):
            rows.append((u, item))
            item = int(successor[item])
    order = rng.permutation(len(rows))  # interleave users in time, each user's own order kept
    per_user = {u: iter([i for uu, i in rows if uu == u]) for u in range(n_users)}
    users = np.array([rows[k][0] for k in order])
    items = np.array([next(per_user[u]) for u in users])
    world = harness.World(write_log(tmp_path, users, items, n_users, n_items), EvaluateConfig(protocol="loo"), 0.1)
    peer = SasrecPeer({"dropout": [0.0], "learning_rate": [1e-2]}, max_epochs=15, patience=3, batch_size=64, maxlen=8)
    records = harness.run_peer(peer, world, ["off"])
    test = records["off"]["test"]["per_event"]
    assert test["mrr"] > 0.95, records["off"]["validation"]
    assert records["off"]["validation"][0]["best_epoch"] >= 1
    x, y = training_windows([np.arange(20)], 8)  # 19 pairs → windows of 8, 8, 3 from the end
    assert x.shape == (3, 8) and y[0, -1] == 20 and x[0, -1] == 19 and (x[2, :5] == 0).all() and y[2, -1] == 4


# --------------------------------------------------------------------------- the command line


def test_run_cli_writes_one_json_per_masking_and_rejects_bad_flags(tmp_path):
    workdir = random_log(tmp_path / "wd", seed=6, n=500)
    out = tmp_path / "out-{mask}.json"
    cmd = [sys.executable, str(REPO / "bench/peers/run.py"), "--workdir", str(workdir), "--protocol", "loo",
           "--peers", "pop,ease", "--mask-seen", "auto,off", "--out", str(out), "--bootstrap", "20",
           "--grid", "ease:lambda=2,30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for m in ("auto", "off"):
        report = json.loads((tmp_path / f"out-{m}.json").read_text())
        assert set(report["peers"]) == {"pop", "ease"} and report["evaluate"]["mask_seen"] == m
        assert report["peers"]["ease"]["grid"]["lambda"] == [2, 30]
        assert [v["setting"] for v in report["peers"]["ease"]["validation"]] == [{"lambda": 2}, {"lambda": 30}]
        assert "ndcg@10" in report["peers"]["ease"]["test"]["ci95_per_event"]
    assert "ease" in done.stdout
    base = cmd[:cmd.index("--mask-seen")]
    bad = subprocess.run(base + ["--mask-seen", "maybe", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--mask-seen must be among auto, on, off" in bad.stderr
    bad = subprocess.run(base + ["--out", str(out), "--grid", "ease:lambda=x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "values of 'lambda' must be numbers" in bad.stderr
