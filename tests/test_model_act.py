"""ACT weighting of the manager's ponder outputs (spec §6.3 step 5 and 8) against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax.model.manager import act_mix

EPS = 1e-6


def act_oracle(outputs, halt, M):
    """Spec §6.3 step 5 over the first ``M`` collected outputs (float64)."""
    h = outputs[:M].astype(np.float64)
    p = halt[:M].astype(np.float64)
    p = np.where(np.isnan(p), 0.5, p)
    p = np.where(np.isposinf(p), 1 - EPS, p)
    p = np.where(np.isneginf(p), EPS, p)
    p = np.clip(p, EPS, 1 - EPS)
    c = np.ones_like(p)
    for s in range(1, M):
        c[s] = c[s - 1] * (1 - p[s - 1])
    w = p * c
    rem = c[M - 1] * (1 - p[M - 1])
    Z = w.sum(0) + rem + 1e-8
    mixed = np.sum((w / Z)[..., None] * h, axis=0) + (rem / Z)[..., None] * h[M - 1]
    return mixed, c.sum(0)


_act = jax.jit(act_mix)


def data(seed, Mmax=4, B=3, W=5):
    rng = np.random.default_rng(seed)
    outputs = rng.normal(0, 1, (Mmax, B, W)).astype(np.float32)
    halt = rng.uniform(0.05, 0.95, (Mmax, B)).astype(np.float32)
    return outputs, halt


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_act_mix_matches_oracle(M):
    outputs, halt = data(M)
    mixed, cost = _act(jnp.asarray(outputs), jnp.asarray(halt), jnp.int32(M))
    want_mixed, want_cost = act_oracle(outputs, halt, M)
    np.testing.assert_allclose(np.asarray(mixed), want_mixed, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cost), want_cost, rtol=1e-6)
    # Entries past M take no part: overwrite them with garbage.
    junk_o, junk_h = outputs.copy(), halt.copy()
    junk_o[M:] = 1e3
    junk_h[M:] = 0.123
    mixed2, cost2 = _act(jnp.asarray(junk_o), jnp.asarray(junk_h), jnp.int32(M))
    np.testing.assert_array_equal(np.asarray(mixed2), np.asarray(mixed))
    np.testing.assert_array_equal(np.asarray(cost2), np.asarray(cost))


def test_act_mix_one_output_is_identity_and_cost_one():
    outputs, halt = data(7)
    mixed, cost = _act(jnp.asarray(outputs), jnp.asarray(halt), jnp.int32(1))
    np.testing.assert_allclose(np.asarray(mixed), outputs[0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cost), np.ones(3, np.float32))


def test_act_mix_remainder_goes_to_last_collected_output():
    """With M < max the remainder weights h_{M-1}, not the last array entry."""
    outputs, halt = data(8)
    M = 2
    mixed, _ = _act(jnp.asarray(outputs), jnp.asarray(halt), jnp.int32(M))
    p0, p1 = halt[0].astype(np.float64), halt[1].astype(np.float64)
    w0, w1, rem = p0, (1 - p0) * p1, (1 - p0) * (1 - p1)
    want = (w0[:, None] * outputs[0] + (w1 + rem)[:, None] * outputs[1]) / (1 + 1e-8)
    np.testing.assert_allclose(np.asarray(mixed), want, rtol=1e-6, atol=1e-6)


def test_act_mix_sanitises_halt_probabilities():
    outputs, halt = data(9)
    halt[0, 0] = np.nan
    halt[1, 1] = np.inf
    halt[0, 2] = -np.inf
    halt[2, 0] = 0.0   # below the 1e-6 floor
    halt[2, 1] = 1.0   # above 1 - 1e-6
    mixed, cost = _act(jnp.asarray(outputs), jnp.asarray(halt), jnp.int32(4))
    want_mixed, want_cost = act_oracle(outputs, halt, 4)
    assert np.all(np.isfinite(np.asarray(mixed)))
    np.testing.assert_allclose(np.asarray(mixed), want_mixed, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cost), want_cost, rtol=1e-6)
    # NaN acts as 0.5: c_1 = 0.5 for row 0
    np.testing.assert_allclose(float(cost[0]), want_cost[0], rtol=1e-6)
    assert abs(want_cost[0] - (1 + 0.5 + 0.5 * (1 - halt[1, 0]) + 0.5 * (1 - halt[1, 0]) * (1 - EPS))) < 1e-6
