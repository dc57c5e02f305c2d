"""The RWKV-7 ("Heron") cell used by both the manager and the worker.

``step(x, state, deep) -> (y, state)`` advances one token. The state of a row is packed
as ``[W, 3 + N]`` (``W`` channels, head size ``N``), exactly as the reference stores it,
so checkpoints of carried state and golden states compare without reshuffling:

* slot 0: the LN1 output of the previous call (token-shift source of the time mix;
  also the cell's "hidden" read by the feedback, drift and context recovery paths),
* slot 1: the LN2 output of the previous call (token shift of the channel mix),
* slot 2: ``v_first`` (written, never read: both cells are layer 0),
* slots 3..: the per-head ``N x N`` matrix state, channel ``c = h*N + i`` holding row
  ``i`` (value index) of head ``h``, columns = key index.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.kernels.wkv import wkv_step
from hierarchos_jax.model import init as I
from hierarchos_jax.model.numerics import group_norm, layer_norm, softplus

STATE_CLIP = 50.0  # the cell's own constant clip of its new state (not configurable)
# The WKV part of the step (decay, a/b update, k v^T write, readout, clip of the matrix
# state) is hierarchos_jax.kernels.wkv.wkv_step: a fused XLA FFI kernel or its pure-JAX
# oracle, chosen by HIERARCHOS_WKV=jax|ffi|auto.


def init_state(batch: int, width: int, head_size: int, dtype=jnp.float32) -> jax.Array:
    """Zero packed state ``[batch, width, 3 + head_size]``."""
    return jnp.zeros((batch, width, 3 + head_size), dtype)


def state_hidden(state: jax.Array) -> jax.Array:
    """The cell's "hidden": slot 0 (the previous LN1 output)."""
    return state[:, :, 0]


def _linear_init_vectors(width: int, head_size: int):
    """Channel index vectors of the reference's RWKV-7 init (layer 0, depth ratios 0 / 1)."""
    c = np.arange(width, dtype=np.float64)
    d = c / width
    lin = c / max(1, width - 1) - 0.5
    half = (head_size - 1) / 2
    z = ((c % head_size) - half) / half if head_size > 1 else np.zeros_like(c)
    zig = z * np.abs(z)
    www = -6.0 + 6.0 * (c / max(1, width - 1))
    return d, lin, zig, www


class RWKVCell(nnx.Module):
    """One RWKV-7 block (time mix + channel mix) applied to a single token."""

    def __init__(
        self,
        width: int,
        head_size: int,
        lora_ranks: tuple[int, int, int],
        *,
        channel_mix_key_clamp: float,
        deepembed_clamp: float,
        rngs: nnx.Rngs,
    ):
        if width % head_size:
            raise ValueError(f"head size {head_size} does not divide width {width}")
        self.width = width
        self.head_size = head_size
        self.n_head = width // head_size
        self.key_clamp = float(channel_mix_key_clamp)
        self.deepembed_clamp = float(deepembed_clamp)
        r_w, r_a, r_g = lora_ranks
        W, H, N = width, self.n_head, head_size

        d, lin, zig, www = _linear_init_vectors(W, N)
        vec = lambda a: nnx.Param(jnp.asarray(np.asarray(a, np.float32)))  # noqa: E731
        with np.errstate(divide="ignore"):
            self.x_r = vec(1.0 - d**0.2)
            self.x_w = vec(1.0 - d**0.9)
            self.x_k = vec(1.0 - d**0.7)
            self.x_v = vec(1.0 - d**0.7)
            self.x_a = vec(1.0 - d**0.9)
            self.x_g = vec(1.0 - d**0.2)

        def lowrank(rank, key):
            first = nnx.Param(jnp.zeros((W, rank), jnp.float32))
            gain = I.rwkv_ortho_gain(rank, W) * 0.1
            second = nnx.Param(I.orthogonal_torch_layout(gain, (rank, W), False)(key, (rank, W)))
            return first, second

        self.w1, self.w2 = lowrank(r_w, rngs.params())
        self.w0 = vec(www + 0.5 + 2.5 * zig)
        self.a1, self.a2 = lowrank(r_a, rngs.params())
        self.a0 = vec(-0.19 + 0.3 * zig + 0.4 * lin)
        self.g1, self.g2 = lowrank(r_g, rngs.params())
        self.k_k = vec(0.71 - 0.1 * lin)
        self.k_a = vec(np.full(W, 1.02))
        self.r_k = nnx.Param(jnp.full((H, N), -0.04, jnp.float32))
        self.x_k_cm = vec(np.zeros(W))
        self.ln1_scale, self.ln1_bias = vec(np.ones(W)), vec(np.zeros(W))
        self.ln2_scale, self.ln2_bias = vec(np.ones(W)), vec(np.zeros(W))

        def dense(fan_in, fan_out, kernel_init):
            return nnx.Linear(fan_in, fan_out, use_bias=False, kernel_init=kernel_init, rngs=rngs)

        s = 1.0 / math.sqrt(W)
        self.receptance = dense(W, W, I.uniform(0.5 * s))
        self.key = dense(W, W, I.uniform(0.05 * s))
        self.value = dense(W, W, I.uniform(0.5 * s))
        self.output = dense(W, W, I.uniform(0.01 * s))
        self.ln_x_scale, self.ln_x_bias = vec(np.ones(W)), vec(np.zeros(W))
        self.key_cm = dense(W, 4 * W, I.orthogonal_torch_layout(2.0, (4 * W, W), True))
        self.value_cm = dense(4 * W, W, I.uniform(0.01 * s))

    def init_state(self, batch: int) -> jax.Array:
        return init_state(batch, self.width, self.head_size)

    def __call__(self, x: jax.Array, state: jax.Array, deep: jax.Array | None = None):
        """Advance one token: ``x [B, W]``, packed ``state [B, W, 3+N]`` -> ``(y, state)``."""
        B, W = x.shape
        H, N = self.n_head, self.head_size
        state = state.astype(jnp.float32)
        prev_tm = state[:, :, 0].astype(x.dtype)
        prev_cm = state[:, :, 1].astype(x.dtype)

        # --- time mix -------------------------------------------------------------
        xn = layer_norm(x, self.ln1_scale[...], self.ln1_bias[...])
        mix = lambda mu: xn + (prev_tm - xn) * mu[...]  # noqa: E731
        xr, xw, xk, xv, xa, xg = (mix(m) for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        a = jax.nn.sigmoid(self.a0[...] + (xa @ self.a1[...]) @ self.a2[...])
        g = jax.nn.sigmoid(xg @ self.g1[...]) @ self.g2[...]
        w = -softplus(-(self.w0[...] + jnp.tanh(xw @ self.w1[...]) @ self.w2[...])) - 0.5

        kk = (k * self.k_k[...]).reshape(B, H, N)
        kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
        kk = kk.reshape(B, W)
        k = k * (1.0 + (a - 1.0) * self.k_a[...])

        f32 = lambda t: t.astype(jnp.float32).reshape(B, H, N)  # noqa: E731
        # The fused WKV step reads the matrix part of the packed state and writes the
        # clipped new one in place (slots 0..2 are set below, once known).
        y, packed = wkv_step(
            state.reshape(B, H, N, 3 + N), f32(r), f32(w), f32(k), f32(v), f32(-kk), f32(kk * a),
            clip=STATE_CLIP,
        )
        y = y.reshape(B, W).astype(x.dtype)

        y = group_norm(y, H, self.ln_x_scale[...], self.ln_x_bias[...], eps=64e-5)
        bonus = (jnp.sum(r.reshape(B, H, N) * k.reshape(B, H, N) * self.r_k[...], axis=-1, keepdims=True)
                 * v.reshape(B, H, N)).reshape(B, W)
        x1 = x + self.output((y + bonus) * g)

        # --- channel mix ----------------------------------------------------------
        xn2 = layer_norm(x1, self.ln2_scale[...], self.ln2_bias[...])
        z = xn2 + (prev_cm - xn2) * self.x_k_cm[...]
        q = self.key_cm(z)
        ck, cd = self.key_clamp, self.deepembed_clamp
        if ck > 0:
            q = jnp.clip(q, -ck, ck)
        ffn = jnp.square(jax.nn.relu(q))
        if deep is not None:
            m = deep.astype(ffn.dtype)
            if cd > 0:
                m = jnp.clip(jnp.nan_to_num(m, nan=1.0, posinf=cd, neginf=-cd), -cd, cd)
            ffn = ffn * m
            if ck > 0 and cd > 0:
                bound = ck * ck * cd
                ffn = jnp.clip(ffn, -bound, bound)
        out = x1 + self.value_cm(ffn)

        slots = jnp.stack([xn, xn2, v], axis=-1).astype(jnp.float32)
        new_state = packed.reshape(B, W, 3 + N).at[:, :, :3].set(jnp.clip(slots, -STATE_CLIP, STATE_CLIP))
        return out, new_state
