"""The fused WKV step (XLA FFI, custom_vjp, vmap) against its pure-JAX oracle, and dispatch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.kernels import wkv as K
from hierarchos_jax.model.rwkv import RWKVCell

ARGNAMES = ("P", "r", "w", "k", "v", "a", "b")
CLIP = 1.5  # clips a share of the new state's entries (|S'| ~ 1-4 here)


def make_inputs(seed: int, lead: tuple[int, ...], n: int):
    """A packed state [..., N, 3 + N] and the six vectors, scaled like the cell's."""
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((*lead, n, K.SLOTS + n)).astype(np.float32)
    vec = lambda s: (rng.standard_normal((*lead, n)) * s).astype(np.float32)
    kk = vec(1.0)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    gate = 1.0 / (1.0 + np.exp(-vec(1.0)))
    return S, vec(1.0), vec(2.0), vec(1.0), vec(1.0), -kk, (kk * gate).astype(np.float32)


def loss_of(fn, clip=CLIP):
    """A scalar that weights every output element differently (non-trivial cotangents)."""

    def loss(*args):
        y, P = fn(*args, clip)
        return jnp.sum(jnp.sin(y) * y) + 0.1 * jnp.sum(P * P * jnp.cos(P))

    return loss


def oracle(*args):
    return K.wkv_packed_reference(*args)


def kernel(*args):
    return K.wkv_packed_ffi(*args)


def assert_close(got, want, rel=2e-6, what=""):
    """Equal up to float32 summation-order rounding: rel x max|want| x sqrt(terms)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float32, what
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale * np.sqrt(want.shape[-1]), err_msg=what)


@pytest.fixture(scope="module", autouse=True)
def cpu_targets():
    assert K.ffi_available("cpu"), "hierarchos_jax._wkv must be built (pip install -e .)"


SHAPES = [((1, 1), 8, CLIP), ((3, 2), 16, CLIP), ((1, 2), 64, np.inf), ((3, 1), 64, CLIP), ((2,), 16, 50.0)]


@pytest.mark.parametrize("lead,n,clip", SHAPES)
def test_forward_matches_oracle(lead, n, clip):
    args = make_inputs(1, lead, n)
    with jax.default_matmul_precision("highest"):
        want_y, want_P = oracle(*args, clip)
        got_y, got_P = jax.jit(kernel, static_argnums=7)(*args, clip)
    assert_close(got_y, want_y)
    assert_close(got_P, want_P)
    np.testing.assert_array_equal(np.asarray(got_P)[..., :3], args[0][..., :3])  # slots copied
    if np.isfinite(clip):
        assert np.abs(np.asarray(got_P)[..., 3:]).max() == min(clip, np.abs(np.asarray(want_P)[..., 3:]).max())


@pytest.mark.parametrize("lead,n,clip", SHAPES)
def test_gradients_match_oracle_autodiff(lead, n, clip):
    args = make_inputs(2, lead, n)
    argnums = tuple(range(7))
    with jax.default_matmul_precision("highest"):
        want = jax.grad(loss_of(oracle, clip), argnums)(*args)
        got = jax.jit(jax.grad(loss_of(kernel, clip), argnums))(*args)
    for name, g, w in zip(ARGNAMES, got, want):
        assert np.abs(np.asarray(w)).max() > 0, name
        assert_close(g, w, rel=5e-6, what=name)


def test_clip_bounds_and_extremes():
    """w beyond and on the [-60, 30] clip, and S' on the state clip: jnp.clip's values and
    gradients (0 outside, 1/2 exactly on a bound)."""
    P, r, w, k, v, a, b = make_inputs(3, (2, 2), 16)
    w = w.copy()
    w[0, 0, :6] = [-80.0, 45.0, -61.0, 31.0, -60.0, 30.0]
    w[1, 1, :2] = [3.0, 4.0]  # decay ~ exp(-e^4): strong forgetting
    # Row 0 of head (0, 1): S' = 0 * d + s * 0 + v_0 * k_j = 0.75 * k_j, with k_0 = 2: exactly CLIP.
    P[0, 1, 0, 3:] = 0.0
    v[0, 1, 0], k[0, 1, 0], k[0, 1, 1] = 0.75, 2.0, -2.0
    args = (P, r, w, k, v, a, b)
    with jax.default_matmul_precision("highest"):
        want = jax.grad(loss_of(oracle), (0, 2, 3))(*args)
        got = jax.jit(jax.grad(loss_of(kernel), (0, 2, 3)))(*args)
        _, P_new = jax.jit(kernel, static_argnums=7)(*args, CLIP)
        assert_close(P_new, oracle(*args, CLIP)[1])
    assert P_new[0, 1, 0, 3] == CLIP and P_new[0, 1, 0, 4] == -CLIP
    assert np.all(np.asarray(got[1])[0, 0, :4] == 0.0)
    for g, w_ in zip(got, want):
        assert_close(g, w_, rel=5e-6)


def test_vmap_values_and_gradients():
    """vmap (nested, and over the gradient) folds the mapped axes into the kernel's rows."""
    args = make_inputs(4, (2, 3, 2), 16)  # vmap axes 2 x 3 over [H=2, N=16]
    with jax.default_matmul_precision("highest"):
        want = oracle(*args, CLIP)
        mapped = jax.vmap(jax.vmap(kernel, in_axes=(0,) * 7 + (None,)), in_axes=(0,) * 7 + (None,))
        got = jax.jit(mapped, static_argnums=7)(*args, CLIP)
        for g, w in zip(got, want):
            assert_close(g, w)
        grad = lambda f: jax.grad(loss_of(f), (0, 1, 5))
        want_g = jax.vmap(grad(oracle))(*args)
        got_g = jax.jit(jax.vmap(grad(kernel)))(*args)
    for g, w in zip(got_g, want_g):
        assert_close(g, w, rel=5e-6)


def test_vmap_with_unmapped_operands():
    """in_axes=None operands are broadcast (the kernel needs every operand batched alike)."""
    P, r, w, k, v, a, b = make_inputs(5, (4, 2), 8)
    with jax.default_matmul_precision("highest"):
        f = lambda fn: jax.vmap(lambda *t: fn(*t, CLIP), in_axes=(0, 0, None, 0, 0, None, 0))
        want = f(oracle)(P, r, w[0], k, v, a[0], b)
        got = jax.jit(f(kernel))(P, r, w[0], k, v, a[0], b)
    for g, w_ in zip(got, want):
        assert_close(g, w_)


def test_bad_shapes_raise_one_clear_error():
    P = jnp.zeros((2, 8, 11), jnp.float32)
    bad = jnp.zeros((2, 4), jnp.float32)
    good = jnp.zeros((2, 8), jnp.float32)
    with pytest.raises(Exception, match="hierarchos_wkv_fwd_f32: vector operand #0 must be"):
        jax.block_until_ready(K._ffi_forward(P, bad, good, good, good, good, good, 1.0))
    with pytest.raises(Exception, match="packed state must be"):
        jax.block_until_ready(K._ffi_forward(P[..., :10], good, good, good, good, good, good, 1.0))
    with pytest.raises(ValueError, match=r"packed WKV state must be \[..., N, N \+ 3\]"):
        K.wkv_step(jnp.zeros((2, 8, 8)), good, good, good, good, good, good)


def test_resolve_impl(monkeypatch):
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    assert K.resolve_impl(platform="cpu") == K.AUTO_IMPL["cpu"]
    assert K.resolve_impl("ffi", platform="cpu") == "ffi"
    assert K.resolve_impl("jax", platform="cpu") == "jax"
    monkeypatch.setenv(K.ENV_VAR, "FFI")
    assert K.resolve_impl(platform="cpu") == "ffi"
    monkeypatch.setenv(K.ENV_VAR, "jax")
    assert K.resolve_impl(platform="cpu") == "jax"
    monkeypatch.setenv(K.ENV_VAR, "triton")
    with pytest.raises(ValueError, match="HIERARCHOS_WKV must be one of jax, ffi, auto"):
        K.resolve_impl(platform="cpu")
    with pytest.raises(ValueError, match="no FFI module is built for platform 'tpu'"):
        K.resolve_impl("ffi", platform="tpu")
    assert K.resolve_impl("auto", platform="tpu") == "jax"


def test_model_cell_same_with_either_path(monkeypatch):
    """The RWKV cell under HIERARCHOS_WKV=ffi matches =jax in outputs, state and gradients."""
    cell = RWKVCell(32, 8, (8, 8, 8), channel_mix_key_clamp=12.0, deepembed_clamp=4.0, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(cell)
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((3, 32)), jnp.float32)
    state = jnp.asarray(rng.standard_normal((3, 32, 3 + 8)), jnp.float32)

    def run(params, x, state):
        out, new = nnx.merge(graphdef, params)(x, state)
        return jnp.sum(out * out) + jnp.sum(new[:, :, 3:] ** 2), (out, new)

    results = {}
    for mode in ("jax", "ffi"):
        monkeypatch.setenv(K.ENV_VAR, mode)
        with jax.default_matmul_precision("highest"):
            results[mode] = jax.jit(jax.grad(run, argnums=(0, 1, 2), has_aux=True))(params, x, state)
    (g_jax, (o_jax, s_jax)), (g_ffi, (o_ffi, s_ffi)) = results["jax"], results["ffi"]
    assert_close(o_ffi, o_jax)
    assert_close(s_ffi, s_jax)
    for a, b in zip(jax.tree.leaves(g_ffi), jax.tree.leaves(g_jax)):
        assert_close(a, b, rel=1e-5)


def _gpu_devices():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


@pytest.mark.parametrize("lead,n", [((3, 2), 16), ((5, 4), 64), ((2, 1), 128)])
def test_cuda_matches_oracle(lead, n):
    if not _gpu_devices():
        pytest.skip("no GPU visible to jax")
    if not K.ffi_available("cuda"):
        pytest.skip("hierarchos_jax._wkv_cuda not built (HIERARCHOS_CUDA=OFF or no nvcc at build time)")
    args = make_inputs(7, lead, n)
    argnums = tuple(range(7))
    cpu, gpu = jax.devices("cpu")[0], _gpu_devices()[0]
    with jax.default_matmul_precision("highest"):
        with jax.default_device(cpu):
            want = oracle(*args, CLIP)
            want_g = jax.grad(loss_of(oracle), argnums)(*args)
        with jax.default_device(gpu):
            assert K.resolve_impl(platform="gpu") == "ffi"
            got = jax.jit(kernel, static_argnums=7)(*args, CLIP)
            got_g = jax.jit(jax.grad(loss_of(kernel), argnums))(*args)
            got_v = jax.jit(jax.vmap(lambda *t: kernel(*t, CLIP)))(*args)
    for g, w in zip((*got, *got_v), (*want, *want)):
        assert_close(g, w)
    for g, w in zip(got_g, want_g):
        assert_close(g, w, rel=5e-6)
