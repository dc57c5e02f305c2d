"""Quantization: block formats, native CPU kernels, quantized models.

* :func:`quantize` / :func:`dequantize` — float32 ``[rows, K]`` <-> packed ``uint8
  [rows, bytes_per_row]``. ``Q4_0``, ``Q8_0``, ``Q2_K`` are the GGUF (ggml) block layouts,
  byte-compatible with llama.cpp; ``INT4`` and ``REF_Q4_0``, ``REF_Q8_0``, ``REF_Q2_K`` are the
  reference's layouts (spec/quantization.md §2). Formats in
  :mod:`hierarchos_jax.quant.formats`; the C++ kernel when built, else NumPy — bit-identical.
* :mod:`hierarchos_jax.quant.ops` — ``qmatmul`` / ``qembed`` / ``dequantize`` in JAX.
* :mod:`hierarchos_jax.quant.layers` — ``QuantizedLinear``, ``QuantizedEmbed`` (NNX).
* :mod:`hierarchos_jax.quant.model` — ``quantize_model``, ``requantize_model``.
* :mod:`hierarchos_jax.quant.model_dir` — quantized model directories.
"""

from __future__ import annotations

import numpy as np

from hierarchos_jax.quant import formats
from hierarchos_jax.quant.formats import GGUF_QTYPES, QTYPES, bytes_per_row, get_format

__all__ = ["GGUF_QTYPES", "QTYPES", "bytes_per_row", "dequantize", "get_format", "quantize"]


def _native():
    try:
        from hierarchos_jax import _quant
    except ImportError:
        return None
    return _quant


def quantize(w, qtype: str) -> np.ndarray:
    """Quantize float32 ``w [rows, K]`` row-wise -> ``uint8 [rows, bytes_per_row]``."""
    fmt = get_format(qtype)
    native = _native()
    if native is None:
        return formats.quantize(w, fmt.name)
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix [rows, K], got shape {w.shape}")
    formats.check_k(fmt, w.shape[1])
    return native.quantize(np.ascontiguousarray(w, np.float32), fmt.name)


def dequantize(packed, qtype: str, k: int) -> np.ndarray:
    """Invert :func:`quantize`: ``uint8 [rows, bytes_per_row]`` -> float32 ``[rows, K]``."""
    fmt = get_format(qtype)
    native = _native()
    if native is None:
        return formats.dequantize(packed, fmt.name, k)
    packed = np.asarray(packed)
    formats.check_k(fmt, k)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"packed weights must be uint8 [rows, bytes_per_row], got {packed.dtype} {packed.shape}")
    return native.dequantize(np.ascontiguousarray(packed), fmt.name, int(k))
