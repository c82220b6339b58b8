"""The SavedModel: the serving state and θ in tf.Variables, and three signatures built on the
rule's TensorFlow functions (dyembed/replay/rules.py, the engine's own), so serving, `recommend`
and `update` share one definition of the score and of the user's step.

    recommend(user_ids, k, exclude_seen)
        top-k of s = (u + c W) Vᵀ / τ + b + β h for each user's exported state; a user the state
        does not know, or one without a replayed event, gets the cold-start list (u = u0, no
        recent items, nothing masked) — dyembed recommend's rules.
    update_and_recommend(user_ids, item_ids, timestamps, weights, k, exclude_seen)
        the events (per user in timestamp order, stable; events older than the exported log
        dropped or clamped as data.allow_late says, as `update` does) applied to the exported states with θ
        frozen — decay, context / repeat terms from the recent-item ring, full or sampled loss,
        w ∇u + λ(u − u0), clipping, sgd / adagrad / adam with the user's slots, ring push — then
        each distinct user's top-k and new state. Stateless: nothing in the model changes.
    embed_items(features)
        text-only vectors of items the export does not hold: v = x̂ P (x̂ = x / ‖x‖, residual 0),
        b = the median trained bias (theta.PARAMS' rule for new items), and the ANN row [v, b].

Stateless on purpose: TensorFlow Serving runs replicas, reloads versions and restarts; user
vectors kept in mutable Variables would diverge between replicas, vanish on a reload and race
between concurrent requests. The caller sends each user's events since the export (export.json's
watermark) and gets the same state `dyembed update` would compute; the next nightly export
takes the events in for good.
"""

from __future__ import annotations

import numpy as np

from dyembed.export.tables import ServingTables
from dyembed.replay import rules

SIGNATURES = ("recommend", "update_and_recommend", "embed_items")


def build_module(tf, t: ServingTables):
    """A tf.Module holding `t` with the serving functions as tf.function attributes."""
    return _module_class(tf)(t)


def _module_class(tf):
    """The module class (defined once TensorFlow is imported: dyembed imports it lazily)."""

    class ServingModule(tf.Module):
        def __init__(self, t: ServingTables):
            super().__init__(name="dyembed")
            th = t.theta
            var = lambda a, dtype, name: tf.Variable(np.asarray(a, dtype), trainable=False, name=name)  # noqa: E731
            self.n_items, self.dim, self.history = t.n_items, t.dim, t.history
            self.spec = t.spec
            self.uses_weights = t.uses_weights
            self.context = th.W is not None
            self.repeat = th.beta is not None
            self.sampled = t.spec.loss == "sampled"
            self.num_negatives = t.num_negatives
            self.seed = int(t.seed)
            self.allow_late = t.allow_late
            self.log_last_ts = tf.constant(int(t.log_last_ts), tf.int64)
            # θ (frozen); E is folded into V
            self.V = var(t.V, np.float32, "V")
            self.b = var(th.b, np.float32, "b")
            self.P = var(th.P, np.float32, "P")
            self.u0 = var(th.u0, np.float32, "u0")
            self.log_tau = var(th.log_tau, np.float32, "log_tau")
            self.log_alpha = var(th.log_alpha, np.float32, "log_alpha")
            self.W = var(th.W, np.float32, "W") if self.context else None
            self.logit_context_decay = var(th.logit_context_decay, np.float32, "logit_context_decay") if self.context else None
            self.beta = var(th.beta, np.float32, "beta") if self.repeat else None
            self.logit_repeat_decay = var(th.logit_repeat_decay, np.float32, "logit_repeat_decay") if self.repeat else None
            self.logq = var(th.logq, np.float32, "logq") if self.sampled else None
            self.new_item_bias = var(t.new_item_bias(), np.float32, "new_item_bias")
            # the serving state
            users = t.users
            self.U = var(users.U, np.float32, "U")
            self.slots = [var(users.slots[k], np.float32, f"slot{k}") for k in range(t.spec.n_slots)]
            self.count = var(users.count, np.int32, "count")
            self.last_ts = var(users.last_ts, np.int64, "last_ts")
            self.recent = var(users.recent, np.int32, "recent") if self.history else None
            self.seen_indptr = var(t.seen_indptr, np.int64, "seen_indptr")
            self.seen_indices = var(t.seen_indices, np.int32, "seen_indices")
            # raw ids ⇄ rows
            self.item_id_of = tf.Variable(tf.constant([str(i) for i in t.item_ids], tf.string), trainable=False,
                                          name="item_ids")
            self.user_table = self._table(t.user_ids, "user_index")
            self.item_table = self._table(t.item_ids, "item_index")

            S = tf.TensorSpec
            self.recommend = tf.function(self._recommend, input_signature=[
                S([None], tf.string, name="user_ids"), S([], tf.int32, name="k"), S([], tf.bool, name="exclude_seen")])
            self.update_and_recommend = tf.function(self._update_and_recommend, input_signature=[
                S([None], tf.string, name="user_ids"), S([None], tf.string, name="item_ids"),
                S([None], tf.int64, name="timestamps"), S([None], tf.float32, name="weights"),
                S([], tf.int32, name="k"), S([], tf.bool, name="exclude_seen")])
            self.embed_items = tf.function(self._embed_items, input_signature=[
                S([None, t.feature_dim], tf.float32, name="features")])

        @staticmethod
        def _table(ids, name):
            keys = tf.constant(np.asarray(ids, dtype=object).astype(str))
            init = tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(ids), dtype=tf.int32))
            return tf.lookup.StaticHashTable(init, default_value=-1, name=name)

        # ---- scores and top-k ---------------------------------------------------------------
        def _query(self, u, ring, cnt):
            """u + c W (the context of the recent items)."""
            if not self.context:
                return u
            w_c = rules.recent_weights_tf(tf, ring, cnt, tf.math.log_sigmoid(self.logit_context_decay))
            return u + tf.matmul(rules.context_tf(tf, self.V, ring, w_c), self.W)

        def _scores(self, u, ring, cnt):
            """[B, n_items]: (u + c W) Vᵀ / τ + b + β h."""
            # the order of replay/scoring.py's numpy scorer (what recommend serves): q Vᵀ, then / τ
            scores = tf.matmul(self._query(u, ring, cnt), self.V, transpose_b=True) / tf.exp(self.log_tau) + self.b
            if self.repeat:
                w_r = rules.recent_weights_tf(tf, ring, cnt, tf.math.log_sigmoid(self.logit_repeat_decay))
                scores = rules.add_repeat_scores_tf(tf, scores, ring, w_r, self.beta)
            return scores

        def _ann_user(self, u, ring, cnt):
            """[B, d + 1]: [(u + c W) / τ, 1], so that · [v, b] is the score without β h."""
            q = self._query(u, ring, cnt) / tf.exp(self.log_tau)
            return tf.concat([q, tf.ones_like(q[:, :1])], axis=1)

        def _topk(self, scores, k, ex_lane, ex_item):
            """Best k items per row, the (lane, item) pairs excluded; -1 / "" / NaN pad rows with fewer items."""
            tf.debugging.assert_positive(k, message="k must be a positive integer")
            idx = tf.stack([ex_lane, ex_item], axis=1)
            scores = tf.tensor_scatter_nd_update(scores, idx, tf.fill([tf.shape(ex_lane)[0]], -np.inf))
            values, items = tf.math.top_k(scores, k=tf.minimum(k, self.n_items))
            ok = values > -np.inf
            items = tf.where(ok, items, -1)
            return {"item_indices": items, "item_ids": tf.where(ok, tf.gather(self.item_id_of, tf.maximum(items, 0)), ""),
                    "scores": tf.where(ok, values, np.nan)}

        def _seen_pairs(self, rows, use):
            """(lane, item) of each lane's exported seen items (lanes with `use`)."""
            rows64 = tf.cast(tf.maximum(rows, 0), tf.int64)
            start = tf.gather(self.seen_indptr, rows64)
            length = tf.where(use, tf.gather(self.seen_indptr, rows64 + 1) - start, 0)
            lane = tf.repeat(tf.range(tf.shape(rows)[0]), length)
            within = tf.range(tf.reduce_sum(length)) - tf.repeat(tf.cumsum(length, exclusive=True), length)
            return lane, tf.gather(self.seen_indices, tf.repeat(start, length) + within)

        # ---- user states ----------------------------------------------------------------------
        def _state_of(self, rows):
            """(u, slots, count, last_ts, ring) of state rows; rows = -1 (unknown): a fresh user."""
            known = rows >= 0
            g = tf.maximum(rows, 0)
            k2 = known[:, None]
            if self.spec.init == "zero":
                fresh = tf.zeros([tf.shape(rows)[0], self.dim])
            else:  # prior (and random: see docs/serving.md)
                fresh = tf.broadcast_to(self.u0, [tf.shape(rows)[0], self.dim])
            u = tf.where(k2, tf.gather(self.U, g), fresh)
            slots = tuple(tf.where(k2, tf.gather(s, g), 0.0) for s in self.slots)
            cnt = tf.where(known, tf.gather(self.count, g), 0)
            last = tf.where(known, tf.gather(self.last_ts, g), tf.zeros_like(rows, tf.int64))
            ring = tf.where(k2, tf.gather(self.recent, g), -1) if self.history else tf.fill([tf.shape(rows)[0], 1], -1)
            return u, slots, cnt, last, ring

        def _cold(self, u, ring, cnt, cold):
            """recommend's cold-start query: u0, no recent items."""
            c2 = cold[:, None]
            return (tf.where(c2, tf.broadcast_to(self.u0, tf.shape(u)), u), tf.where(c2, -1, ring),
                    tf.where(cold, 0, cnt))

        # ---- signatures ---------------------------------------------------------------------
        def _recommend(self, user_ids, k, exclude_seen):
            rows = self.user_table.lookup(user_ids)
            u, _, cnt, _, ring = self._state_of(rows)
            cold = (rows < 0) | (cnt == 0)
            u, ring, cnt = self._cold(u, ring, cnt, cold)
            lane, item = self._seen_pairs(rows, (~cold) & exclude_seen)
            out = self._topk(self._scores(u, ring, cnt), k, lane, item)
            out.update(known_user=rows >= 0, cold_start=cold, ann_user_vectors=self._ann_user(u, ring, cnt))
            return out

        def _update_and_recommend(self, user_ids, item_ids, timestamps, weights, k, exclude_seen):
            n = tf.shape(user_ids)[0]
            tf.debugging.assert_equal(tf.shape(item_ids)[0], n, message="item_ids must have one entry per user_ids entry")
            tf.debugging.assert_equal(tf.shape(timestamps)[0], n, message="timestamps must have one entry per event")
            tf.debugging.assert_equal(tf.shape(weights)[0], n, message="weights must have one entry per event")
            lanes_ids, lane = tf.unique(user_ids)  # one lane per distinct user, in order of first appearance
            m = tf.shape(lanes_ids)[0]
            rows = self.user_table.lookup(lanes_ids)
            items = self.item_table.lookup(item_ids)
            ok = items >= 0  # events of items the export does not hold are skipped (and counted)
            unknown_items = tf.math.unsorted_segment_sum(tf.cast(~ok, tf.int32), lane, m)
            # events older than the exported log: what `update` (preprocess --append) does with them
            late = ok & (timestamps < self.log_last_ts)
            late_events = tf.math.unsorted_segment_sum(tf.cast(late, tf.int32), lane, m)
            if self.allow_late == "drop":
                ok &= ~late
            elif self.allow_late == "clamp":
                timestamps = tf.where(late, self.log_last_ts, timestamps)
            ev = tf.where(ok)[:, 0]
            e_lane, e_item = tf.gather(lane, ev), tf.gather(items, ev)
            e_ts = tf.gather(timestamps, ev)
            e_w = tf.gather(weights, ev) if self.uses_weights else tf.ones_like(e_ts, tf.float32)
            # per lane in timestamp order (stable: equal times keep the request's order)
            by_ts = tf.argsort(e_ts, stable=True)
            order = tf.gather(by_ts, tf.argsort(tf.gather(e_lane, by_ts), stable=True))
            e_lane, e_item, e_ts, e_w = (tf.gather(x, order) for x in (e_lane, e_item, e_ts, e_w))
            per_lane = tf.math.bincount(e_lane, minlength=m, maxlength=m, dtype=tf.int32)
            pos = tf.range(tf.shape(e_lane)[0]) - tf.gather(tf.cumsum(per_lane, exclusive=True), e_lane)
            steps = tf.reduce_max(tf.concat([per_lane, [0]], axis=0))
            at = tf.stack([pos, e_lane], axis=1)
            grid = lambda x: tf.scatter_nd(at, x, tf.stack([steps, m]))  # noqa: E731
            g_item, g_ts, g_w = grid(e_item), grid(e_ts), grid(e_w)
            g_ok = grid(tf.ones_like(e_item)) > 0

            u, slots, cnt, last, ring = self._state_of(rows)
            u, slots, cnt, last, ring = self._apply(u, slots, cnt, last, ring, g_item, g_ts, g_w, g_ok, steps)
            cold = cnt == 0
            qu, qring, qcnt = self._cold(u, ring, cnt, cold)
            s_lane, s_item = self._seen_pairs(rows, (~cold) & (rows >= 0) & exclude_seen)
            e_use = tf.fill(tf.shape(e_lane), exclude_seen)
            lane_x = tf.concat([s_lane, tf.boolean_mask(e_lane, e_use)], axis=0)
            item_x = tf.concat([s_item, tf.boolean_mask(e_item, e_use)], axis=0)
            out = self._topk(self._scores(qu, qring, qcnt), k, lane_x, item_x)
            out.update(
                user_ids=lanes_ids, known_user=rows >= 0, cold_start=cold, events_applied=per_lane,
                unknown_item_events=unknown_items, late_events=late_events, user_vector=u,
                slots=tf.stack(slots, axis=1) if slots else tf.zeros([m, 0, self.dim]),
                count=cnt, last_ts=last, recent=ring if self.history else tf.zeros([m, 0], tf.int32),
                ann_user_vectors=self._ann_user(qu, qring, qcnt))
            return out

        def _apply(self, u, slots, cnt, last, ring, g_item, g_ts, g_w, g_ok, steps):
            """The rule, step t = each lane's t-th event (the engine's block step, θ frozen)."""
            spec, V, b, u0 = self.spec, self.V, self.b, self.u0
            tau = tf.exp(self.log_tau)
            alpha = tf.exp(self.log_alpha)
            mm = tf.matmul

            def body(t, u, slots, cnt, last, ring):
                it, tt, ww, ok = g_item[t], g_ts[t], g_w[t], g_ok[t]
                ok2 = ok[:, None]
                if spec.half_life > 0:
                    dt = tf.cast(tf.maximum(tt - last, 0), tf.float32)
                    u = tf.where(ok2, rules.decay_tf(tf, u, u0, dt, cnt > 0, spec.half_life), u)
                query = self._query(u, ring, cnt)
                if self.repeat:
                    w_r = rules.recent_weights_tf(tf, ring, cnt, tf.math.log_sigmoid(self.logit_repeat_decay))
                if self.sampled:
                    # shared negatives per step from the sampler Q, drawn here (update draws its own: same law)
                    neg = tf.cast(tf.random.stateless_categorical(
                        self.logq[None, :], self.num_negatives, seed=tf.stack([tf.constant(self.seed, tf.int64),
                                                                               tf.cast(t, tf.int64)]))[0], tf.int32)
                    v_t, v_n = tf.gather(V, it), tf.gather(V, neg)
                    s_t = tf.reduce_sum(query * v_t, axis=1) / tau + tf.gather(b, it)
                    s_n = mm(query, v_n, transpose_b=True) / tau + tf.gather(b, neg)
                    if self.repeat:
                        s_t += self.beta * rules.repeat_count_of_targets_tf(tf, ring, w_r, it)
                        s_n += self.beta * rules.repeat_counts_of_shared_tf(tf, ring, w_r, neg)
                    _, grad = rules.sampled_loss_grad_tf(tf, s_t, s_n, v_t, v_n, it, neg, tf.gather(self.logq, it),
                                                         tf.gather(self.logq, neg), tau, mm)
                else:
                    scores = mm(query / tau, V, transpose_b=True) + b
                    if self.repeat:
                        scores = rules.add_repeat_scores_tf(tf, scores, ring, w_r, self.beta)
                    _, grad = rules.full_loss_grad_tf(tf, scores, it, V, tau, mm)
                g = rules.shape_gradient_tf(tf, grad, ww, u, u0, spec)
                u_next, new_slots = rules.optimizer_step_tf(tf, u, g, slots, cnt, alpha, spec)
                u = tf.where(ok2, u_next, u)
                slots = tuple(tf.where(ok2, ns, s) for ns, s in zip(new_slots, slots))
                if self.history:
                    ring = rules.push_recent_tf(tf, ring, cnt, it, ok)
                cnt = cnt + tf.cast(ok, tf.int32)
                last = tf.where(ok, tt, last)
                return t + 1, u, slots, cnt, last, ring

            _, u, slots, cnt, last, ring = tf.while_loop(
                lambda t, *_: t < steps, body, (tf.constant(0), u, slots, cnt, last, ring))
            return u, slots, cnt, last, ring

        def _embed_items(self, features):
            norms = tf.norm(features, axis=1, keepdims=True)
            x = features / tf.where(norms > 0, norms, 1.0)
            v = tf.matmul(x, self.P)
            bias = tf.fill([tf.shape(features)[0]], self.new_item_bias)
            return {"vectors": v, "bias": bias, "ann_item_vectors": tf.concat([v, bias[:, None]], axis=1)}

    return ServingModule


def save(tf, module, directory) -> None:
    """tf.saved_model.save with the three serving signatures."""
    signatures = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}
    tf.saved_model.save(module, str(directory), signatures=signatures)
