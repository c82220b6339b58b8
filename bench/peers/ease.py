"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), closed form.

    min_B ||X - X B||_F^2 + λ ||B||_F^2   subject to diag(B) = 0
    P = (XᵀX + λI)⁻¹,   B_ij = -P_ij / P_jj (i != j),   B_jj = 0
    score(user) = x_user B

X is the binary user × item matrix of the fit rows (an item counts once per user). At query time
x_user is the user's binary history up to the event (its earlier rows of the stage), so a temporal
test event sees the user's earlier test events too (prequential, like dyembed's own replay).
A user with no history scores every item 0: a pessimistic tie, rank = catalogue size.
λ is tuned on validation; the test model is refit on train + validation rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.peers.harness import Final, Trial, World, validate_by_ranking

LAMBDAS = [1.0, 5.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0]


def gram(n_items: int, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    """XᵀX (float64 [n_items, n_items]) of the binary user × item matrix of these events."""
    import scipy.sparse as sp

    users = np.asarray(user_idx, dtype=np.int64)
    n_users = int(users.max()) + 1 if users.size else 1
    X = sp.csr_matrix((np.ones(users.size), (users, np.asarray(item_idx, dtype=np.int64))), shape=(n_users, n_items))
    X.sum_duplicates()
    X.data[:] = 1.0
    return np.asarray((X.T @ X).toarray(), dtype=np.float64)


def ease_weights(G: np.ndarray, lam: float) -> np.ndarray:
    """B from the Gram matrix G = XᵀX and the ridge weight λ (Steck 2019, eq. 8)."""
    A = G.copy()
    A[np.diag_indices_from(A)] += lam
    P = np.linalg.inv(A)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B


class EaseScorer:
    """scores(rows) = binary history of each row's user before the row, times B."""

    def __init__(self, B: np.ndarray, histories, n_items: int):
        self.B, self.histories, self.n_items = B, histories, n_items

    def scores(self, rows: np.ndarray) -> np.ndarray:
        X = self.histories.csr(rows, self.n_items, binary=True, dtype=np.float64)
        return np.asarray(X @ self.B)

    def observe(self, rows: np.ndarray) -> None:
        pass  # the history of each row is read from the log (UserHistories)


class EasePeer:
    name = "ease"
    description = "EASE (Steck 2019): item-item closed form on the binary user × item matrix"
    test_model = "refit on train + validation rows with the chosen λ"

    def __init__(self, lambdas: list[float] | None = None):
        self.lambdas = list(lambdas or LAMBDAS)

    def at_test_time(self, protocol: str) -> str:
        return "the user's binary history up to the event (earlier test events included)"

    def grid(self, world: World) -> list[dict[str, Any]]:
        return [{"lambda": lam} for lam in self.lambdas]

    def grid_spec(self, world: World) -> dict[str, list]:
        return {"lambda": self.lambdas}

    def _gram(self, world: World, rows: np.ndarray) -> np.ndarray:
        return gram(world.log.n_items, world.log.user_idx[rows], world.log.item_idx[rows])

    def validate(self, world, setting, maskings, time_budget) -> Trial:
        t0 = time.perf_counter()
        if getattr(self, "_val_gram", None) is None:  # the same Gram for every λ
            self._val_gram = self._gram(world, world.validation.fit_rows)
        B = ease_weights(self._val_gram, setting["lambda"])
        seconds = time.perf_counter() - t0
        scores = validate_by_ranking(world, lambda: EaseScorer(B, world.validation.histories, world.log.n_items), maskings)
        return Trial(setting, scores, seconds)

    def final(self, world, setting, kept, time_budget) -> Final:
        self._val_gram = None
        t0 = time.perf_counter()
        B = ease_weights(self._gram(world, world.test.fit_rows), setting["lambda"])
        return Final(lambda: EaseScorer(B, world.test.histories, world.log.n_items), time.perf_counter() - t0)
