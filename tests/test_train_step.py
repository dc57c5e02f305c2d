"""The jitted train step: loss composition, TBPTT gradients, accumulation, non-finite skip,
parameter groups and the LR schedule (spec training.md §5.3-5.10, §6.1-6.2).

Kept small: one tiny model, three compilations (two step shapes and a hand-written
reference), all shared through module fixtures.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos, forward
from hierarchos_jax.model.losses import chunked_lm_loss, commitment_cost, ponder_cost
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.state import stop_gradient, zeros_state
from hierarchos_jax.train.optimizer import OptimConfig, make_schedule, param_groups
from hierarchos_jax.train.step import LossConfig, TrainStep, make_batch, zero_counters

V, B, T, L = 16, 2, 12, 6


@pytest.fixture(scope="module")
def setup():
    cfg = dataclasses.replace(HierarchosConfig.from_preset("tiny"), vocab_size=V)
    model = Hierarchos(cfg, rngs=nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    lc = LossConfig(chunk_size=L)
    tx = optax.sgd(1.0)  # params_after = params - grads: the step's gradient is observable
    step = TrainStep(graphdef, rest, cfg, lc, tx, lambda u: jnp.float32(1.0))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, V, (B, T)).astype(np.int32)
    labels = ids.copy()
    labels[:, :3] = -100  # a masked prompt
    mask = np.ones((B, T), np.int32)
    return dict(cfg=cfg, graphdef=graphdef, params=params, rest=rest, lc=lc, tx=tx, step=step,
                ids=ids, labels=labels, mask=mask)


def _copy(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _run(s, batch, params=None, divisor=None):
    params = _copy(s["params"] if params is None else params)
    opt = s["tx"].init(params)
    new_params, _, counters, m = s["step"](params, opt, zero_counters(), batch, divisor)
    return new_params, counters, m


@pytest.fixture(scope="module")
def full_step(setup):
    s = setup
    batch = make_batch(s["ids"], s["labels"], s["mask"], V, chunk_size=L, warmup_step=7.0)
    before = _copy(s["params"])
    after, counters, m = _run(s, batch)
    grads = jax.tree.map(lambda a, b: a - b, before, after)
    return batch, grads, counters, m


def test_loss_and_tbptt_grads_match_hand_composition(setup, full_step):
    s = setup
    batch, grads, counters, m = full_step
    cfg = s["cfg"]
    ids, labels, mask = (np.asarray(a[0]) for a in (batch.input_ids, batch.labels, batch.attention_mask))
    rosa = batch.rosa_ids[0]
    # chunk ratios by hand: targets 1..T-1 belong to chunk (j-1)//L; tokens to chunk j//L
    sup = (labels != -100).astype(np.float64)
    m_c = np.array([sup[:, 1:L + 1].sum(), sup[:, L + 1:].sum()])
    r_c = np.array([mask[:, :L].sum(), mask[:, L:].sum()], np.float64)
    lr_c, tr_c = m_c / m_c.sum(), r_c / r_c.sum()

    def hand(params):
        model = nnx.merge(s["graphdef"], params, s["rest"])
        state = zeros_state(cfg, B)
        total, parts = 0.0, []
        for c in range(2):
            sl = slice(c * L, (c + 1) * L)
            lab = jnp.concatenate([jnp.asarray(labels), jnp.full((B, 1), -100, jnp.int32)], 1)[:, c * L:(c + 1) * L + 1]
            out, new = forward(model, jnp.asarray(ids[:, sl]), state, mode=RunMode.train(), rosa_ids=rosa[:, sl],
                               attention_mask=jnp.asarray(mask[:, sl]), drift_seed=None if c == 0 else state.drift,
                               warmup_step=7.0)
            lm = chunked_lm_loss(out.hidden, model.tok_emb.embedding[...], lab, z_loss_weight=cfg.z_loss_weight)
            p, _ = ponder_cost(out, jnp.asarray(mask[:, sl]))
            cm = commitment_cost(out, jnp.asarray(mask[:, sl]))
            aux = 0.01 * p + 0.5 * (cm + jax.lax.stop_gradient(jnp.minimum(cm, 2.0) - cm))
            total = total + lm.loss * lr_c[c] + aux * tr_c[c]
            parts.append(lm.ce * lr_c[c])
            state = stop_gradient(new)
        return total, sum(parts)

    (loss, ce), g_hand = jax.jit(jax.value_and_grad(hand, has_aux=True))(s["params"])
    assert int(counters.updates) == 1 and int(counters.skipped) == 0
    np.testing.assert_allclose(float(m.loss), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(m.ce), float(ce), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_hand)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-6)


def test_accumulating_two_half_batches_equals_one_batch(setup, full_step):
    s = setup
    _, g_full, _, m_full = full_step
    # both rows have the same supervised and real token counts, so the means agree
    halves = make_batch(s["ids"][:, None], s["labels"][:, None], s["mask"][:, None], V, chunk_size=L,
                        warmup_step=7.0)
    assert halves.input_ids.shape == (B, 1, T)
    before = _copy(s["params"])
    after, counters, m = _run(s, halves)  # divisor = A = 2
    g_acc = jax.tree.map(lambda a, b: a - b, before, after)
    np.testing.assert_allclose(float(m.loss), float(m_full.loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_acc), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-6)


def test_nonfinite_update_is_skipped_and_counted(setup, full_step):
    s = setup
    batch = full_step[0]
    # The model sanitises non-finite activations, so poison the loss itself: a NaN loss weight.
    w = np.asarray(batch.loss_weights).copy()
    w[0, 0, 5] = np.nan
    bad = batch._replace(loss_weights=jnp.asarray(w))
    ref = _copy(s["params"])
    after, counters, m = _run(s, bad)
    assert int(counters.updates) == 0 and int(counters.skipped) == 1 and int(counters.nonfinite_batches) == 1
    assert not bool(m.applied)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_parameter_groups_follow_the_reference_rule(setup):
    groups = param_groups(setup["params"], setup["cfg"])
    assert len(groups["decay"]) == 24 and len(groups["no_decay"]) == 65
    for name in ("tok_emb.weight", "rosa_emb.weight", "qproj.weight", "h_rnn.key_cm.weight", "l_to_out.weight"):
        assert name in groups["decay"]
    for name in ("h_deepemb.weight", "l_deepemb.weight", "val_proj.weight", "h_rnn.ln1.weight", "out_norm.weight",
                 "ltm.keys", "persistent", "in_proj.bias", "h_rnn.w1", "rosa_gate_logit"):
        assert name in groups["no_decay"]
    assert "time_freqs" not in groups["decay"] + groups["no_decay"]


def test_lr_schedule_matches_the_reference():
    sched = make_schedule(OptimConfig(starting_lr=1e-4, min_lr=1e-6, warmup_ratio=0.25, total_updates=10))
    want = [3.4e-5, 6.7e-5, 1e-4, 1e-4, 9.51e-5, 8.136e-5, 6.151e-5, 3.949e-5, 1.964e-5, 5.902e-6, 1e-6, 1e-6]
    np.testing.assert_allclose([float(sched(u)) for u in range(12)], want, rtol=2e-3)
