"""Quantization: the reference's four block formats, native CPU kernels, quantized models.

* :func:`quantize` / :func:`dequantize` — float32 ``[rows, K]`` <-> packed ``uint8
  [rows, bytes_per_row]`` (formats in :mod:`hierarchos_jax.quant.formats`; the C++ kernel
  when built, else the NumPy reference — bit-identical).
* :mod:`hierarchos_jax.quant.ops` — ``qmatmul`` / ``qembed`` / ``dequantize`` in JAX.
* :mod:`hierarchos_jax.quant.layers` — ``QuantizedLinear``, ``QuantizedEmbed`` (NNX).
* :mod:`hierarchos_jax.quant.model` — ``quantize_model``, ``requantize_model``.
* :mod:`hierarchos_jax.quant.model_dir` — quantized model directories.
"""

from __future__ import annotations

import numpy as np

from hierarchos_jax.quant import formats
from hierarchos_jax.quant.formats import QTYPES, bytes_per_row, get_format

__all__ = ["QTYPES", "bytes_per_row", "dequantize", "get_format", "quantize"]


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
