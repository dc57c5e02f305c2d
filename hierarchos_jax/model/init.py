"""Parameter initialisers that follow the reference's PyTorch initialisation.

Loaded checkpoints overwrite every value, so these only matter for training from
scratch; they are kept faithful so that a fresh JAX model starts where a fresh
reference model would (same distributions, same scales).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def uniform(bound: float):
    """``U(-bound, bound)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear_default(fan_in: int):
    """PyTorch's default ``nn.Linear`` init for weight and bias: ``U(+-1/sqrt(fan_in))``."""
    return uniform(1.0 / math.sqrt(fan_in))


def normal(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def constant(value: float):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


def orthogonal_torch_layout(scale: float, torch_shape: tuple[int, int], transpose: bool):
    """Orthogonal init of a matrix that PyTorch stores as ``torch_shape`` ([rows, cols]).

    ``transpose=True`` returns it in Flax ``[in, out]`` layout (for Dense kernels).
    """

    def init(key, shape, dtype=jnp.float32):
        mat = jax.nn.initializers.orthogonal(scale)(key, torch_shape, jnp.float32)
        mat = mat.T if transpose else mat
        assert mat.shape == tuple(shape), (mat.shape, shape)
        return mat.astype(dtype)

    return init


def rwkv_ortho_gain(rows: int, cols: int) -> float:
    """Gain the reference uses for its low-rank orthogonal matrices."""
    return math.sqrt(rows / cols) if rows > cols else 1.0


def as_f32(x) -> jnp.ndarray:
    return jnp.asarray(np.asarray(x, dtype=np.float32))
