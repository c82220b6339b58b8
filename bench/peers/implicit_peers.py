"""ALS and BPR from the `implicit` package (pip install -e '.[peers]').

ALS (Hu, Koren & Volinsky 2008; implicit.als.AlternatingLeastSquares) on the user × item count
matrix of the fit rows: preference 1 and confidence α·count on observed pairs, preference 0 and
confidence 1 elsewhere (implicit ≥ 0.7's convention; tests/test_peers.py checks it in float64). At every ranked event the user is folded in from the
history up to that event (`recalculate_user`: the exact least-squares user factor for the fixed
item factors, the ALS half-step), so a temporal test event sees the user's earlier events,
including earlier test events; a user with no history gets the zero vector (all scores 0, a
pessimistic tie). With leave-last-out the history is the user's fit rows, so fold-in only
recomputes the factor against the final item factors.

BPR (Rendle et al. 2009; implicit.bpr.BayesianPersonalizedRanking): no fold-in — the user factors
are those learned on the fit rows, frozen at the cut; a user without fit rows keeps implicit's
zero factor (with its bias column = 1), so it is ranked by the item biases alone.

Both are tuned on validation and refit on train + validation rows with the chosen setting.
implicit's own BLAS-thread warning is avoided by limiting BLAS to one thread while fitting
(implicit parallelises with its own threads).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from bench.peers.harness import Final, Trial, World, validate_by_ranking

ALS_GRID = {"factors": [32, 64, 128, 256], "regularization": [0.1, 1.0, 10.0, 100.0], "alpha": [1.0, 10.0, 40.0],
            "iterations": [15]}
BPR_GRID = {"factors": [64, 128], "learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01],
            "iterations": [25, 50, 100, 300]}


def _product(spec: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(spec)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec[k] for k in keys))]


def user_item_counts(world: World, rows: np.ndarray):
    """scipy CSR [n_users, n_items] of event counts over `rows` (float32, as implicit wants)."""
    import scipy.sparse as sp

    log = world.log
    mat = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (log.user_idx[rows], log.item_idx[rows])),
                        shape=(log.n_users, log.n_items))
    mat.sum_duplicates()
    return mat


def _fit(model, user_items, seed: int) -> float:
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model.fit(user_items, show_progress=False)
    return time.perf_counter() - t0


def fold_in(item_factors: np.ndarray, regularization: float, alpha: float, stage) -> np.ndarray:
    """ALS user factors (float64 [len(stage.target_rows), f]) from the history up to each ranked row.

    implicit's objective for one user with item counts c_i (its `recalculate_user`):
        (YᵀY + λI + Σ_i (α c_i − 1) y_i y_iᵀ) u = Σ_i α c_i y_i
    Each user's system is built once from the history before their first ranked row, then updated
    event by event (a new item adds (α − 1) y yᵀ, a repeat α y yᵀ; the right side α y), and solved
    at every ranked row. implicit's recalculate_user gives the same factors (tests/test_peers.py)
    but rebuilds every row's system from scratch: ~10 min for the 8k ml-100k temporal validation
    events at 256 factors on this machine, hours on ml-latest-small's long histories.
    BLAS runs on one thread here: the systems are small, and a multi-threaded BLAS on a busy
    machine made the same loop 16× slower (406 s vs 25 s, load 11 on 2 cores)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        return _fold_in(item_factors, regularization, alpha, stage)


def _fold_in(item_factors, regularization: float, alpha: float, stage) -> np.ndarray:
    Y = np.asarray(item_factors, dtype=np.float64)
    f = Y.shape[1]
    base = Y.T @ Y + regularization * np.eye(f)
    rows = stage.target_rows
    hist = stage.histories
    log_items = hist.items  # the stage's rows grouped by user (UserHistories layout)
    start, end = hist.bounds(rows)
    out = np.zeros((rows.size, f), dtype=np.float64)
    users = start  # rows of one user share their history start
    order = np.lexsort((end, users))
    k = 0
    while k < order.size:
        group = [order[k]]
        while k + len(group) < order.size and users[order[k + len(group)]] == users[group[0]]:
            group.append(order[k + len(group)])
        k += len(group)
        first = group[0]
        items, counts = np.unique(log_items[start[first]:end[first]], return_counts=True)
        conf = alpha * counts
        Yh = Y[items]
        A = base + (Yh * (conf - 1.0)[:, None]).T @ Yh
        b = Yh.T @ conf
        seen = dict.fromkeys(items.tolist())
        done = end[first]
        for g in group:
            for item in log_items[done:end[g]].tolist():  # events between the previous ranked row and this one
                y = Y[item]
                A += np.outer(y, y) * (alpha if item in seen else alpha - 1.0)
                b += alpha * y
                seen[item] = None
            done = end[g]
            if end[g] > start[g]:
                out[g] = np.linalg.solve(A, b)
    return out


class AlsFoldInScorer:
    """Scores of each ranked row from the user factor folded in on the history up to the row
    (`fold_in`, solved up front for all the stage's ranked rows: the ranks do not depend on how
    rank_rows cuts its blocks). A row without history gets the zero factor (all scores 0)."""

    def __init__(self, model, stage, n_items: int):
        self.rows = stage.target_rows  # sorted
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        factors = fold_in(model.item_factors, model.regularization, model.alpha, stage)
        self.user_factors = factors.astype(np.float32)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.user_factors[np.searchsorted(self.rows, rows)] @ self.item_factors.T

    def observe(self, rows: np.ndarray) -> None:
        pass


class FrozenUserScorer:
    """Scores from the user factors learned at fit time (no fold-in)."""

    def __init__(self, model, log):
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        self.log = log

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.user_factors[self.log.user_idx[rows]] @ self.item_factors.T

    def observe(self, rows: np.ndarray) -> None:
        pass


class _ImplicitPeer:
    spec: dict[str, list]

    def __init__(self, spec: dict[str, list] | None = None, seed: int = 0):
        import implicit  # noqa: F401 - fail early with ImportError when the extra is missing

        self.spec = dict(spec or self.spec)
        self.seed = seed

    def grid(self, world: World) -> list[dict[str, Any]]:
        return _product(self.spec)

    def grid_spec(self, world: World) -> dict[str, list]:
        return self.spec

    def _model(self, setting: dict[str, Any]):
        raise NotImplementedError

    def _scorer(self, model, world: World, stage):
        raise NotImplementedError

    def validate(self, world, setting, maskings, time_budget) -> Trial:
        model = self._model(setting)
        seconds = _fit(model, user_item_counts(world, world.validation.fit_rows), self.seed)
        scores = validate_by_ranking(world, lambda: self._scorer(model, world, world.validation), maskings)
        return Trial(setting, scores, seconds)

    def final(self, world, setting, kept, time_budget) -> Final:
        model = self._model(setting)
        seconds = _fit(model, user_item_counts(world, world.test.fit_rows), self.seed)
        return Final(lambda: self._scorer(model, world, world.test), seconds)


class AlsPeer(_ImplicitPeer):
    name = "als"
    description = "implicit ALS (Hu et al. 2008), confidence α·count; user folded in at every event"
    test_model = "refit on train + validation rows with the chosen setting"
    spec = ALS_GRID

    def at_test_time(self, protocol: str) -> str:
        return "user factor folded in (exact ALS least squares, as recalculate_user) from the history up to the event"

    def _model(self, setting):
        from threadpoolctl import threadpool_limits

        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):  # its constructor warns about a multi-threaded BLAS
                return AlternatingLeastSquares(factors=setting["factors"], regularization=setting["regularization"],
                                           alpha=setting["alpha"], iterations=setting["iterations"],
                                           random_state=self.seed, num_threads=0)

    def _scorer(self, model, world, stage):
        return AlsFoldInScorer(model, stage, world.log.n_items)


class BprPeer(_ImplicitPeer):
    name = "bpr"
    description = "implicit BPR (Rendle et al. 2009), user factors learned at fit time"
    test_model = "refit on train + validation rows with the chosen setting"
    spec = BPR_GRID

    def at_test_time(self, protocol: str) -> str:
        return ("no fold-in: user factors frozen at the cut (a user without history rows is ranked by item bias)"
                if protocol == "temporal" else "user factors of the fit (the user's history rows)")

    def _model(self, setting):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=setting["factors"], learning_rate=setting["learning_rate"],
                                           regularization=setting["regularization"], iterations=setting["iterations"],
                                           random_state=self.seed, num_threads=1)  # hogwild threads: not reproducible

    def _scorer(self, model, world, stage):
        return FrozenUserScorer(model, world.log)
