"""The replay engine: blocks of t-batches through the dynamic rule, one compiled TF call per block.

Per step t of a block (one t-batch, one user per lane), all in one `tf.function`, the rule of
rules.py batched over lanes:
  1. lanes whose user enters gather (u, slots, count, last_ts, recent items) from the user table;
  2. optional time decay toward u0;
  3. the query u (+ c W, the context of the recent items) against the item matrix:
     s = q Vᵀ / τ + b (+ β h, the repeat counts) — with the sampled loss and no ranking, only
     against the target and the block's shared negatives;
  4. per-event target score, loss, rank (1 + #non-masked others scoring >= target), top-k;
  5. closed-form gradient ∇u = Vᵀ(softmax(s) − onehot)/τ (or its sampled form), weight, prior
     pull, clipping, the sgd / adagrad / adam step with per-user slots, the item pushed onto the
     user's recent ring;
and after the last step every user's final state in the block is scattered back to the table.
Training wraps the same steps in a GradientTape and takes one Adam step on θ per block, so θ's
gradient flows through the users' own updates inside the block (truncated backprop; the state
carried across blocks is a constant; the recent items are integers, so the context and repeat
terms they feed are recomputed from the current θ and stay differentiable across blocks).
rules_reference.py has the maths in float64, one event at a time, and the training objective of
one block (tests/test_train_reference.py checks θ's gradients and update against it).

The user table lives in tf.Variables (no padding row: empty slots gather user 0 and are never
written back), so 1M users × d=64 with Adam slots is three 256 MB arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dyembed.envcheck import import_tensorflow
from dyembed.replay import rules
from dyembed.replay.model import Model
from dyembed.replay.seen import EventSeen, SeenItems
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState
from dyembed.replay.tbatch import PAD, Block, lane_layout, windows

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    """Per-event outputs in row order (None when not requested)."""

    scores: np.ndarray  # float32[n] target score with the state before the event
    losses: np.ndarray  # float32[n] event loss (full or sampled, as configured)
    ranks: np.ndarray | None  # int64[n]
    topk: np.ndarray | None  # int32[n, k]
    loss_sum: float  # weighted training loss summed over events (train mode)
    weight_sum: float


class ThetaAdam:
    """Plain Adam on θ (no Keras), applied inside the compiled training step; one learning rate per variable.

    `apply(grads, rows={name: ids})` makes the named variables' step lazy: only rows `ids` (unique)
    move, their moments too, with `grads` holding those rows' gradients; bias correction follows
    the global step count (as Keras' LazyAdam). rules_reference.ReferenceAdam has the same rule."""

    def __init__(self, tf, variables: list, lr: float | list[float], beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, names: list[str] | None = None):
        self.tf, self.variables, self.beta1, self.beta2, self.eps = tf, variables, beta1, beta2, eps
        self.names = list(names) if names is not None else [f"v{k}" for k in range(len(variables))]
        self.lrs = list(lr) if isinstance(lr, (list, tuple)) else [float(lr)] * len(variables)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.t = tf.Variable(0.0, trainable=False)

    def apply(self, grads: list, rows: dict | None = None) -> None:
        tf = self.tf
        rows = rows or {}
        self.t.assign_add(1.0)
        c1 = 1.0 - tf.pow(self.beta1, self.t)
        c2 = 1.0 - tf.pow(self.beta2, self.t)
        for name, var, g, m, v, lr in zip(self.names, self.variables, grads, self.m, self.v, self.lrs):
            if g is None:
                continue
            g = tf.convert_to_tensor(g)
            if name in rows:
                idx = rows[name][:, None]
                m_r = self.beta1 * tf.gather_nd(m, idx) + (1 - self.beta1) * g
                v_r = self.beta2 * tf.gather_nd(v, idx) + (1 - self.beta2) * g * g
                m.scatter_nd_update(idx, m_r)
                v.scatter_nd_update(idx, v_r)
                var.scatter_nd_sub(idx, lr * (m_r / c1) / (tf.sqrt(v_r / c2) + self.eps))
                continue
            m.assign(self.beta1 * m + (1 - self.beta1) * g)
            v.assign(self.beta2 * v + (1 - self.beta2) * g * g)
            var.assign_sub(lr * (m / c1) / (tf.sqrt(v / c2) + self.eps))


class Engine:
    """The user table on the device plus the compiled block step for one model and rule."""

    def __init__(self, model: Model, spec: RuleSpec, state: UserState | None, *, n_users: int | None = None,
                 lr: float = 0.01, scalar_lr: float = 0.0, meta: bool = True, weight_decay: float = 0.0,
                 loss_normalizer: str = "block", num_negatives: int = 1024, mixed_precision: bool = False,
                 jit: bool = False, max_block_mb: int = 256, lazy_items: bool = True):
        tf = import_tensorflow()
        self.tf, self.model, self.spec = tf, model, spec
        self.meta, self.weight_decay = meta, float(weight_decay)
        if loss_normalizer not in ("events", "block"):
            raise ValueError(f"loss_normalizer must be 'events' or 'block', got {loss_normalizer!r}")
        self.loss_normalizer = loss_normalizer
        # sampled training: Adam moves only the E and b rows a block gathered (ThetaAdam, lazy)
        self.lazy_items = bool(lazy_items) and spec.loss == "sampled"
        self.num_negatives = max(1, int(num_negatives))
        self.jit = jit
        self.max_block_mb = max_block_mb
        self.matmul_dtype = None
        if mixed_precision:
            self.matmul_dtype = tf.float16 if tf.config.list_physical_devices("GPU") else tf.bfloat16
        self.n_slots = spec.n_slots
        self.dim = model.dim
        self.history = int(model.cfg.history)
        if state is not None:
            self._make_table(state, n_users)
        else:  # fresh users built on the device: no host copy of a large table
            self.n_users = int(n_users)
            self._make_table(UserState.fresh(0, self.dim, self.n_slots, history=self.history), self.n_users)
        if lr > 0:
            names = model.trainable_names()
            lrs = [scalar_lr if (scalar_lr > 0 and model.is_dynamics_scalar(n)) else lr for n in names]
            self.optimizer = ThetaAdam(tf, model.trainable, lrs, names=names)
        else:
            self.optimizer = None
        if model.logq is not None:
            q = np.exp(model.logq.numpy().astype(np.float64))
            self._neg_cdf = np.cumsum(q / q.sum())
        else:
            self._neg_cdf = None

    # ---- user table -------------------------------------------------------------------------
    # host <-> device transfers of the table go in pieces of this many rows: 4 MB pieces keep the
    # transient copies small (filling a 1M × 64 × 3 table: +12 MB RSS, against +53 MB with 16 MB pieces)
    CHUNK_ROWS = 16_384

    def _check_history(self, state: UserState) -> None:
        if state.history != self.history:
            raise ValueError(f"the state keeps {state.history} recent items per user, model.history is {self.history}")

    def _make_table(self, state: UserState, n_users: int | None = None) -> None:
        """Variables for `state`'s users (numpy arrays or StreamedArrays read chunk by chunk);
        with n_users larger than the state, the extra (new) users start fresh."""
        tf = self.tf
        n_old = state.n_users
        if state.slots.shape[0] != self.n_slots:
            raise ValueError(f"state has {state.slots.shape[0]} slot arrays, rule {self.spec.rule} needs {self.n_slots}")
        if n_old:
            self._check_history(state)
        n = max(n_old, n_users or 0)
        self.n_users = n
        self._functions = {}  # compiled steps capture the table's variables: retrace for new ones
        H = self.history
        in_memory = isinstance(state.U, np.ndarray) and n == n_old
        if in_memory:
            self.U = tf.Variable(state.U.astype(np.float32, copy=False), trainable=False)
            self.slots = [tf.Variable(state.slots[k].astype(np.float32, copy=False), trainable=False)
                          for k in range(self.n_slots)]
            self.count = tf.Variable(state.count.astype(np.int32, copy=False), trainable=False)
            self.last = tf.Variable(state.last_ts.astype(np.int64, copy=False), trainable=False)
            self.recent = tf.Variable(state.recent.astype(np.int32, copy=False), trainable=False) if H else None
            return
        self.U = tf.Variable(tf.zeros([n, self.dim]), trainable=False)
        self.slots = [tf.Variable(tf.zeros([n, self.dim]), trainable=False) for _ in range(self.n_slots)]
        self.count = tf.Variable(tf.zeros([n], tf.int32), trainable=False)
        self.last = tf.Variable(tf.zeros([n], tf.int64), trainable=False)
        self.recent = tf.Variable(tf.fill([n, H], -1), trainable=False) if H else None
        if n > n_old:
            self.reset_users(start=n_old)
        self._fill([self.U], state.U, n_old)
        self._fill(self.slots, state.slots, n_old)
        self._fill([self.count], state.count, n_old)
        self._fill([self.last], state.last_ts, n_old)
        if H:
            self._fill([self.recent], state.recent, n_old)

    def _fill(self, variables: list, source, rows_each: int) -> None:
        """Copy a (streamed) array, viewed as consecutive blocks of `rows_each` rows, into variables."""
        tf = self.tf
        if not variables or rows_each == 0:
            return
        chunks = source.chunks() if hasattr(source, "chunks") else [np.asarray(source)]
        width = int(variables[0].shape[1]) if len(variables[0].shape) > 1 else 1
        pos = 0
        for chunk in chunks:
            rows = np.asarray(chunk).reshape(-1, width) if width > 1 else np.asarray(chunk).reshape(-1)
            while len(rows):
                k, r = divmod(pos, rows_each)
                take = min(len(rows), rows_each - r, self.CHUNK_ROWS)
                idx = tf.range(r, r + take)[:, None]
                variables[k].scatter_nd_update(idx, tf.constant(rows[:take].astype(variables[k].dtype.as_numpy_dtype)))
                rows = rows[take:]
                pos += take

    def set_state(self, state: UserState) -> None:
        if state.U.shape != (self.n_users, self.dim) or not isinstance(state.U, np.ndarray):
            self._make_table(state)
            return
        self._check_history(state)
        self.U.assign(state.U)
        for k in range(self.n_slots):
            self.slots[k].assign(state.slots[k])
        self.count.assign(state.count)
        self.last.assign(state.last_ts)
        if self.history:
            self.recent.assign(state.recent)

    def reset_users(self, *, seed: int = 0, init_scale: float = 0.1, start: int = 0) -> None:
        """Users start.. back to before their first event (u0 / zero / random init), in place, in chunks."""
        tf = self.tf
        random_u = None
        if self.spec.init == "random":
            random_u = UserState.fresh(self.n_users, self.dim, 0, init="random", seed=seed, init_scale=init_scale).U
        for lo in range(start, self.n_users, self.CHUNK_ROWS):
            hi = min(self.n_users, lo + self.CHUNK_ROWS)
            idx = tf.range(lo, hi)[:, None]
            if self.spec.init == "prior":
                u = tf.broadcast_to(self.model.u0, [hi - lo, self.dim])
            elif random_u is not None:
                u = tf.constant(random_u[lo:hi])
            else:
                u = tf.zeros([hi - lo, self.dim])
            self.U.scatter_nd_update(idx, u)
            for var in self.slots:
                var.scatter_nd_update(idx, tf.zeros([hi - lo, self.dim]))
            self.count.scatter_nd_update(idx, tf.zeros([hi - lo], tf.int32))
            self.last.scatter_nd_update(idx, tf.zeros([hi - lo], tf.int64))
            if self.history:
                self.recent.scatter_nd_update(idx, tf.fill([hi - lo, self.history], -1))

    def get_state(self) -> UserState:
        slots = np.stack([s.numpy() for s in self.slots]) if self.n_slots else np.zeros((0, self.n_users, self.dim), np.float32)
        return UserState(U=self.U.numpy(), slots=slots, count=self.count.numpy(), last_ts=self.last.numpy(),
                         recent=self.recent.numpy() if self.history else None)

    def streamed_state(self) -> UserState:
        """The table as StreamedArrays (row chunks gathered from the device): saving a 1M-user
        state then needs no second full copy in host memory."""
        from dyembed.replay.state import StreamedArray

        tf = self.tf

        def reader(variables: list):
            def gen():
                for var in variables:
                    for lo in range(0, self.n_users, self.CHUNK_ROWS):
                        yield tf.gather(var, tf.range(lo, min(self.n_users, lo + self.CHUNK_ROWS))).numpy()
            return gen

        n, d, H = self.n_users, self.dim, self.history
        return UserState(U=StreamedArray((n, d), np.float32, reader([self.U])),
                         slots=StreamedArray((self.n_slots, n, d), np.float32, reader(self.slots)),
                         count=StreamedArray((n,), np.int32, reader([self.count])),
                         last_ts=StreamedArray((n,), np.int64, reader([self.last])),
                         recent=StreamedArray((n, H), np.int32, reader([self.recent])) if H else None)

    # ---- the compiled block step --------------------------------------------------------------
    def _function(self, *, update: bool, train: str, ranks: bool, topk: int, exclude: bool) -> Callable:
        """train: "" (θ fixed), "step" (one Adam step on θ per block) or "gradients" (return θ's
        gradients of the block objective, leave θ and the user table alone)."""
        key = (update, train, ranks, topk, exclude)
        if key not in self._functions:
            tf = self.tf
            spec = [
                tf.TensorSpec([None, None], tf.int32),  # users [T, B]
                tf.TensorSpec([None, None], tf.int32),  # items
                tf.TensorSpec([None, None], tf.int64),  # ts
                tf.TensorSpec([None, None], tf.float32),  # weights
                tf.TensorSpec([None, None], tf.bool),  # valid
                tf.TensorSpec([None, None], tf.bool),  # start
                tf.TensorSpec([None, 2], tf.int32),  # end slots (t, b)
                tf.TensorSpec([None], tf.int32),  # users of the end slots
                tf.TensorSpec([None, None], tf.int32),  # negatives [T, S]
                tf.TensorSpec([None], tf.int32),  # exclusion offsets per step [T + 1]
                tf.TensorSpec([None], tf.int32),  # exclusion lane
                tf.TensorSpec([None], tf.int32),  # exclusion item
                tf.TensorSpec([], tf.float32),  # loss normaliser ("events": the block capacity)
                tf.TensorSpec([None, None], tf.float32),  # V of the pass (θ fixed), [0, d] when training
                tf.TensorSpec([None], tf.float32),  # b of the pass, padded like V (pass_matrices)
            ]

            def block_fn(*args):
                return self._block(*args, update=update, train=train, want_ranks=ranks, topk=topk, has_exclude=exclude)

            # XLA cannot differentiate through this step (TensorList gradients): frozen replay only
            jit = (self.jit and not train) or None
            # autograph off: the loop is an explicit tf.while_loop, every branch a Python bool
            self._functions[key] = tf.function(block_fn, input_signature=spec, jit_compile=jit,
                                               reduce_retracing=True, autograph=False)
        return self._functions[key]

    def _mm(self, a, b, transpose_b: bool = False):
        tf = self.tf
        if self.matmul_dtype is None:
            return tf.matmul(a, b, transpose_b=transpose_b)
        out = tf.matmul(tf.cast(a, self.matmul_dtype), tf.cast(b, self.matmul_dtype), transpose_b=transpose_b)
        return tf.cast(out, tf.float32)

    LAZY = ("E", "b")  # per-item parameters a lazy step moves row by row

    def objective(self, loss_sum, weight_sum, norm, e_rows=None):
        """θ's loss of one block: the weighted event losses over the normaliser, plus weight decay
        (on E's gathered rows `e_rows` only in a lazy step: the same gradient on those rows)."""
        tf = self.tf
        denominator = norm if self.loss_normalizer == "events" else tf.maximum(weight_sum, 1.0)
        objective = loss_sum / denominator
        if self.weight_decay > 0:
            decay = tf.reduce_sum(tf.square(self.model.P))
            if e_rows is not None:
                decay += tf.reduce_sum(tf.square(e_rows))
            elif self.model.E is not None:
                decay += tf.reduce_sum(tf.square(self.model.E))
            objective += 0.5 * self.weight_decay * decay
        return objective

    def _block(self, *args, update, train, want_ranks, topk, has_exclude):
        tf = self.tf
        body = dict(update=update, train=bool(train), want_ranks=want_ranks, topk=topk, has_exclude=has_exclude,
                    write_back=update and train != "gradients")
        if not train:
            return self._block_body(*args, **body)[0]
        lazy = self.lazy_items and train == "step"
        with tf.GradientTape() as tape:
            out, rows = self._block_body(*args, **body)
            objective = self.objective(out[4], out[5], args[12], e_rows=rows.get("E") if lazy else None)
        if train == "gradients":
            variables = self.optimizer.variables
            grads = tape.gradient(objective, variables)
            return out + (objective, [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                                      for v, g in zip(variables, grads)])
        if lazy and "ids" in rows:
            # lazy Adam on E and b: the gradient of the gathered rows only (see docs/model.md)
            names = self.optimizer.names
            targets = [rows[n] if n in rows and n in self.LAZY else v for n, v in zip(names, self.optimizer.variables)]
            grads = tape.gradient(objective, targets)
            self.optimizer.apply(grads, rows={n: rows["ids"] for n in self.LAZY if n in rows})
        else:
            self.optimizer.apply(tape.gradient(objective, self.optimizer.variables))
        return out

    def _item_rows(self, users, items, valid, start, negs, context):
        """The rows a sampled training block uses — its targets, negatives and, with the context
        term, the recent items its users bring in — as (ids [U], V rows [U, d], b rows [U], and the
        map global id → row, [n_items]). Only these rows' X P + E are computed, inside the tape, so
        θ's gradient is O(rows) per block, not O(catalogue)."""
        tf, model = self.tf, self.model
        parts = [tf.boolean_mask(items, valid), tf.reshape(negs, [-1])]
        if context:
            ring0 = tf.reshape(tf.gather(self.recent, tf.boolean_mask(users, start)), [-1])
            parts.append(tf.boolean_mask(ring0, ring0 >= 0))
        ids, _ = tf.unique(tf.concat(parts, axis=0))
        rows = {"ids": ids}
        V = tf.matmul(tf.gather(model.X, ids), model.P)
        if model.E is not None:
            rows["E"] = tf.gather(model.E, ids)
            V += rows["E"]
        rows["b"] = tf.gather(model.b, ids)
        local = tf.scatter_nd(ids[:, None], tf.range(tf.size(ids)), [model.n_items])
        return rows, V, rows["b"], local

    def _block_body(self, users, items, ts, weights, valid, start, end_tb, end_users, negs, ex_off, ex_lane, ex_item,
                    norm, V_pass, b_pass, *, update, train, want_ranks, topk, has_exclude, write_back):
        tf, spec, model, mm = self.tf, self.spec, self.model, self._mm
        n_steps, n_lanes = tf.shape(items)[0], tf.shape(items)[1]
        sampled = spec.loss == "sampled"
        need_full = want_ranks or topk > 0 or not sampled
        context = model.W is not None
        repeat = model.beta is not None
        rows = {}
        if not train:
            V, b = V_pass, b_pass  # computed once per pass (θ fixed), rows padded (pass_matrices)
            row_of = lambda ids: ids  # noqa: E731
        elif need_full:
            V, b = model.item_matrix_tf(), model.b
            row_of = lambda ids: ids  # noqa: E731
        else:
            rows, V, b, local = self._item_rows(users, items, valid, start, negs, context)
            row_of = lambda ids: tf.gather(local, ids)  # noqa: E731
        tau = tf.exp(model.log_tau)
        alpha = tf.exp(model.log_alpha)
        u0 = model.u0
        logq = model.logq
        prior_init = spec.init == "prior"
        H = self.history
        log_gamma_c = tf.math.log_sigmoid(model.logit_context_decay) if context else None
        log_gamma_r = tf.math.log_sigmoid(model.logit_repeat_decay) if repeat else None

        dim = self.dim
        u = tf.zeros([n_lanes, dim])
        slots = tuple(tf.zeros([n_lanes, dim]) for _ in range(self.n_slots))
        cnt = tf.zeros([n_lanes], tf.int32)
        last = tf.zeros([n_lanes], tf.int64)
        ring = tf.fill([n_lanes, max(H, 1)], -1)
        f32 = tf.float32
        ta = lambda dtype: tf.TensorArray(dtype, size=n_steps)  # noqa: E731
        out_score, out_loss, out_rank, out_topk = ta(f32), ta(f32), ta(tf.int32), ta(tf.int32)
        rec_u, rec_cnt, rec_last, rec_ring = ta(f32), ta(tf.int32), ta(tf.int64), ta(tf.int32)
        rec_slots = tuple(ta(f32) for _ in range(self.n_slots))
        loss_sum = tf.constant(0.0)
        weight_sum = tf.constant(0.0)
        # the sampled candidates' rows gathered once per block, read per step from TensorArrays:
        # a gather inside the loop would give θ a dense [rows, d] gradient at every step
        pre = not need_full
        if pre:
            per_step = lambda x: tf.TensorArray(x.dtype, size=n_steps).unstack(x)  # noqa: E731
            tgt_v, tgt_b = per_step(tf.gather(V, row_of(items))), per_step(tf.gather(b, row_of(items)))
            neg_v, neg_b = per_step(tf.gather(V, row_of(negs))), per_step(tf.gather(b, row_of(negs)))

        def step(t, carry):
            (u, slots, cnt, last, ring, out_score, out_loss, out_rank, out_topk, rec_u, rec_slots, rec_cnt, rec_last,
             rec_ring, loss_sum, weight_sum) = carry
            uid, it, tt, ww, ok, st = users[t], items[t], ts[t], weights[t], valid[t], start[t]
            st2 = st[:, None]
            # 1. users entering a lane load their state from the table
            g_cnt = tf.gather(self.count, uid)
            g_u = tf.gather(self.U, uid)
            if prior_init and train:
                # a user with no event yet sits at the prior: differentiable w.r.t. u0
                g_u = tf.where((g_cnt == 0)[:, None], tf.broadcast_to(u0, tf.shape(g_u)), g_u)
            u = tf.where(st2, g_u, u)
            slots = tuple(tf.where(st2, tf.gather(var, uid), s) for var, s in zip(self.slots, slots))
            cnt = tf.where(st, g_cnt, cnt)
            last = tf.where(st, tf.gather(self.last, uid), last)
            if H:
                ring = tf.where(st2, tf.gather(self.recent, uid), ring)
            if train and not self.meta:
                u = tf.stop_gradient(u)  # the stop-gradient variant: states are constants for θ
            ok2 = ok[:, None]
            # 2. decay toward the prior
            if update and spec.half_life > 0:
                dt = tf.cast(tf.maximum(tt - last, 0), f32)
                u = tf.where(ok2, rules.decay_tf(tf, u, u0, dt, cnt > 0, spec.half_life), u)

            # 3. scores: the query (u + c W) against the items, + β h
            query = u
            if context:
                w_c = rules.recent_weights_tf(tf, ring, cnt, log_gamma_c)
                ring_rows = tf.where(ring >= 0, row_of(tf.maximum(ring, 0)), -1)
                query = u + mm(rules.context_tf(tf, V, ring_rows, w_c), model.W)
            if repeat:
                w_r = rules.recent_weights_tf(tf, ring, cnt, log_gamma_r)
            v_t = tgt_v.read(t) if pre else tf.gather(V, it)
            if need_full:
                # [B, n_items] (a frozen pass: padded items; a bias folded into the matmul as a
                # ones column measured slower on CPU: the odd inner dimension costs more than the add)
                scores = mm(query / tau, V, transpose_b=True) + b
                if repeat:
                    scores = rules.add_repeat_scores_tf(tf, scores, ring, w_r, model.beta)
                s_t = tf.gather(scores, it[:, None], batch_dims=1)[:, 0]
            else:
                s_t = tf.reduce_sum(query * v_t, axis=1) / tau + tgt_b.read(t)
                if repeat:
                    s_t += model.beta * rules.repeat_count_of_targets_tf(tf, ring, w_r, it)
            # 4. loss and the closed-form user gradient
            if sampled:
                neg = negs[t]
                v_n = neg_v.read(t) if pre else tf.gather(V, neg)
                if need_full:
                    s_n = tf.gather(scores, neg, axis=1)
                else:
                    s_n = mm(query, v_n, transpose_b=True) / tau + neg_b.read(t)[None, :]
                    if repeat:
                        s_n += model.beta * rules.repeat_counts_of_shared_tf(tf, ring, w_r, neg)
                loss, grad = rules.sampled_loss_grad_tf(tf, s_t, s_n, v_t, v_n, it, neg, tf.gather(logq, it),
                                                        tf.gather(logq, neg), tau, mm)
            else:
                loss, grad = rules.full_loss_grad_tf(tf, scores, it, V, tau, mm)
            out_score = out_score.write(t, s_t)
            out_loss = out_loss.write(t, loss)
            w_ok = tf.where(ok, ww, 0.0)
            loss_sum += tf.reduce_sum(w_ok * loss)
            weight_sum += tf.reduce_sum(w_ok)

            if want_ranks or topk > 0:
                if has_exclude:
                    lo, hi = ex_off[t], ex_off[t + 1]
                    e_lane, e_item = ex_lane[lo:hi], ex_item[lo:hi]
                    e_idx = tf.stack([e_lane, e_item], axis=1)
                    not_target = e_item != tf.gather(it, e_lane)
                if want_ranks:
                    # includes the target; a sum of int32 measured ~2x faster than count_nonzero
                    beats = tf.reduce_sum(tf.cast(scores >= s_t[:, None], tf.int32), axis=1)
                    if has_exclude:
                        e_beats = (tf.gather_nd(scores, e_idx) >= tf.gather(s_t, e_lane)) & not_target
                        beats -= tf.math.unsorted_segment_sum(tf.cast(e_beats, tf.int32), e_lane, n_lanes)
                    out_rank = out_rank.write(t, beats)
                if topk > 0:
                    masked = scores
                    if has_exclude:
                        masked = tf.tensor_scatter_nd_update(
                            scores, tf.boolean_mask(e_idx, not_target),
                            tf.fill([tf.reduce_sum(tf.cast(not_target, tf.int32))], -np.inf))
                    out_topk = out_topk.write(t, self._top_k(masked, topk, padded=not train))

            # 5. the user's step, then the item joins its recent items
            if update:
                g = rules.shape_gradient_tf(tf, grad, ww, u, u0, spec)
                u_next, new_slots = rules.optimizer_step_tf(tf, u, g, slots, cnt, alpha, spec)
                u = tf.where(ok2, u_next, u)
                slots = tuple(tf.where(ok2, ns, s) for ns, s in zip(new_slots, slots))
                if H:
                    ring = rules.push_recent_tf(tf, ring, cnt, it, ok)
                cnt = cnt + tf.cast(ok, tf.int32)
                last = tf.where(ok, tt, last)
                rec_u = rec_u.write(t, tf.stop_gradient(u))
                rec_slots = tuple(r.write(t, tf.stop_gradient(s_new)) for r, s_new in zip(rec_slots, slots))
                rec_cnt = rec_cnt.write(t, cnt)
                rec_last = rec_last.write(t, last)
                if H:
                    rec_ring = rec_ring.write(t, ring)
            return (u, slots, cnt, last, ring, out_score, out_loss, out_rank, out_topk, rec_u, rec_slots, rec_cnt,
                    rec_last, rec_ring, loss_sum, weight_sum)

        carry = (u, slots, cnt, last, ring, out_score, out_loss, out_rank, out_topk, rec_u, rec_slots, rec_cnt, rec_last,
                 rec_ring, loss_sum, weight_sum)
        _, carry = tf.while_loop(lambda t, c: t < n_steps, lambda t, c: (t + 1, step(t, c)), (tf.constant(0), carry))
        (u, slots, cnt, last, ring, out_score, out_loss, out_rank, out_topk, rec_u, rec_slots, rec_cnt, rec_last,
         rec_ring, loss_sum, weight_sum) = carry

        if write_back:
            idx = end_users[:, None]
            self.U.scatter_nd_update(idx, tf.gather_nd(rec_u.stack(), end_tb))
            for var, rec in zip(self.slots, rec_slots):
                var.scatter_nd_update(idx, tf.gather_nd(rec.stack(), end_tb))
            self.count.scatter_nd_update(idx, tf.gather_nd(rec_cnt.stack(), end_tb))
            self.last.scatter_nd_update(idx, tf.gather_nd(rec_last.stack(), end_tb))
            if H:
                self.recent.scatter_nd_update(idx, tf.gather_nd(rec_ring.stack(), end_tb))
        ranks_out = out_rank.stack() if want_ranks else tf.zeros([0, 0], tf.int32)
        topk_out = out_topk.stack() if topk > 0 else tf.zeros([0, 0, 0], tf.int32)
        return (out_score.stack(), out_loss.stack(), ranks_out, topk_out, loss_sum, weight_sum), rows

    TOPK_BLOCK = 128  # items per block of the two-stage top-k (and the padding of a pass's V and b)
    PAD_SCORE = -1e30  # padded items' bias: they never beat a real item nor enter a top-k

    def pass_matrices(self, train: bool):
        """θ fixed for a pass: V and b once, rows padded to a multiple of TOPK_BLOCK (V's with
        zeros, b's with PAD_SCORE: a padded item never beats a real one nor enters a top-k).
        Training passes compute V inside the tape instead: two empty tensors."""
        tf, d = self.tf, self.dim
        if train:
            return tf.zeros([0, d]), tf.zeros([0])
        V, b = self.model.item_matrix_tf(), tf.convert_to_tensor(self.model.b)
        pad = -self.model.n_items % self.TOPK_BLOCK
        if pad:
            V = tf.concat([V, tf.zeros([pad, d])], axis=0)
            b = tf.concat([b, tf.fill([pad], self.PAD_SCORE)], axis=0)
        return V, b

    def _top_k(self, scores, k: int, padded: bool):
        """tf.math.top_k(scores, k).indices (same items, same order, ties to the lower index) in two
        stages: the maximum of each block of TOPK_BLOCK items, the k best blocks (in item order),
        then the top k of their items. The k best items lie in the k best blocks (a block that
        is not picked has k picked blocks before it, each holding an item before all of its own)."""
        tf, bs = self.tf, self.TOPK_BLOCK
        n_pad = -(-self.model.n_items // bs) * bs
        n_blocks = n_pad // bs
        if not padded or n_blocks < 4 * k:  # a pass's padded score block only
            return tf.math.top_k(scores, k=k).indices
        lanes = tf.shape(scores)[0]
        blocks = tf.reshape(scores, [lanes, n_blocks, bs])
        best = tf.sort(tf.math.top_k(tf.reduce_max(blocks, axis=2), k=k).indices, axis=1)  # [B, k]
        cand = tf.reshape(tf.gather(blocks, best, batch_dims=1), [lanes, k * bs])
        pos = tf.math.top_k(cand, k=k).indices
        return tf.gather(best, pos // bs, batch_dims=1) * bs + pos % bs

    # ---- host side --------------------------------------------------------------------------
    def rank_lanes(self, lanes: int) -> int:
        """Lanes such that a [lanes, n_items] float32 block (plus temporaries) stays under the cap."""
        per_lane = self.model.n_items * 4 * 4
        return max(1, min(int(lanes), int(self.max_block_mb * 2**20 // per_lane)))

    def sample_negatives(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """[steps, S] shared negatives per t-batch, drawn from the proposal Q (with replacement)."""
        draws = np.searchsorted(self._neg_cdf, rng.random((steps, self.num_negatives)), side="right")
        return np.minimum(draws, len(self._neg_cdf) - 1).astype(np.int32)

    def replay(
        self,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        ts: np.ndarray,
        weight: np.ndarray | None = None,
        *,
        update: bool = True,
        train: bool = False,
        ranks: bool = False,
        exclude: SeenItems | EventSeen | None = None,
        topk: int = 0,
        lanes: int = 256,
        steps: int = 25,
        window: int = 1_000_000,
        rng: np.random.Generator | None = None,
        shuffle: bool = False,
        negatives_out: list | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayResult:
        """Replay events (row order = time order) through the rule; returns per-event outputs.

        train: θ takes an Adam step per block (update must be true). rng: negatives (sampled loss)
        and, with shuffle, the order of users inside lanes. negatives_out collects (rows, negs)
        per block so a reference can replay with the very same negatives.
        """
        tf = self.tf
        if train and (self.optimizer is None or not update):
            raise ValueError("training needs update=True and an optimiser (lr > 0)")
        n = len(user_idx)
        user_idx = np.asarray(user_idx, np.int32)
        item_idx = np.asarray(item_idx, np.int32)
        ts = np.asarray(ts, np.int64)
        weight = np.ones(n, np.float32) if weight is None else np.asarray(weight, np.float32)
        rng = rng or np.random.default_rng(0)
        if ranks or topk > 0 or self.spec.loss == "full":
            lanes = self.rank_lanes(lanes)
        fn = self._function(update=update, train="step" if train else "", ranks=ranks, topk=int(topk),
                            exclude=exclude is not None)
        norm = tf.constant(float(lanes * steps))  # the capacity of a block: "events" normalisation
        V_pass, b_pass = self.pass_matrices(train)
        scores = np.zeros(n, np.float32)
        losses = np.zeros(n, np.float32)
        rank_out = np.zeros(n, np.int64) if ranks else None
        topk_out = np.zeros((n, topk), np.int32) if topk > 0 else None
        loss_total, weight_total, done = 0.0, 0.0, 0
        for w0, w1 in windows(n, window):
            # a window takes >= its longest user sequence in steps: lanes beyond n / longest only pad
            longest = int(np.bincount(user_idx[w0:w1]).max())
            lanes_w = max(1, min(lanes, -(-(w1 - w0) // longest)))
            blocks = lane_layout(user_idx[w0:w1], lanes_w, steps, rng=rng if shuffle else None)
            for blk in blocks:
                args = self._block_arrays(blk, w0, user_idx, item_idx, ts, weight, exclude, rng)
                if negatives_out is not None and self.spec.loss == "sampled":
                    negatives_out.append((np.where(blk.valid, blk.pos + w0, PAD), args[8]))
                out = fn(*[tf.constant(a) for a in args], norm, V_pass, b_pass)
                valid = blk.valid
                rows = blk.pos[valid] + w0
                scores[rows] = out[0].numpy()[valid]
                losses[rows] = out[1].numpy()[valid]
                if ranks:
                    rank_out[rows] = out[2].numpy()[valid]
                if topk > 0:
                    topk_out[rows] = out[3].numpy()[valid]
                loss_total += float(out[4])
                weight_total += float(out[5])
                done += int(valid.sum())
                if progress is not None:
                    progress(done)
        return ReplayResult(scores, losses, rank_out, topk_out, loss_total, weight_total)

    def block_gradients(self, user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray,
                        weight: np.ndarray | None = None, *, lanes: int, steps: int,
                        rng: np.random.Generator | None = None) -> tuple[float, dict[str, np.ndarray], Block, np.ndarray]:
        """θ's gradient of the training objective of ONE block holding these events (the layout
        `replay(train=True)` would use), without applying it and without touching the user table:
        (objective, {parameter: gradient}, the block, its negatives [T, S]). For the reference test."""
        tf = self.tf
        n = len(user_idx)
        user_idx = np.asarray(user_idx, np.int32)
        weight = np.ones(n, np.float32) if weight is None else np.asarray(weight, np.float32)
        rng = rng or np.random.default_rng(0)
        blocks = lane_layout(user_idx, lanes, steps)
        if len(blocks) != 1:
            raise ValueError(f"the events make {len(blocks)} blocks; block_gradients takes one")
        blk = blocks[0]
        args = self._block_arrays(blk, 0, user_idx, np.asarray(item_idx, np.int32), np.asarray(ts, np.int64), weight,
                                  None, rng)
        fn = self._function(update=True, train="gradients", ranks=False, topk=0, exclude=False)
        out = fn(*[tf.constant(a) for a in args], tf.constant(float(lanes * steps)), *self.pass_matrices(True))
        grads = {name: g.numpy() for name, g in zip(self.model.trainable_names(), out[7])}
        return float(out[6]), grads, blk, args[8]

    def _block_arrays(self, blk: Block, w0: int, user_idx, item_idx, ts, weight, exclude, rng):
        valid = blk.valid
        rows = np.where(valid, blk.pos + w0, 0)
        items = np.where(valid, item_idx[rows], 0).astype(np.int32)
        tsb = np.where(valid, ts[rows], 0).astype(np.int64)
        wb = np.where(valid, weight[rows], 0.0).astype(np.float32)
        end_t, end_b = np.nonzero(blk.end)
        end_tb = np.stack([end_t, end_b], axis=1).astype(np.int32)
        end_users = blk.users[end_t, end_b].astype(np.int32)
        n_steps = blk.pos.shape[0]
        if self.spec.loss == "sampled":
            negs = self.sample_negatives(rng, n_steps)
        else:
            negs = np.zeros((n_steps, 0), np.int32)
        if exclude is not None:
            flat_t, flat_b = np.nonzero(valid)  # row-major: grouped by step
            owner, ex_item = exclude.pairs(blk.users[flat_t, flat_b], rows=blk.pos[flat_t, flat_b] + w0)
            ex_t = flat_t[owner]
            ex_lane = flat_b[owner].astype(np.int32)
            ex_off = np.zeros(n_steps + 1, np.int32)
            np.cumsum(np.bincount(ex_t, minlength=n_steps), out=ex_off[1:])
            ex_item = ex_item.astype(np.int32)
        else:
            ex_off = np.zeros(n_steps + 1, np.int32)
            ex_lane = ex_item = np.zeros(0, np.int32)
        return (blk.users.astype(np.int32), items, tsb, wb, valid, blk.start, end_tb, end_users, negs,
                ex_off, ex_lane, ex_item)
