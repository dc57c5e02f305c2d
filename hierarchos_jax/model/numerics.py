"""Elementwise guards and normalisations shared by every part of the model.

The reference sprinkles ``nan_to_num`` + ``clamp`` pairs over its forward pass; here
each guard is one named function so the model code reads like the spec
(``fc`` = finite clamp, ``nc`` = norm clamp, ``dc`` = drift clamp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def finite_clamp(x: jax.Array, m: float) -> jax.Array:
    """``fc_m``: NaN -> 0, +inf -> +m, -inf -> -m, then clip to [-m, m]."""
    x = jnp.nan_to_num(x, nan=0.0, posinf=m, neginf=-m)
    return jnp.clip(x, -m, m)


def norm_clamp(x: jax.Array, max_norm: float) -> jax.Array:
    """``nc``: scale rows so their L2 norm is at most ``max_norm`` (0 disables)."""
    if max_norm <= 0.0:
        return x
    norm = jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return x * scale.astype(x.dtype)


def drift_clamp(x: jax.Array, value_clamp: float, max_norm: float) -> jax.Array:
    """``dc = nc(fc_Dc(x))``: the guard applied to every drift vector."""
    return norm_clamp(finite_clamp(x, value_clamp), max_norm)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis with biased variance (PyTorch semantics)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * scale + bias


def group_norm(x: jax.Array, groups: int, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """GroupNorm of ``[..., W]`` into ``groups`` runs of consecutive channels."""
    shape = x.shape
    g = x.reshape(shape[:-1] + (groups, shape[-1] // groups))
    mean = jnp.mean(g, axis=-1, keepdims=True)
    centred = g - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    normed = (centred * jax.lax.rsqrt(var + eps)).reshape(shape)
    return normed * scale + bias


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as ``torch.nn.functional.gelu`` computes it."""
    return jax.nn.gelu(x, approximate=False)


def softplus(x: jax.Array) -> jax.Array:
    """PyTorch's softplus (beta 1, threshold 20)."""
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))
