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


class AlsFoldInScorer:
    """Scores of each ranked row from the user factor recomputed on the history up to the row.

    The factors of all the stage's ranked rows are solved up front in one `recalculate_user` call
    (each row's own history, so the result does not depend on how rank_rows cuts its blocks; one
    call per block costs ~4 ms of thread start-up when blocks shrink to one event)."""

    def __init__(self, model, stage, n_items: int):
        self.rows = stage.target_rows  # sorted
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        history = stage.histories.csr(self.rows, n_items, binary=False)
        factors = model.recalculate_user(np.arange(self.rows.size), history)
        self.user_factors = np.asarray(factors, dtype=np.float32).reshape(self.rows.size, -1)

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
        return "user factor recomputed (recalculate_user) from the history up to the event"

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
