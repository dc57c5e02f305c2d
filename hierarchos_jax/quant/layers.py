"""NNX layers over packed quantized weights, drop-in for ``nnx.Linear`` / ``nnx.Embed``.

:class:`QuantizedLinear` has ``nnx.Linear``'s call signature (``x [..., in] -> [..., out]``,
bias in float32) and a ``kernel`` property giving the dequantized ``[in, out]`` matrix for
code that reads kernels directly. :class:`QuantizedEmbed` has ``nnx.Embed``'s (``ids ->
[..., features]``), a ``head(hidden)`` method for the tied LM head (``hidden @ table^T``
straight from the packed rows) and an ``embedding`` property (the dequantized table).

Rows whose width is not a whole number of blocks are stored right-padded with zero
columns (the reference exporter's rule); activations are zero-padded to match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax import quant
from hierarchos_jax.quant import ops
from hierarchos_jax.quant.formats import get_format


class QuantWeight(nnx.Variable):
    """Packed quantized weights (``uint8 [rows, bytes_per_row]``); not trainable."""


def quantize_rows(w: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize ``w [rows, K]`` after right-padding ``K`` to a whole number of blocks."""
    fmt = get_format(qtype)
    w = np.asarray(w, np.float32)
    pad = fmt.padded_k(w.shape[1]) - w.shape[1]
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)))
    return quant.quantize(w, fmt.name)


def _pad_last(x: jax.Array, width: int) -> jax.Array:
    extra = width - x.shape[-1]
    return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


class QuantizedLinear(nnx.Module):
    """``y = x @ W^T + b`` with ``W [out, in]`` stored packed (rows = output features)."""

    def __init__(self, packed, qtype: str, in_features: int, out_features: int, bias=None):
        fmt = get_format(qtype)
        packed = jnp.asarray(packed)
        self.qtype = fmt.name
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.padded_in = fmt.padded_k(self.in_features)
        want = (self.out_features, fmt.bytes_per_row(self.padded_in))
        if packed.dtype != jnp.uint8 or tuple(packed.shape) != want:
            raise ValueError(f"QuantizedLinear {in_features}->{out_features} ({fmt.name}): packed weights must be "
                             f"uint8 {want}, got {packed.dtype} {tuple(packed.shape)}")
        self.packed = QuantWeight(packed)
        if bias is not None:
            bias = jnp.asarray(bias, jnp.float32)
            if bias.shape != (self.out_features,):
                raise ValueError(f"QuantizedLinear bias must be [{self.out_features}], got {tuple(bias.shape)}")
        self.bias = None if bias is None else nnx.Param(bias)

    @classmethod
    def from_weight(cls, weight, qtype: str, bias=None) -> QuantizedLinear:
        """From a PyTorch-layout weight ``[out, in]`` (and optional bias ``[out]``)."""
        weight = np.asarray(weight, np.float32)
        return cls(quantize_rows(weight, qtype), qtype, weight.shape[1], weight.shape[0], bias)

    @classmethod
    def from_linear(cls, linear: nnx.Linear, qtype: str) -> QuantizedLinear:
        bias = None if linear.bias is None else np.asarray(linear.bias[...])
        return cls.from_weight(np.asarray(linear.kernel[...]).T, qtype, bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = ops.qmatmul(_pad_last(jnp.asarray(x, jnp.float32), self.padded_in), self.packed[...], self.qtype)
        return y if self.bias is None else y + self.bias[...]

    def weight(self) -> jax.Array:
        """Dequantized ``W [out, in]`` (float32)."""
        return ops.dequantize(self.packed[...], self.qtype, self.padded_in)[:, :self.in_features]

    @property
    def kernel(self) -> jax.Array:
        """Dequantized ``[in, out]`` kernel, as ``nnx.Linear.kernel[...]`` reads."""
        return self.weight().T


class QuantizedEmbed(nnx.Module):
    """Lookup table ``[num_embeddings, features]`` stored packed, one quantized row per id."""

    def __init__(self, packed, qtype: str, num_embeddings: int, features: int):
        fmt = get_format(qtype)
        packed = jnp.asarray(packed)
        self.qtype = fmt.name
        self.num_embeddings = int(num_embeddings)
        self.features = int(features)
        self.padded_features = fmt.padded_k(self.features)
        want = (self.num_embeddings, fmt.bytes_per_row(self.padded_features))
        if packed.dtype != jnp.uint8 or tuple(packed.shape) != want:
            raise ValueError(f"QuantizedEmbed [{num_embeddings}, {features}] ({fmt.name}): packed table must be "
                             f"uint8 {want}, got {packed.dtype} {tuple(packed.shape)}")
        self.packed = QuantWeight(packed)

    @classmethod
    def from_table(cls, table, qtype: str) -> QuantizedEmbed:
        table = np.asarray(table, np.float32)
        return cls(quantize_rows(table, qtype), qtype, table.shape[0], table.shape[1])

    @classmethod
    def from_embed(cls, embed: nnx.Embed, qtype: str) -> QuantizedEmbed:
        return cls.from_table(np.asarray(embed.embedding[...]), qtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = ops.qembed(ids, self.packed[...], self.qtype, self.padded_features)
        return rows[..., :self.features]

    def head(self, hidden: jax.Array) -> jax.Array:
        """Tied LM head: ``hidden [..., features] @ table^T -> [..., num_embeddings]``."""
        return ops.qmatmul(_pad_last(jnp.asarray(hidden, jnp.float32), self.padded_features), self.packed[...],
                           self.qtype)

    @property
    def embedding(self) -> jax.Array:
        """The dequantized table ``[num_embeddings, features]`` (float32)."""
        return ops.dequantize(self.packed[...], self.qtype, self.padded_features)[:, :self.features]
