"""Block formats: spec/quantization.md §2.4 test vectors, hand-built blocks, NumPy reference
vs the C++ kernel (bit-exact), XLA dequantization, and refusal of bad input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax import quant
from hierarchos_jax.quant import formats, ops

native = pytest.importorskip("hierarchos_jax._quant")

X32 = (0.05 * np.sin(0.7 * np.arange(32)) + 0.001 * (np.arange(32) - 16)).astype(np.float32)
X256 = (0.1 * np.sin(0.05 * np.arange(256)) + 0.02 * np.cos(0.9 * np.arange(256))).astype(np.float32)

# (qtype, d, packed hex, first dequantized values) from the spec's table
VECTORS_32 = [
    ("INT4", 0.00774663454, "7bd7fd3b2e45c199fb6325adca5067e3bb2d7647", [-0.0154933, 0.0154933, 0.0387332, 0.0309865]),
    ("Q4_0", 0.00774663454, "7bd7fd3ba6cd491173ebad2542d8ef6b33a5fecf", [-0.0154933, 0.0154933, 0.0387332, 0.0309865]),
    ("Q8_0", 0.000492904393, "4136013ae023483d0ac6938ab0f4365a4f1ad7a59dc3074a6d602be7b6afd71b5d7f713c",
     [-0.0157729, 0.0172517, 0.0354891, 0.0300672]),
]
Q2K_SCALES = "54451331544512320000000000000000"
Q2K_CODES = ("aafaabffaafffaffffafffaafffaabaaabaa555aea1be506b991bff956a9aafeaabffefffeeffffffffeaffaafbfaa6aff"
             "afaa56bf911be405a555aa95aafaaf")


def both(w, qtype):
    """NumPy reference and C++ kernel bytes of the same input (must agree)."""
    a, b = formats.quantize(w, qtype), native.quantize(np.ascontiguousarray(w, np.float32), qtype)
    assert a.dtype == np.uint8 and a.tobytes() == b.tobytes(), qtype
    return a


def test_input_is_the_spec_block():
    np.testing.assert_array_equal(X32[:4], np.float32([-0.0160000008, 0.017210884, 0.0352724865, 0.0301604681]))


@pytest.mark.parametrize("qtype, d, hexbytes, first", VECTORS_32)
def test_spec_vectors_32(qtype, d, hexbytes, first):
    p = both(X32[None], qtype)
    assert p.shape == (1, formats.bytes_per_row(qtype, 32)) and p.tobytes().hex() == hexbytes
    assert np.frombuffer(p[0, :4].tobytes(), "<f4")[0] == np.float32(d)
    for deq in (formats.dequantize(p, qtype, 32), native.dequantize(p, qtype, 32),
                native.dequantize(p, qtype, 32, scalar=True), quant.dequantize(p, qtype, 32)):
        np.testing.assert_allclose(deq[0, :4], first, rtol=0, atol=6e-8)


def test_spec_vector_q2k():
    p = both(X256[None], "Q2_K")
    assert p.shape == (1, 88)
    d, dmin = np.frombuffer(p[0, :8].tobytes(), "<f4")
    assert d == np.float32(0.238435358) and dmin == np.float32(-0.119935594)
    assert p[0, 8:24].tobytes().hex() == Q2K_SCALES and p[0, 24:].tobytes().hex() == Q2K_CODES
    deq = formats.dequantize(p, "Q2_K", 256)[0]
    np.testing.assert_allclose(deq[:4], 0.00722993, rtol=0, atol=6e-9)
    assert abs(np.abs(deq - X256).max() - 0.0395) < 5e-5


def test_hand_built_blocks_decode():
    # Q4_0 / INT4: d = 0.5, byte 0 = 0x8F (element 0 low nibble 15, element 1 high nibble 8)
    blk = np.zeros((1, 20), np.uint8)
    blk[0, :4] = np.frombuffer(np.float32(0.5).tobytes(), np.uint8)
    blk[0, 4] = 0x8F
    blk[0, 5:] = 0x88  # Q4_0: zeros; INT4: -8
    q40 = formats.dequantize(blk, "Q4_0", 32)[0]
    assert q40[0] == 3.5 and q40[1] == 0.0 and np.all(q40[2:] == 0.0)
    i4 = formats.dequantize(blk, "INT4", 32)[0]
    assert i4[0] == -0.5 and i4[1] == -4.0 and np.all(i4[2:] == -4.0)
    # Q8_0: codes -127, 0, 1, 127, ... with d = 0.25
    blk = np.zeros((1, 36), np.uint8)
    blk[0, :4] = np.frombuffer(np.float32(0.25).tobytes(), np.uint8)
    blk[0, 4:8] = np.int8([-127, 0, 1, 127]).view(np.uint8)
    np.testing.assert_array_equal(formats.dequantize(blk, "Q8_0", 32)[0, :4], [-31.75, 0, 0.25, 31.75])
    # Q2_K: d = 1.5, dmin = -1; half 0 scale 15 (step 1.5), half 1 scale 5 (step 0.5); codes 0,1,2,3
    blk = np.zeros((1, 88), np.uint8)
    blk[0, :8] = np.frombuffer(np.float32([1.5, -1.0]).tobytes(), np.uint8)
    blk[0, 8] = 15 | (5 << 4)
    blk[0, 24] = 0b11100100
    blk[0, 28] = 0b11100100
    w = formats.dequantize(blk, "Q2_K", 256)[0]
    np.testing.assert_array_equal(w[:4], [-1.0, 0.5, 2.0, 3.5])
    np.testing.assert_array_equal(w[16:20], [-1.0, -0.5, 0.0, 0.5])
    assert np.all(w[32:] == -1.0)  # scale 0: collapses to the block minimum


def test_exact_grid_round_trips():
    """Weights already on a format's grid come back exactly (codes and refitted d exact)."""
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, (3, 64)).astype(np.float32)
    q[:, 0], q[:, 32] = 127, -127  # each block's max magnitude sets d0 = d exactly
    w = q * np.float32(0.125)
    np.testing.assert_array_equal(formats.dequantize(both(w, "Q8_0"), "Q8_0", 64), w)
    q4 = rng.integers(-7, 8, (3, 64)).astype(np.float32)
    q4[:, 0], q4[:, 32] = -8, -8
    w4 = q4 * np.float32(0.5)
    for qtype in ("INT4", "Q4_0"):
        np.testing.assert_array_equal(formats.dequantize(both(w4, qtype), qtype, 64), w4)


def _inputs():
    rng = np.random.default_rng(0)
    return {
        "gaussian": rng.standard_normal((6, 512)).astype(np.float32) * 0.02,
        "student_t": rng.standard_t(3, (4, 512)).astype(np.float32),
        "ties": (np.round(rng.standard_normal((4, 512)) * 4) / 4).astype(np.float32),
        "constant": np.full((2, 512), -0.3, np.float32),
        "zeros": np.zeros((2, 512), np.float32),
        "tiny": rng.standard_normal((3, 512)).astype(np.float32) * 1e-6,
    }


@pytest.mark.parametrize("qtype", formats.QTYPES)
def test_numpy_and_kernel_agree_bitwise(qtype):
    fmt = formats.get_format(qtype)
    inputs = _inputs()
    w = np.concatenate(list(inputs.values()))
    p = both(w, qtype)
    assert p.shape == (w.shape[0], 512 // fmt.block * fmt.block_bytes)
    ref = formats.dequantize(p, qtype, 512)
    np.testing.assert_array_equal(native.dequantize(p, qtype, 512), ref)
    np.testing.assert_array_equal(native.dequantize(p, qtype, 512, scalar=True), ref)
    xla = np.asarray(ops.dequantize(jnp.asarray(p), qtype, 512))
    if qtype == "Q2_K":  # XLA may fuse q*step + dmin into one FMA
        assert np.all(np.abs(xla - ref) <= 1e-6 * np.abs(w).max(axis=1, keepdims=True))
    else:
        np.testing.assert_array_equal(xla, ref)
    zeros = sum(len(v) for v in list(inputs.values())[:4])
    assert np.all(ref[zeros:zeros + 2] == 0)
    for name, part in inputs.items():  # rows are independent: each input alone gives the same bytes
        assert both(part, qtype).tobytes() in p.tobytes(), name


@pytest.mark.parametrize("qtype, rel_bound", [("Q8_0", 0.007), ("Q4_0", 0.11), ("INT4", 0.11), ("Q2_K", 0.5)])
def test_error_matches_spec_accuracy_table(qtype, rel_bound):
    """Gaussian weights: relative RMS error as spec §9 (Q8_0 0.0053, 4-bit 0.092, Q2_K 0.44)."""
    w = np.random.default_rng(2).standard_normal((64, 512)).astype(np.float32) * 0.02
    deq = quant.dequantize(quant.quantize(w, qtype), qtype, 512)
    rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
    assert 0.5 * rel_bound < rel < rel_bound


def test_bad_input_is_refused():
    w = np.zeros((2, 48), np.float32)
    for fn in (formats.quantize, quant.quantize):
        with pytest.raises(ValueError, match="K=48 is not a positive multiple of the block size 32"):
            fn(w, "Q8_0")
        with pytest.raises(ValueError, match="unknown qtype 'Q3_K'"):
            fn(np.zeros((2, 64), np.float32), "Q3_K")
        with pytest.raises(ValueError, match="2-D"):
            fn(np.zeros(64, np.float32), "Q8_0")
    with pytest.raises(ValueError, match="multiple of the block size 256"):
        quant.quantize(np.zeros((1, 288), np.float32), "Q2_K")
    p = quant.quantize(np.zeros((2, 64), np.float32), "Q4_0")
    for fn in (formats.dequantize, quant.dequantize):
        with pytest.raises(ValueError, match="needs 36 bytes per row, got 40"):
            fn(p, "Q8_0", 32)
    with pytest.raises(ValueError, match="unknown qtype"):
        native.quantize(np.zeros((1, 32), np.float32), "Q5")
    assert formats.get_format("q8_0").name == "Q8_0"  # case-insensitive names
