"""GGUF (ggml) block layouts Q4_0, Q8_0 and Q2_K in NumPy, byte-compatible with llama.cpp.

========  =======  =====  ===================================================================
qtype     weights  bytes  layout (ggml ``block_*``, little-endian, no padding)
========  =======  =====  ===================================================================
Q4_0      32       18     ``d: f16``, 16 bytes: element ``j`` low nibble, ``j+16`` high nibble
                          of byte ``j``; weight = ``d * (nibble - 8)``
Q8_0      32       34     ``d: f16``, 32 x int8; weight = ``d * q``
Q2_K      256      84     ``scales[16]`` (low nibble: 4-bit scale, high nibble: 4-bit min of
                          each 16-weight sub-block), ``qs[64]`` (2-bit codes: element
                          ``128h + 32s + l`` in byte ``32h + l``, bits ``2s``), ``d: f16``,
                          ``dmin: f16``; weight = ``d*sc * q - dmin*m``
========  =======  =====  ===================================================================

Quantizers follow ggml's reference functions (``quantize_row_q4_0_ref``,
``quantize_row_q8_0_ref``, ``quantize_row_q2_K_ref`` with ``make_qkx2_quants``): float32
arithmetic one operation at a time (no fused multiply-add), sums accumulated in element
order, ``nearest_int`` = round half to even, fp32 -> fp16 round to nearest even. The C++
kernel (``ffi/quant_formats.h``) computes the same bytes.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
QK_K = 256


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 ``[n]`` -> fp16 (round to nearest even) little-endian bytes ``uint8 [n, 2]``."""
    with np.errstate(over="ignore"):  # beyond fp16's range: inf, as ggml
        return np.ascontiguousarray(np.asarray(x, F32).astype("<f2")).view(np.uint8).reshape(-1, 2)


def _f16_at(b: np.ndarray, start: int) -> np.ndarray:
    """``uint8 [n, >= start+2]`` -> the fp16 field at ``start`` as float32 ``[n]``."""
    return np.ascontiguousarray(b[:, start:start + 2]).view("<f2")[:, 0].astype(F32)


def _inverse(d: np.ndarray) -> np.ndarray:
    """``1/d`` in float32, 0 where ``d == 0``."""
    safe = np.where(d == 0, F32(1), d).astype(F32)
    return np.where(d == 0, F32(0), F32(1) / safe).astype(F32)


# --- Q4_0 / Q8_0 ------------------------------------------------------------------


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """Blocks ``x [n, 32]`` -> ``uint8 [n, 18]``: ``d = x[argmax|x|] / -8``, nibble =
    ``min(15, trunc(x/d + 8.5))`` (codes use the float32 ``d``, not its fp16 rounding)."""
    x = np.asarray(x, F32)
    # first element of largest magnitude (a strict `>` scan, as the C loop)
    signed_max = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    d = (signed_max / F32(-8)).astype(F32)
    v = (x * _inverse(d)[:, None]).astype(F32) + F32(8.5)
    nib = np.minimum(15, np.trunc(v.astype(F32)).astype(np.int64)).astype(np.uint8)
    out = np.empty((x.shape[0], 18), np.uint8)
    out[:, :2] = _f16_bytes(d)
    out[:, 2:] = nib[:, :16] | (nib[:, 16:] << 4)
    return out


def dequantize_q4_0(b: np.ndarray) -> np.ndarray:
    d = _f16_at(b, 0)
    qs = b[:, 2:18]
    code = np.concatenate([qs & 0xF, qs >> 4], axis=-1).astype(np.int16) - 8
    return (code.astype(F32) * d[:, None]).astype(F32)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf`` (half away from zero) of float32 values, exact via float64."""
    v = v.astype(np.float64)
    return np.trunc(v + np.copysign(0.5, v))


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Blocks ``x [n, 32]`` -> ``uint8 [n, 34]``: ``d = max|x| / 127``, ``q = roundf(x/d)``."""
    x = np.asarray(x, F32)
    d = (np.abs(x).max(axis=-1) / F32(127)).astype(F32)
    q = _roundf((x * _inverse(d)[:, None]).astype(F32))
    out = np.empty((x.shape[0], 34), np.uint8)
    out[:, :2] = _f16_bytes(d)
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    d = _f16_at(b, 0)
    return (np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(F32) * d[:, None]).astype(F32)


# --- Q2_K ---------------------------------------------------------------------------


def _abs_error(w, scale, codes, mn, x) -> np.ndarray:
    """``sum_i w_i |scale*L_i + mn - x_i|`` per row, accumulated in element order (float32)."""
    total = np.zeros(x.shape[0], F32)
    for i in range(x.shape[1]):
        diff = np.abs(((scale * codes[:, i]).astype(F32) + mn).astype(F32) - x[:, i]).astype(F32)
        total = (total + w[:, i] * diff).astype(F32)
    return total


def fit_scale_min(x: np.ndarray, nmax: int = 3, rmin: float = -0.5, rdelta: float = 0.1,
                  nstep: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's ``make_qkx2_quants`` with weights ``|x|`` and absolute-error loss, vectorised over
    sub-blocks ``x [n, m]``: the affine grid ``scale * L + min`` (``min <= 0``) is searched over
    ``nstep + 1`` trial inverse scales, each refitted by weighted least squares and kept when
    its weighted absolute error is lower. Returns ``(scale [n], -min [n], codes [n, m])``."""
    with np.errstate(all="ignore"):
        return _fit_scale_min(np.asarray(x, F32), nmax, rmin, rdelta, nstep)


def _fit_scale_min(x, nmax, rmin, rdelta, nstep):
    n, m = x.shape
    w = np.abs(x)
    sum_w, sum_x = w[:, 0].copy(), (w[:, 0] * x[:, 0]).astype(F32)
    for i in range(1, m):
        sum_w = (sum_w + w[:, i]).astype(F32)
        sum_x = (sum_x + (w[:, i] * x[:, i]).astype(F32)).astype(F32)
    lo = np.minimum(x.min(axis=-1), F32(0)).astype(F32)
    hi = x.max(axis=-1)
    flat = hi == lo
    span = np.where(flat, F32(1), hi - lo).astype(F32)
    iscale = (F32(nmax) / span).astype(F32)
    scale = (F32(1) / iscale).astype(F32)
    rel = (x - lo[:, None]).astype(F32)
    codes = np.clip(np.rint((iscale[:, None] * rel).astype(F32)), 0, nmax).astype(F32)
    best = _abs_error(w, scale, codes, lo, x)
    mn = lo.copy()
    for step in range(nstep + 1):
        # as in ggml, a better fit's min replaces `min` for the later trials (span and offsets)
        span = np.where(flat, F32(1), hi - mn).astype(F32)
        rel = (x - mn[:, None]).astype(F32)
        trial = ((F32(rmin) + (F32(rdelta) * F32(step)).astype(F32)).astype(F32) + F32(nmax)).astype(F32)
        iscale = (trial / span).astype(F32)
        aux = np.clip(np.rint((iscale[:, None] * rel).astype(F32)), 0, nmax).astype(F32)
        sum_l = np.zeros(n, F32)
        sum_l2 = np.zeros(n, F32)
        sum_xl = np.zeros(n, F32)
        for i in range(m):
            wl = (w[:, i] * aux[:, i]).astype(F32)
            sum_l = (sum_l + wl).astype(F32)
            sum_l2 = (sum_l2 + (wl * aux[:, i]).astype(F32)).astype(F32)
            sum_xl = (sum_xl + (wl * x[:, i]).astype(F32)).astype(F32)
        det = ((sum_w * sum_l2).astype(F32) - (sum_l * sum_l).astype(F32)).astype(F32)
        ok = det > 0
        safe_det = np.where(ok, det, F32(1)).astype(F32)
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (((sum_w * sum_xl).astype(F32) - (sum_x * sum_l).astype(F32)).astype(F32)
                          / safe_det).astype(F32)
            this_min = (((sum_l2 * sum_x).astype(F32) - (sum_l * sum_xl).astype(F32)).astype(F32)
                        / safe_det).astype(F32)
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min).astype(F32)
            this_scale = np.where(positive, (sum_xl / np.where(sum_l2 == 0, F32(1), sum_l2)).astype(F32),
                                  this_scale).astype(F32)
            err = _abs_error(w, this_scale, aux, this_min, x)
        better = ok & (err < best) & ~flat
        codes = np.where(better[:, None], aux, codes)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, F32(0), scale).astype(F32)
    codes = np.where(flat[:, None], F32(0), codes)
    return scale, (-mn).astype(F32), codes.astype(np.int64)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """Super-blocks ``x [n, 256]`` -> ``uint8 [n, 84]`` (ggml ``quantize_row_q2_K_ref``)."""
    x = np.asarray(x, F32)
    n = x.shape[0]
    sub = x.reshape(n * 16, 16)
    scales, mins, codes = fit_scale_min(sub)
    scales, mins, codes = scales.reshape(n, 16), mins.reshape(n, 16), codes.reshape(n, 16, 16)
    max_scale = np.maximum(F32(0), scales.max(axis=-1)).astype(F32)
    max_min = np.maximum(F32(0), mins.max(axis=-1)).astype(F32)
    sc = np.zeros((n, 16), np.int64)
    has_scale, has_min = max_scale > 0, max_min > 0
    inv = (F32(15) / np.where(has_scale, max_scale, F32(1))).astype(F32)
    sc = np.where(has_scale[:, None], np.rint((inv[:, None] * scales).astype(F32)).astype(np.int64), 0) & 0xFF
    inv = (F32(15) / np.where(has_min, max_min, F32(1))).astype(F32)
    lm = np.where(has_min[:, None], np.rint((inv[:, None] * mins).astype(F32)).astype(np.int64), 0)
    sc = (sc | (lm << 4)) & 0xFF
    d16 = _f16_bytes(np.where(has_scale, (max_scale / F32(15)).astype(F32), F32(0)))
    m16 = _f16_bytes(np.where(has_min, (max_min / F32(15)).astype(F32), F32(0)))
    d = np.ascontiguousarray(d16).view("<f2")[:, 0].astype(F32)
    dmin = np.ascontiguousarray(m16).view("<f2")[:, 0].astype(F32)
    # final codes from the stored (fp16, 4-bit) scale and min of each sub-block
    dl = (d[:, None] * (sc & 0xF).astype(F32)).astype(F32)
    ml = (dmin[:, None] * (sc >> 4).astype(F32)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.rint(((x.reshape(n, 16, 16) + ml[..., None]).astype(F32)
                           / np.where(dl == 0, F32(1), dl)[..., None]).astype(F32))
    requant = np.clip(np.nan_to_num(requant), 0, 3).astype(np.int64)
    codes = np.where((dl != 0)[..., None], requant, codes).reshape(n, 2, 4, 32).astype(np.uint8)
    out = np.empty((n, 84), np.uint8)
    out[:, :16] = sc.astype(np.uint8)
    qs = codes[:, :, 0] | (codes[:, :, 1] << 2) | (codes[:, :, 2] << 4) | (codes[:, :, 3] << 6)
    out[:, 16:80] = qs.reshape(n, 64)
    out[:, 80:82] = d16
    out[:, 82:84] = m16
    return out


def dequantize_q2_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc = b[:, :16]
    d, dmin = _f16_at(b, 80), _f16_at(b, 82)
    dl = (d[:, None] * (sc & 0xF).astype(F32)).astype(F32)
    ml = (dmin[:, None] * (sc >> 4).astype(F32)).astype(F32)
    qs = b[:, 16:80].reshape(n, 2, 1, 32)
    q = ((qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(n, 16, 16).astype(F32)
    return ((dl[..., None] * q).astype(F32) - ml[..., None]).astype(F32).reshape(n, QK_K)


QUANTIZE = {"Q4_0": quantize_q4_0, "Q8_0": quantize_q8_0, "Q2_K": quantize_q2_k}
DEQUANTIZE = {"Q4_0": dequantize_q4_0, "Q8_0": dequantize_q8_0, "Q2_K": dequantize_q2_k}
