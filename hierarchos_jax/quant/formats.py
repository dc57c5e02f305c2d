"""Quantization block formats in NumPy: GGUF's and the reference's.

A weight matrix ``W [rows, K]`` is quantized row by row in blocks along ``K``; the packed
matrix is ``uint8 [rows, bytes_per_row]`` (all blocks of a row, C structs, no padding,
little-endian).

``Q4_0``, ``Q8_0``, ``Q2_K`` are the GGUF (ggml / llama.cpp) block layouts, byte for byte
(fp16 scales; see :mod:`hierarchos_jax.quant.gguf_blocks`). The reference kernel's own
layouts (spec/quantization.md §2: float32 scales, different pairing and packing, *not*
GGUF-compatible despite the names) are kept as ``REF_Q4_0``, ``REF_Q8_0``, ``REF_Q2_K``,
with ``INT4`` (which only exists in the reference):

==========  =======  =====  =================================================================
qtype       weights  bytes  layout
==========  =======  =====  =================================================================
Q4_0        32       18     ``d: f16``, 16 bytes: element ``j`` low nibble, ``j+16`` high
Q8_0        32       34     ``d: f16``, 32 x int8
Q2_K        256      84     ``scales[16]`` (scale | min << 4), ``qs[64]``, ``d: f16``, ``dmin: f16``
INT4        32       20     ``d: f32``, 16 bytes: element ``2i`` low nibble, ``2i+1`` high, two's complement
REF_Q4_0    32       20     ``d: f32``, 16 bytes: same pairing as INT4, nibble = code + 8
REF_Q8_0    32       36     ``d: f32``, 32 x int8
REF_Q2_K    256      88     ``d: f32`` (range), ``dmin: f32`` (block min), 16 scale bytes (8 used:
                            4-bit scale per half-group), 64 bytes of 2-bit codes (element e in
                            byte e//4, bits 2(e%4))
==========  =======  =====  =================================================================

The reference formats here are the spec's model: per-element arithmetic in float32, the two
least-squares sums in float64 accumulated in element order, C ``roundf`` (half away from
zero). The C++ kernel (``hierarchos_jax._quant``) reproduces every format bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hierarchos_jax.quant import gguf_blocks

F32 = np.float32


@dataclass(frozen=True)
class Format:
    name: str
    block: int        # weights per block
    block_bytes: int  # bytes per block
    code: int         # index used by the native kernel

    def bytes_per_row(self, k: int) -> int:
        check_k(self, k)
        return k // self.block * self.block_bytes

    def padded_k(self, k: int) -> int:
        """``k`` rounded up to a whole number of blocks (the width a model pads to)."""
        return -(-int(k) // self.block) * self.block


FORMATS = {
    "Q4_0": Format("Q4_0", 32, 18, 4),
    "Q8_0": Format("Q8_0", 32, 34, 5),
    "Q2_K": Format("Q2_K", 256, 84, 6),
    "INT4": Format("INT4", 32, 20, 0),
    "REF_Q4_0": Format("REF_Q4_0", 32, 20, 1),
    "REF_Q8_0": Format("REF_Q8_0", 32, 36, 2),
    "REF_Q2_K": Format("REF_Q2_K", 256, 88, 3),
}
GGUF_QTYPES = ("Q4_0", "Q8_0", "Q2_K")
QTYPES = tuple(FORMATS)


def get_format(qtype: str) -> Format:
    """The :class:`Format` of ``qtype`` (case-insensitive); unknown names raise ValueError."""
    fmt = FORMATS.get(str(qtype).upper()) if isinstance(qtype, str) else None
    if fmt is None:
        raise ValueError(f"unknown qtype {qtype!r}; choose one of {', '.join(QTYPES)}")
    return fmt


def check_k(fmt: Format, k: int) -> None:
    if int(k) <= 0 or int(k) % fmt.block:
        raise ValueError(f"{fmt.name}: row length K={k} is not a positive multiple of the block size {fmt.block}")


def bytes_per_row(qtype: str, k: int) -> int:
    return get_format(qtype).bytes_per_row(k)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf`` of float32 values (half away from zero), exact via float64."""
    v = v.astype(np.float64)
    return np.trunc(v + np.copysign(0.5, v))


def _f32_bytes(x: np.ndarray) -> np.ndarray:
    """float32 ``[...]`` -> little-endian bytes ``uint8 [..., 4]``."""
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(x.shape + (4,))


def _bytes_f32(b: np.ndarray) -> np.ndarray:
    """``uint8 [..., 4]`` -> float32 ``[...]``."""
    return np.ascontiguousarray(b).view("<f4")[..., 0].astype(F32)


def _symmetric_codes(x: np.ndarray, levels: float, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Shared INT4/Q4_0/Q8_0 math on blocks ``x [..., B]``: codes (int) and refitted scale ``d``."""
    amax = np.max(np.abs(x), axis=-1)
    d0 = np.where(amax == 0, F32(1), amax / F32(levels)).astype(F32)
    r = (F32(1) / d0).astype(F32)
    q = _roundf(np.clip(x * r[..., None], F32(lo), F32(hi)).astype(F32))
    sxq = np.zeros(x.shape[:-1], np.float64)
    sqq = np.zeros(x.shape[:-1], np.float64)
    x64 = x.astype(np.float64)
    for j in range(x.shape[-1]):  # in element order, as the C loop (float64 sums)
        sxq = sxq + x64[..., j] * q[..., j]
        sqq = sqq + q[..., j] * q[..., j]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(sqq > 1e-12, (sxq / np.where(sqq > 0, sqq, 1.0)).astype(F32), d0).astype(F32)
    return q.astype(np.int64), d


def _quantize_blocks_q2k(x: np.ndarray) -> np.ndarray:
    """REF_Q2_K blocks ``x [n, 256]`` -> ``uint8 [n, 88]``."""
    n = x.shape[0]
    mn = x.min(axis=-1)
    d = (x.max(axis=-1) - mn).astype(F32)
    r = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
    rel = (x - mn[:, None]).astype(F32).reshape(n, 16, 16)          # [n, half, 16]
    m = np.maximum(F32(1e-12), np.abs(rel).max(axis=-1)).astype(F32)  # [n, 16]
    s = _roundf(np.minimum(F32(15), (m / F32(3)) * r[:, None] * F32(15)).astype(F32))
    step = ((s.astype(F32) / F32(15)) * d[:, None]).astype(F32)
    rho = np.where(step > F32(1e-12), F32(1) / np.where(step > 0, step, F32(1)), F32(0)).astype(F32)
    q = _roundf(np.clip(rel * rho[..., None], F32(0), F32(3)).astype(F32)).astype(np.uint8).reshape(n, 64, 4)
    s = s.astype(np.uint8).reshape(n, 8, 2)
    out = np.zeros((n, 88), np.uint8)
    out[:, 0:4] = _f32_bytes(d)
    out[:, 4:8] = _f32_bytes(mn.astype(F32))
    out[:, 8:16] = s[..., 0] | (s[..., 1] << 4)
    out[:, 24:88] = q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)
    return out


def _as_matrix(w) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix [rows, K], got shape {w.shape}")
    return np.ascontiguousarray(w, dtype=F32)


def quantize(w, qtype: str) -> np.ndarray:
    """Quantize float32 ``w [rows, K]`` row-wise -> packed ``uint8 [rows, bytes_per_row]``."""
    fmt = get_format(qtype)
    w = _as_matrix(w)
    rows, k = w.shape
    check_k(fmt, k)
    nb = k // fmt.block
    x = w.reshape(rows * nb, fmt.block)
    if fmt.name in GGUF_QTYPES:
        return gguf_blocks.QUANTIZE[fmt.name](x).reshape(rows, nb * fmt.block_bytes)
    if fmt.name == "REF_Q2_K":
        return _quantize_blocks_q2k(x).reshape(rows, nb * fmt.block_bytes)
    out = np.empty((rows * nb, fmt.block_bytes), np.uint8)
    if fmt.name == "REF_Q8_0":
        q, d = _symmetric_codes(x, 127.0, -127.0, 127.0)
        out[:, 4:] = q.astype(np.int8).view(np.uint8)
    else:
        q, d = _symmetric_codes(x, 8.0, -8.0, 7.0)
        nib = (q + 8) if fmt.name == "REF_Q4_0" else (q & 0xF)
        nib = nib.astype(np.uint8)
        out[:, 4:] = nib[:, 0::2] | (nib[:, 1::2] << 4)
    out[:, :4] = _f32_bytes(d)
    return out.reshape(rows, nb * fmt.block_bytes)


def _check_packed(packed, fmt: Format, k: int) -> np.ndarray:
    packed = np.asarray(packed)
    check_k(fmt, k)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"packed weights must be uint8 [rows, bytes_per_row], got {packed.dtype} {packed.shape}")
    want = fmt.bytes_per_row(k)
    if packed.shape[1] != want:
        raise ValueError(f"{fmt.name} with K={k} needs {want} bytes per row, got {packed.shape[1]}")
    return np.ascontiguousarray(packed)


def dequantize(packed, qtype: str, k: int) -> np.ndarray:
    """Invert :func:`quantize`: ``uint8 [rows, bytes_per_row]`` -> float32 ``[rows, K]``."""
    fmt = get_format(qtype)
    packed = _check_packed(packed, fmt, k)
    rows = packed.shape[0]
    b = packed.reshape(-1, fmt.block_bytes)
    if fmt.name in GGUF_QTYPES:
        return np.ascontiguousarray(gguf_blocks.DEQUANTIZE[fmt.name](b), dtype=F32).reshape(rows, k)
    d = _bytes_f32(b[:, 0:4])
    if fmt.name == "REF_Q2_K":
        dmin = _bytes_f32(b[:, 4:8])
        sc = b[:, 8:16]
        s = np.stack([sc & 0xF, sc >> 4], axis=-1).reshape(-1, 16).astype(F32)
        step = ((s / F32(15)) * d[:, None]).astype(F32)                      # [n, 16 halves]
        qs = b[:, 24:88]
        q = np.stack([(qs >> (2 * i)) & 3 for i in range(4)], axis=-1).reshape(-1, 16, 16).astype(F32)
        w = (q * step[..., None]).astype(F32) + dmin[:, None, None]
    elif fmt.name == "REF_Q8_0":
        w = b[:, 4:].view(np.int8).astype(F32) * d[:, None]
    else:
        qs = b[:, 4:]
        nib = np.stack([qs & 0xF, qs >> 4], axis=-1).reshape(-1, 32).astype(np.int16)
        code = nib - 8 if fmt.name == "REF_Q4_0" else np.where(nib > 7, nib - 16, nib)
        w = code.astype(F32) * d[:, None]
    return np.ascontiguousarray(w, dtype=F32).reshape(rows, k)
