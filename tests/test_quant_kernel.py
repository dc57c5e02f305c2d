"""The quantized CPU kernels (``hierarchos_jax._quant`` through XLA FFI): matmul and
embedding lookup vs dequantize-then-dot in float64, AVX2 vs scalar path, thread counts,
vmap, the XLA fallback, and refusal of inconsistent buffers."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax import quant
from hierarchos_jax.quant import ops
from hierarchos_jax.quant.formats import QTYPES, get_format

native = pytest.importorskip("hierarchos_jax._quant")


def _problem(qtype, m, n=5, seed=0):
    fmt = get_format(qtype)
    k = 3 * 32 if fmt.block == 32 else 2 * 256  # K = 32*3 / 256*2: several blocks per row
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    packed = quant.quantize(w, qtype)
    deq = quant.dequantize(packed, qtype, k).astype(np.float64)
    return a, packed, a.astype(np.float64) @ deq.T, np.abs(a).astype(np.float64) @ np.abs(deq).T


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("m", [1, 3])
def test_matmul_matches_dequantize_then_dot(qtype, m):
    a, packed, ref, mag = _problem(qtype, m)
    for scalar in (False, True):
        y = np.asarray(jax.jit(lambda x, w, s=scalar: ops.qmatmul(x, w, qtype, scalar=s))(a, packed))
        assert y.shape == (m, 5) and y.dtype == np.float32
        # float32 accumulation: |error| <= K * eps * sum|a||w| (loose), observed ~1e-7 relative
        assert np.all(np.abs(y - ref) <= 1e-5 * mag + 1e-6), (scalar, np.abs(y - ref).max())
    # same through the XLA fallback used on other platforms
    y_xla = np.asarray(ops._xla_matmul(jnp.asarray(a), jnp.asarray(packed), get_format(qtype), a.shape[1]))
    assert np.all(np.abs(y_xla - ref) <= 1e-5 * mag + 1e-6)


@pytest.mark.parametrize("qtype", QTYPES)
def test_odd_shapes_match_dequantize_then_dot(qtype):
    """QuantizedLinear with in/out features that are not block multiples (zero-padded K) and
    odd batch shapes, AVX2 and scalar kernels and the XLA fallback vs float64 dequantize-then-dot."""
    from hierarchos_jax.quant.layers import QuantizedLinear

    rng = np.random.default_rng(11)
    fin, fout = (45, 7) if get_format(qtype).block == 32 else (300, 3)
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    bias = rng.standard_normal(fout).astype(np.float32)
    layer = QuantizedLinear.from_weight(w, qtype, bias)
    wq = np.asarray(layer.weight(), np.float64)
    assert wq.shape == (fout, fin)
    x = rng.standard_normal((2, 5, fin)).astype(np.float32)
    ref = x.astype(np.float64) @ wq.T + bias
    mag = np.abs(x).astype(np.float64) @ np.abs(wq).T + np.abs(bias)
    y = np.asarray(jax.jit(lambda v: layer(v))(x))
    assert y.shape == (2, 5, fout) and np.all(np.abs(y - ref) <= 1e-5 * mag + 1e-6)
    xp = np.pad(x.reshape(10, fin), ((0, 0), (0, layer.padded_in - fin)))
    packed = np.asarray(layer.packed[...])
    for scalar in (False, True):
        y = native.matmul(xp, packed, qtype, scalar=scalar)
        assert np.all(np.abs(y + bias - ref.reshape(10, fout)) <= 1e-5 * mag.reshape(10, fout) + 1e-6)
    y_xla = np.asarray(ops._xla_matmul(jnp.asarray(xp), jnp.asarray(packed), get_format(qtype), layer.padded_in))
    assert np.all(np.abs(y_xla + bias - ref.reshape(10, fout)) <= 1e-5 * mag.reshape(10, fout) + 1e-6)


def test_avx2_path_is_used_where_available():
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    if flags:  # Linux: runtime dispatch must agree with the CPU's flags
        assert native.has_avx2() == ({"avx2", "fma", "f16c"} <= flags)
    assert native.hardware_threads() >= 1


def test_the_ffi_call_is_in_the_compiled_program():
    a, packed, _, _ = _problem("Q8_0", 1)
    text = jax.jit(lambda x, w: ops.qmatmul(x, w, "Q8_0")).lower(a, packed).as_text()
    assert ops.MATMUL_TARGET in text and "dot_general" not in text


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q2_K", "REF_Q4_0"])
def test_thread_counts_give_identical_results(qtype):
    rng = np.random.default_rng(3)
    k = 512
    w = quant.quantize(rng.standard_normal((700, k)).astype(np.float32), qtype)
    for m in (1, 4):
        a = rng.standard_normal((m, k)).astype(np.float32)
        one = native.matmul(a, w, qtype, threads=1)
        for threads in (2, 3, 8):
            np.testing.assert_array_equal(native.matmul(a, w, qtype, threads=threads), one)
    # through the FFI attribute as well (threads are fixed when a call is traced)
    a = rng.standard_normal((1, k)).astype(np.float32)
    outs = []
    try:
        for threads in (1, 4):
            ops.set_threads(threads)
            outs.append(np.asarray(jax.jit(lambda x, p: ops.qmatmul(x, p, qtype))(a, w)))
    finally:
        ops.set_threads(0)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], native.matmul(a, w, qtype, threads=1))


@pytest.mark.parametrize("qtype", QTYPES)
def test_embedding_lookup_is_gather_then_dequantize(qtype):
    k = get_format(qtype).block * 2
    table = np.random.default_rng(4).standard_normal((11, k)).astype(np.float32)
    packed = quant.quantize(table, qtype)
    deq = quant.dequantize(packed, qtype, k)
    ids = np.array([[3, 0, 10], [7, 7, 1]], np.int32)
    for scalar in (False, True):
        got = np.asarray(jax.jit(lambda i, p, s=scalar: ops.qembed(i, p, qtype, k, scalar=s))(ids, packed))
        np.testing.assert_array_equal(got, deq[ids])
    # out-of-range ids clamp, as XLA's gather does
    got = np.asarray(ops.qembed(np.array([-4, 99], np.int32), jnp.asarray(packed), qtype, k))
    np.testing.assert_array_equal(got, deq[[0, 10]])


def test_vmap_folds_the_batch_axis():
    a, packed, ref, _ = _problem("Q4_0", 3)
    batch = np.stack([a, 2 * a])
    y = np.asarray(jax.jit(jax.vmap(lambda x: ops.qmatmul(x, jnp.asarray(packed), "Q4_0")))(batch))
    np.testing.assert_allclose(y[0], ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(y[1], 2 * ref, rtol=0, atol=2e-4)
    # batched weights too (a loop over the batch)
    ys = jax.vmap(lambda x, w: ops.qmatmul(x, w, "Q4_0"))(batch, jnp.stack([packed, packed]))
    np.testing.assert_array_equal(np.asarray(ys), y)
    ids = np.array([[1, 2], [3, 4]], np.int32)
    e = jax.vmap(lambda i: ops.qembed(i, jnp.asarray(packed), "Q4_0", 96))(ids)
    np.testing.assert_array_equal(np.asarray(e), quant.dequantize(packed, "Q4_0", 96)[ids])


def test_bad_sizes_are_refused():
    a, packed, _, _ = _problem("Q8_0", 1)
    with pytest.raises(ValueError, match=r"Q8_0 weights for K=96 must be uint8 \[N, 102\]"):
        ops.qmatmul(a, packed[:, :-1], "Q8_0")
    with pytest.raises(ValueError, match="unknown qtype"):
        ops.qmatmul(a, packed, "Q7")
    # the kernel validates on its own (a direct FFI call with inconsistent buffers)
    ops.native_available()
    out = jax.ShapeDtypeStruct((1, 5), jnp.float32)
    attrs = {"qtype": np.int64(get_format("Q8_0").code), "threads": np.int64(0), "scalar": np.int64(0)}
    call = jax.ffi.ffi_call(ops.MATMUL_TARGET, out)
    with pytest.raises(Exception, match=r"packed weights must be uint8 \[N, 102\]"):
        jax.block_until_ready(call(a, packed[:, :100], **attrs))
    with pytest.raises(Exception, match="K=80 is not a positive multiple"):
        jax.block_until_ready(call(a[:, :80], packed, **attrs))
    with pytest.raises(Exception, match="unknown qtype code 9"):
        jax.block_until_ready(call(a, packed, **{**attrs, "qtype": np.int64(9)}))
    with pytest.raises(ValueError, match="bytes per row"):
        native.matmul(a, packed[:, :72], "Q8_0")
