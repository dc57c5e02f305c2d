"""Language-model loss and auxiliary-cost reductions (spec §7.1–7.3) against NumPy."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax.model.losses import (
    chunked_lm_loss,
    commitment_cost,
    lm_loss,
    ponder_cost,
    weighted_mean,
)

B, T, V, C = 2, 6, 11, 5
ZW = 1e-2  # z-loss weight large enough to matter at the tolerances used


def lm_oracle(logits, labels, z_w, loss_weights=None):
    """§7.1 in float64: returns (loss, ce, z)."""
    logits = logits.astype(np.float64)
    Bn, Tn, _ = logits.shape
    L = labels.shape[1]
    n = min(Tn, max(0, L - 1))
    tgt = labels[:, 1:n + 1]
    lg = logits[:, :n]
    valid = tgt != -100
    if loss_weights is None:
        w = valid.astype(np.float64)
    else:
        lw = np.zeros((Bn, L))
        m = min(L, loss_weights.shape[1])
        lw[:, :m] = loss_weights[:, :m]
        w = valid * lw[:, 1:n + 1]
    if not np.any(valid):
        return 0.0, 0.0, 0.0
    mx = lg.max(-1, keepdims=True)
    lse = (mx + np.log(np.sum(np.exp(lg - mx), -1, keepdims=True)))[..., 0]
    safe = np.where(valid, tgt, 0)
    picked = np.take_along_axis(lg, safe[..., None], -1)[..., 0]
    den = max(w.sum(), 1e-8)
    ce = np.sum(w * (lse - picked)) / den
    z = z_w * np.sum(w * lse ** 2) / den if z_w > 0 else 0.0
    return ce + z, ce, z


def data(seed):
    rng = np.random.default_rng(seed)
    logits = np.clip(rng.normal(0, 8, (B, T, V)), -30, 30).astype(np.float32)
    labels = rng.integers(0, V, (B, T + 1)).astype(np.int32)
    labels[0, 2] = -100
    labels[1, 5] = -100
    weights = rng.uniform(0.0, 2.0, (B, T + 1)).astype(np.float32)
    return logits, labels, weights


_lm_loss = jax.jit(lm_loss, static_argnames=("z_loss_weight",))


def check(logits, labels, lw=None, z_w=ZW):
    got = _lm_loss(jnp.asarray(logits), jnp.asarray(labels), z_loss_weight=z_w,
                   loss_weights=None if lw is None else jnp.asarray(lw))
    want = lm_oracle(logits, labels, z_w, lw)
    np.testing.assert_allclose([float(got.loss), float(got.ce), float(got.z_loss)], want, rtol=2e-6, atol=1e-7)
    return got, want


@pytest.mark.parametrize("L", [T + 1, T, 4, 2])
def test_lm_loss_label_lengths(L):
    logits, labels, _ = data(0)
    _got, want = check(logits, labels[:, :L])
    assert want[0] > 0.5 and want[2] > 0.0
    # T-long labels drop the last prediction; T+1-long use it.
    if L == T:
        other = lm_oracle(logits, labels, ZW)[0]
        assert abs(other - want[0]) > 1e-4


def test_lm_loss_labels_too_long():
    logits, labels, _ = data(1)
    with pytest.raises(ValueError):
        lm_loss(jnp.asarray(logits), jnp.asarray(np.concatenate([labels, labels[:, :1]], 1)), z_loss_weight=ZW)


def test_lm_loss_all_ignored_and_single_label():
    logits, labels, _ = data(2)
    ignored = np.full_like(labels, -100)
    ignored[:, 0] = 3  # position 0 is never a target
    got, _ = check(logits, ignored)
    assert float(got.loss) == 0.0 and float(got.weight) == 0.0
    got, _ = check(logits, labels[:, :1])  # n = 0 predictions
    assert float(got.loss) == 0.0


@pytest.mark.parametrize("wlen", [T + 1, T, 3, 1])
def test_lm_loss_weights_zero_padded(wlen):
    logits, labels, weights = data(3)
    got, want = check(logits, labels, weights[:, :wlen])
    if wlen == 1:
        assert float(got.loss) == 0.0  # only the (unused) first weight is given
    # Padding means zeros, not "weights of one".
    padded_ones = np.ones_like(weights)
    padded_ones[:, :wlen] = weights[:, :wlen]
    if wlen < T + 1:
        assert abs(lm_oracle(logits, labels, ZW, padded_ones)[0] - want[0]) > 1e-4


def test_lm_loss_z_loss_term():
    logits, labels, _ = data(4)
    with_z, _ = check(logits, labels, z_w=ZW)
    without, _ = check(logits, labels, z_w=0.0)
    assert float(without.z_loss) == 0.0
    np.testing.assert_allclose(float(with_z.loss) - float(without.loss), float(with_z.z_loss), rtol=1e-5)
    assert float(with_z.z_loss) > 1e-3


# ----------------------------------------------------------------------------- chunked
def dense_from_hidden(hidden, emb, labels, lw):
    logits = jnp.clip(hidden @ emb.T, -30.0, 30.0)
    return lm_loss(logits, labels, z_loss_weight=ZW, loss_weights=lw).loss


@jax.jit
def _dense_vg(h, e, lab, lw):
    return jax.value_and_grad(dense_from_hidden, argnums=(0, 1))(h, e, lab, lw)


@functools.partial(jax.jit, static_argnames=("rows",))
def _chunked_vg(h, e, lab, lw, rows):
    def chunked(h, e):
        return chunked_lm_loss(h, e, lab, z_loss_weight=ZW, loss_weights=lw, rows_per_chunk=rows).loss

    return jax.value_and_grad(chunked, argnums=(0, 1))(h, e)


@pytest.mark.parametrize("rows,use_weights", [(0, False), (1, False), (5, True), (7, False), (7, True)])
def test_chunked_loss_matches_dense_value_and_gradient(rows, use_weights):
    rng = np.random.default_rng(5)
    hidden = rng.normal(0, 4, (B, T, C)).astype(np.float32)
    emb = rng.normal(0, 2, (V, C)).astype(np.float32)
    assert np.max(np.abs(hidden @ emb.T)) > 30  # the logit clamp is exercised
    _, labels, weights = data(5)
    lw = jnp.asarray(weights[:, :4]) if use_weights else None
    h, e, lab = jnp.asarray(hidden), jnp.asarray(emb), jnp.asarray(labels)
    with jax.default_matmul_precision("highest"):
        dense, (gh_d, ge_d) = _dense_vg(h, e, lab, lw)
        value, (gh_c, ge_c) = _chunked_vg(h, e, lab, lw, rows=rows)
    np.testing.assert_allclose(float(value), float(dense), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gh_c), np.asarray(gh_d), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(ge_c), np.asarray(ge_d), rtol=1e-5, atol=1e-7)
    logits = np.clip(hidden.astype(np.float64) @ emb.T.astype(np.float64), -30, 30)
    np.testing.assert_allclose(float(value), lm_oracle(logits, labels, ZW, None if lw is None else weights[:, :4])[0],
                               rtol=1e-5)
    assert np.max(np.abs(np.asarray(gh_c))) > 1e-3


def test_chunked_loss_all_ignored():
    rng = np.random.default_rng(6)
    hidden = jnp.asarray(rng.normal(0, 1, (B, T, C)).astype(np.float32))
    emb = jnp.asarray(rng.normal(0, 1, (V, C)).astype(np.float32))
    labels = jnp.full((B, T + 1), -100, jnp.int32)
    out = chunked_lm_loss(hidden, emb, labels, z_loss_weight=ZW, rows_per_chunk=5)
    assert float(out.loss) == 0.0 and float(out.weight) == 0.0


# ----------------------------------------------------------------------------- aux reductions
def test_weighted_mean():
    cost = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert float(weighted_mean(cost, jnp.zeros((2, 3)))) == 0.0
    w = jnp.asarray([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(float(weighted_mean(cost, w)), (2.0 + 18.0) / 4.0, rtol=1e-7)
    assert float(weighted_mean(cost, -jnp.ones((2, 3)))) == 0.0  # sum <= 0 -> 0
    g = jax.grad(lambda c: weighted_mean(c, jnp.zeros((2, 3))))(cost)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g) == 0.0)


class _Out(NamedTuple):
    ponder_cost: jax.Array
    planned: jax.Array
    commitment: jax.Array


def test_ponder_and_commitment_reductions():
    pc = jnp.asarray([[1.5, 0.0, 0.0, 2.5], [1.0, 0.0, 0.0, 3.0]])
    planned = jnp.asarray([True, False, False, True])
    commit = jnp.asarray([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    out = _Out(pc, planned, commit)
    mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    value, any_plan = ponder_cost(out, mask)
    np.testing.assert_allclose(float(value), (1.5 + 1.0 + 3.0) / 3.0, rtol=1e-6)
    assert bool(any_plan)
    value, _ = ponder_cost(out, None)
    np.testing.assert_allclose(float(value), 8.0 / 4.0, rtol=1e-6)
    np.testing.assert_allclose(float(commitment_cost(out, mask)), (0.1 + 0.2 + 0.3 + 0.5 + 0.6 + 0.8) / 6, rtol=1e-6)
    np.testing.assert_allclose(float(commitment_cost(out, None)), np.mean(np.asarray(commit)), rtol=1e-6)
    none_planned = _Out(pc * 0, jnp.zeros(4, bool), commit)
    value, any_plan = ponder_cost(none_planned, mask)
    assert float(value) == 0.0 and not bool(any_plan)
