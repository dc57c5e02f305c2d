"""RWKV-7 cell (``RWKVCell.__call__``) against an independent NumPy oracle of spec §3.

The oracle below is written from model.md §3.3–3.5 only (float64), and the cell gets
random, non-degenerate parameters (non-zero low-rank matrices, perturbed mixes and
norms), a random packed state with a non-zero matrix part, and DeepEmbed vectors with
NaN / ±inf / out-of-range entries. A few "sensitivity" checks make sure the oracle
would notice the easy-to-miss details (new-state readout, GroupNorm eps, clamps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.model.rwkv import RWKVCell

W, N = 32, 16
H = W // N
R = 8  # low-rank size used for w, a, g
CK, CD = 12.0, 4.0


# ----------------------------------------------------------------------------- oracle
def _ln(x, scale, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def rwkv_oracle(p, x, state, deep, *, ck=CK, cd=CD, gn_eps=6.4e-4, readout_new=True, state_clip=True):
    """Spec §3.3–3.5 in float64. ``p`` maps parameter names to arrays (Dense kernels [in, out])."""
    x = x.astype(np.float64)
    state = state.astype(np.float64)
    B = x.shape[0]
    p_tm, p_cm = state[:, :, 0], state[:, :, 1]
    S = state[:, :, 3:].reshape(B, H, N, N)  # S[b, h, i, j], channel c = h*N + i

    xh = _ln(x, p["ln1_scale"], p["ln1_bias"])

    def mix(mu):
        return xh + (p_tm - xh) * mu

    xi_r, xi_w, xi_k, xi_v, xi_a, xi_g = (mix(p[n]) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
    r = xi_r @ p["receptance"]
    k = xi_k @ p["key"]
    v = xi_v @ p["value"]
    a = _sigmoid(p["a0"] + (xi_a @ p["a1"]) @ p["a2"])
    g = _sigmoid(xi_g @ p["g1"]) @ p["g2"]
    w = -np.logaddexp(-(p["w0"] + np.tanh(xi_w @ p["w1"]) @ p["w2"]), 0.0) - 0.5

    kap = (k * p["k_k"]).reshape(B, H, N)
    kap_hat = kap / np.maximum(np.linalg.norm(kap, axis=-1, keepdims=True), 1e-12)
    kp = k * (1.0 + (a - 1.0) * p["k_a"])
    alpha = -kap_hat
    beta = kap_hat * a.reshape(B, H, N)

    d = np.exp(-np.exp(np.clip(w, -60.0, 30.0))).reshape(B, H, N)
    kp_h, v_h, r_h = kp.reshape(B, H, N), v.reshape(B, H, N), r.reshape(B, H, N)
    S_new = np.empty_like(S)
    y = np.empty((B, H, N))
    for b in range(B):
        for h in range(H):
            Sm = S[b, h]
            s = Sm @ alpha[b, h]  # s_i = sum_j S_ij alpha_j (old state)
            Sn = Sm * d[b, h][None, :] + np.outer(s, beta[b, h]) + np.outer(v_h[b, h], kp_h[b, h])
            S_new[b, h] = Sn
            y[b, h] = (Sn if readout_new else Sm) @ r_h[b, h]
    # GroupNorm over H groups of N consecutive channels, biased variance.
    mu = y.mean(-1, keepdims=True)
    var = ((y - mu) ** 2).mean(-1, keepdims=True)
    yt = ((y - mu) / np.sqrt(var + gn_eps)).reshape(B, W) * p["ln_x_scale"] + p["ln_x_bias"]
    u = np.sum(r_h * kp_h * p["r_k"][None], axis=-1, keepdims=True)
    bonus = (u * v_h).reshape(B, W)
    x1 = x + ((yt + bonus) * g) @ p["output"]

    xh2 = _ln(x1, p["ln2_scale"], p["ln2_bias"])
    z = xh2 + (p_cm - xh2) * p["x_k_cm"]
    q = z @ p["key_cm"]
    q_unclipped = q
    if ck > 0:
        q = np.clip(q, -ck, ck)
    f = np.maximum(q, 0.0) ** 2
    if deep is not None:
        m = deep.astype(np.float64)
        if cd > 0:
            m = np.where(np.isnan(m), 1.0, m)
            m = np.where(np.isposinf(m), cd, m)
            m = np.where(np.isneginf(m), -cd, m)
            m = np.clip(m, -cd, cd)
        f = f * m
        if ck > 0 and cd > 0:
            f = np.clip(f, -ck * ck * cd, ck * ck * cd)
    out = x1 + f @ p["value_cm"]
    packed = np.concatenate([xh[:, :, None], xh2[:, :, None], v[:, :, None], S_new.reshape(B, W, N)], axis=-1)
    info = {"max_abs_state": np.abs(packed).max(), "max_abs_q": np.abs(q_unclipped).max()}
    if state_clip:
        packed = np.clip(packed, -50.0, 50.0)
    return out, packed, info


# ----------------------------------------------------------------------------- fixtures
PARAM_PATHS = {
    "x_r": "x_r", "x_w": "x_w", "x_k": "x_k", "x_v": "x_v", "x_a": "x_a", "x_g": "x_g",
    "w1": "w1", "w2": "w2", "w0": "w0", "a1": "a1", "a2": "a2", "a0": "a0", "g1": "g1", "g2": "g2",
    "k_k": "k_k", "k_a": "k_a", "r_k": "r_k", "x_k_cm": "x_k_cm",
    "ln1_scale": "ln1_scale", "ln1_bias": "ln1_bias", "ln2_scale": "ln2_scale", "ln2_bias": "ln2_bias",
    "receptance": "receptance.kernel", "key": "key.kernel", "value": "value.kernel", "output": "output.kernel",
    "ln_x_scale": "ln_x_scale", "ln_x_bias": "ln_x_bias", "key_cm": "key_cm.kernel", "value_cm": "value_cm.kernel",
}


def _var(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def random_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(W)
    p = {}
    for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "x_k_cm"):
        p[n] = rng.uniform(0.0, 1.0, W)
    for n in ("w", "a", "g"):
        p[n + "1"] = rng.normal(0.0, 0.4, (W, R))
        p[n + "2"] = rng.normal(0.0, 0.4, (R, W))
    p["w0"] = rng.normal(-1.0, 1.5, W)
    p["w0"][:3] = [-100.0, 5.0, -70.0]  # exercise the extreme ends of the decay
    p["a0"] = rng.normal(0.0, 1.0, W)
    p["k_k"] = rng.normal(0.7, 0.3, W)
    p["k_a"] = rng.normal(1.0, 0.3, W)
    p["r_k"] = rng.normal(0.0, 0.5, (H, N))
    for n in ("ln1", "ln2", "ln_x"):
        p[n + "_scale"] = rng.normal(1.0, 0.3, W)
        p[n + "_bias"] = rng.normal(0.0, 0.2, W)
    p["receptance"] = rng.normal(0.0, s, (W, W))
    p["key"] = rng.normal(0.0, 1.5 * s, (W, W))
    p["value"] = rng.normal(0.0, 2.0 * s, (W, W))
    p["output"] = rng.normal(0.0, 0.5 * s, (W, W))
    p["key_cm"] = rng.normal(0.0, 7.0 * s, (W, 4 * W))  # large enough that some keys hit the +-12 clamp
    p["value_cm"] = rng.normal(0.0, 0.5 / np.sqrt(4 * W), (4 * W, W))
    return {k: v.astype(np.float32) for k, v in p.items()}


def make_cell(p: dict, *, ck=CK, cd=CD) -> RWKVCell:
    cell = RWKVCell(W, N, (R, R, R), channel_mix_key_clamp=ck, deepembed_clamp=cd, rngs=nnx.Rngs(0))
    for name, path in PARAM_PATHS.items():
        var = _var(cell, path)
        assert tuple(var[...].shape) == p[name].shape, (name, var[...].shape, p[name].shape)
        var.set_value(jnp.asarray(p[name]))
    return cell


def random_inputs(seed: int, B: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, (B, W)).astype(np.float32)
    state = np.zeros((B, W, 3 + N), np.float32)
    state[:, :, 0] = rng.normal(0.0, 1.0, (B, W))
    state[:, :, 1] = rng.normal(0.0, 1.0, (B, W))
    state[:, :, 2] = rng.normal(0.0, 1.0, (B, W))
    state[:, :, 3:] = rng.normal(0.0, 20.0, (B, W, N))  # some entries past the +-50 clip
    deep = rng.normal(1.0, 3.0, (B, 4 * W)).astype(np.float32)
    deep[0, :6] = [np.nan, np.inf, -np.inf, 9.0, -9.0, np.nan]
    deep[1, 10:13] = [np.inf, np.nan, -np.inf]
    return x, state, deep


@jax.jit
def _cell_call(cell, x, state, deep):
    return cell(x, state, deep)


def run_cell(cell, x, state, deep):
    with jax.default_matmul_precision("highest"):
        y, s = _cell_call(cell, jnp.asarray(x), jnp.asarray(state), None if deep is None else jnp.asarray(deep))
    return np.asarray(y), np.asarray(s)


def assert_close(got, want, tol=1e-5):
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


@pytest.fixture(scope="module")
def params():
    return random_params(1)


@pytest.fixture(scope="module")
def cell(params):
    return make_cell(params)


# ----------------------------------------------------------------------------- tests
def test_cell_matches_oracle_with_deepembed(cell, params):
    x, state, deep = random_inputs(2)
    y, s = run_cell(cell, x, state, deep)
    y_ref, s_ref, info = rwkv_oracle(params, x, state, deep)
    # The case really exercises the clamps.
    assert info["max_abs_state"] > 50.0, info
    assert info["max_abs_q"] > CK, info
    assert y.shape == (3, W) and s.shape == (3, W, 3 + N)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(s))
    assert_close(y, y_ref)
    assert_close(s, s_ref)
    assert np.max(np.abs(s)) <= 50.0
    assert np.sum(np.abs(s) == 50.0) > 0


def test_cell_matches_oracle_without_deepembed(cell, params):
    x, state, _ = random_inputs(3)
    y, s = run_cell(cell, x, state, None)
    y_ref, s_ref, _ = rwkv_oracle(params, x, state, None)
    assert_close(y, y_ref)
    assert_close(s, s_ref)


def test_zero_state_first_step(cell, params):
    """A fresh (all-zero) state: token shift sees zeros, matrix state starts at v k'^T."""
    x, _, deep = random_inputs(4)
    state = np.zeros((3, W, 3 + N), np.float32)
    y, s = run_cell(cell, x, state, deep)
    y_ref, s_ref, _ = rwkv_oracle(params, x, state, deep)
    assert_close(y, y_ref)
    assert_close(s, s_ref)


def test_oracle_is_sensitive_to_the_easy_to_miss_details(cell, params):
    """Variants of the oracle (old-state readout, LayerNorm eps in GroupNorm, no state clip,
    no key clamp) are far from the cell, so the comparisons above can fail."""
    x, state, deep = random_inputs(2)
    y, s = run_cell(cell, x, state, deep)
    for kwargs in ({"readout_new": False}, {"ck": 0.0}):
        y_bad, _, _ = rwkv_oracle(params, x, state, deep, **kwargs)
        assert np.max(np.abs(y - y_bad)) > 1e-3, kwargs
    _, s_bad, _ = rwkv_oracle(params, x, state, deep, state_clip=False)
    assert np.max(np.abs(s - s_bad)) > 1e-2


def test_groupnorm_eps_with_small_readout(params):
    """Small readouts (group variance ~ eps): GroupNorm must use eps = 6.4e-4."""
    p = dict(params)
    p["value"] = p["value"] * np.float32(0.01)
    cell = make_cell(p)
    x, state, deep = random_inputs(10)
    state[:, :, 3:] *= 0.001
    y, s = run_cell(cell, x, state, deep)
    y_ref, s_ref, _ = rwkv_oracle(p, x, state, deep)
    assert_close(y, y_ref)
    assert_close(s, s_ref)
    y_bad, _, _ = rwkv_oracle(p, x, state, deep, gn_eps=1e-5)
    assert np.max(np.abs(y - y_bad)) > 1e-2


def test_deepembed_nan_acts_as_one_and_inf_as_clamp(cell):
    x, state, _ = random_inputs(5, B=2)
    ones = np.ones((2, 4 * W), np.float32)
    y1, s1 = run_cell(cell, x, state, ones)
    y_nan, s_nan = run_cell(cell, x, state, np.full_like(ones, np.nan))
    np.testing.assert_array_equal(y_nan, y1)
    np.testing.assert_array_equal(s_nan, s1)
    y_cd, _ = run_cell(cell, x, state, np.full_like(ones, CD))
    y_inf, _ = run_cell(cell, x, state, np.full_like(ones, np.inf))
    y_big, _ = run_cell(cell, x, state, np.full_like(ones, 1e6))
    np.testing.assert_array_equal(y_inf, y_cd)
    np.testing.assert_array_equal(y_big, y_cd)
    y_mcd, _ = run_cell(cell, x, state, np.full_like(ones, -CD))
    y_minf, _ = run_cell(cell, x, state, np.full_like(ones, -np.inf))
    np.testing.assert_array_equal(y_minf, y_mcd)
    assert np.max(np.abs(y_cd - y1)) > 1e-3  # the multiplier matters at all
    # DeepEmbed only touches the channel mix: the packed state is the same.
    _, s_cd = run_cell(cell, x, state, np.full_like(ones, CD))
    np.testing.assert_array_equal(s_cd, s1)


def test_clamps_disabled(params):
    """ck = cd = 0: no key clip and the DeepEmbed multiplier is used as is."""
    cell = make_cell(params, ck=0.0, cd=0.0)
    x, state, _ = random_inputs(6)
    deep = np.random.default_rng(7).normal(0.0, 6.0, (3, 4 * W)).astype(np.float32)  # many |m| > 4
    y, s = run_cell(cell, x, state, deep)
    y_ref, s_ref, info = rwkv_oracle(params, x, state, deep, ck=0.0, cd=0.0)
    assert info["max_abs_q"] > CK
    assert_close(y, y_ref)
    assert_close(s, s_ref)
    y_clamped, _, _ = rwkv_oracle(params, x, state, deep)
    assert np.max(np.abs(y_ref - y_clamped)) > 1e-2


def test_zero_key_head_is_finite(params):
    """A head whose key is exactly zero: kk normalisation uses max(norm, 1e-12), no NaN."""
    p = dict(params)
    key = p["key"].copy()
    key[:, :N] = 0.0  # head 0 has k = 0
    p["key"] = key
    cell = make_cell(p)
    x, state, deep = random_inputs(8)
    y, s = run_cell(cell, x, state, deep)
    y_ref, s_ref, _ = rwkv_oracle(p, x, state, deep)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(s))
    assert_close(y, y_ref)
    assert_close(s, s_ref)


def test_state_layout_slots(cell, params):
    """Slot 0 = LN1(x), slot 1 = LN2(x1), slot 2 = v (clipped), matrix rows per channel."""
    x, state, deep = random_inputs(9)
    _, s = run_cell(cell, x, state, deep)
    xh = _ln(x.astype(np.float64), params["ln1_scale"], params["ln1_bias"])
    np.testing.assert_allclose(s[:, :, 0], xh, rtol=1e-5, atol=1e-5)
    mix_v = xh + (state[:, :, 0] - xh) * params["x_v"]
    v = np.clip(mix_v @ params["value"], -50, 50)
    np.testing.assert_allclose(s[:, :, 2], v, rtol=1e-5, atol=1e-5)
