"""Titans-style long-term memory: top-k slot retrieval and working-memory updates.

Learned ("slow") memory is ``keys [S, K]`` and ``vals [S, D]`` (params of :class:`LTM`).
Working memory is explicit state, :class:`WorkingMemory`, with a leading memory-batch
axis ``Bm``: ``Bm == B`` gives every batch row a private memory (the reference's
``isolate_batch_ltm``), ``Bm == 1`` one memory shared by all rows (reads broadcast,
writes pooled over rows) — the shape decides, statically.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from hierarchos_jax.model import init as I

SLOT_CLIP = 50.0  # fast values and momentum are clipped to +-50 on every write


class WorkingMemory(NamedTuple):
    """Transient per-slot memory: values, momentum, last-write time and source."""

    fast: jax.Array        # [Bm, S, D] f32
    mom: jax.Array         # [Bm, S, D] f32
    timestamps: jax.Array  # [Bm, S] f32
    sources: jax.Array     # [Bm, S] int32 (0 unknown, 1 user, 2 training data, 3 correction)

    @staticmethod
    def zeros(rows: int, slots: int, val_dim: int) -> "WorkingMemory":
        return WorkingMemory(
            jnp.zeros((rows, slots, val_dim), jnp.float32),
            jnp.zeros((rows, slots, val_dim), jnp.float32),
            jnp.zeros((rows, slots), jnp.float32),
            jnp.zeros((rows, slots), jnp.int32),
        )

    @property
    def rows(self) -> int:
        return self.fast.shape[0]

    def per_row(self, batch: int) -> "WorkingMemory":
        """Private copies for ``batch`` rows (broadcasting a shared memory)."""
        if self.rows == batch:
            return self
        if self.rows != 1:
            raise ValueError(f"working memory has {self.rows} rows, cannot serve a batch of {batch}")
        return WorkingMemory(*(jnp.broadcast_to(a, (batch,) + a.shape[1:]) for a in self))


class Retrieved(NamedTuple):
    vals: jax.Array  # [B, k, D] raw retrieved values (slow + fast), zero where invalid
    idx: jax.Array   # [B, k] int32 slot indices, -1 where invalid / padded
    ts: jax.Array    # [B, k] f32 timestamps of the retrieved slots, 0 where invalid


class LTM(nnx.Module):
    """The learned memory: ``keys [S, K]`` and ``vals [S, D]``."""

    def __init__(self, slots: int, key_dim: int, val_dim: int, *, rngs: nnx.Rngs):
        self.keys = nnx.Param(I.normal(0.02)(rngs.params(), (slots, key_dim)))
        ortho = jax.nn.initializers.orthogonal(1.0)(rngs.params(), (slots, val_dim), jnp.float32)
        self.vals = nnx.Param(ortho * 0.02)


def retrieve_topk(
    keys: jax.Array,
    vals: jax.Array,
    memory: WorkingMemory,
    query: jax.Array,
    k: int,
    *,
    min_timestamp: float = 0.0,
    source_filter: int | None = None,
    score_grad_scale: float = 1.0,
) -> Retrieved:
    """Top-k retrieval of ``query [B, K]`` (already clamped) from ``vals + fast``.

    Selection uses stop-gradient scores. With ``score_grad_scale != 0`` the selected
    scores receive the straight-through gradient ``scale * <dL/dval_j, val_j>`` while the
    forward values stay unchanged.
    """
    B = query.shape[0]
    S, K = keys.shape
    q = query.astype(jnp.float32)
    scale = jnp.float32(K ** -0.5)
    sim = (q @ keys.astype(jnp.float32).T) * scale  # [B, S]
    valid = jnp.isfinite(sim)
    ts_all = jnp.broadcast_to(memory.timestamps, (B, S)) if memory.rows == 1 else memory.timestamps
    src_all = jnp.broadcast_to(memory.sources, (B, S)) if memory.rows == 1 else memory.sources
    if min_timestamp > 0:
        valid = valid & (ts_all >= min_timestamp)
    if source_filter is not None:
        valid = valid & (src_all == source_filter)
    valid = jax.lax.stop_gradient(valid)
    sim = jnp.nan_to_num(sim, nan=-jnp.inf, posinf=jnp.finfo(jnp.float32).max, neginf=-jnp.inf)
    sim = jnp.where(valid, sim, -jnp.inf)

    k_eff = min(k, S)
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(sim), k_eff)  # [B, k_eff], descending
    sel_valid = jnp.take_along_axis(valid, idx, axis=-1)

    fast_rows = memory.fast if memory.rows == B else jnp.broadcast_to(memory.fast, (B,) + memory.fast.shape[1:])
    got = vals.astype(jnp.float32)[idx] + jnp.take_along_axis(fast_rows, idx[..., None], axis=1)
    if score_grad_scale != 0.0:
        score = jnp.where(sel_valid, jnp.take_along_axis(sim, idx, axis=-1), 0.0)
        signal = (score - jax.lax.stop_gradient(score))[..., None]
        got = got + signal * jax.lax.stop_gradient(got) * score_grad_scale
    got = got * sel_valid[..., None].astype(got.dtype)
    ts = jnp.where(sel_valid, jnp.take_along_axis(ts_all, idx, axis=-1), 0.0)
    idx_out = jnp.where(sel_valid, idx, -1).astype(jnp.int32)
    if k_eff < k:
        pad = k - k_eff
        got = jnp.concatenate([got, jnp.zeros((B, pad, got.shape[-1]), got.dtype)], axis=1)
        idx_out = jnp.concatenate([idx_out, jnp.full((B, pad), -1, jnp.int32)], axis=1)
        ts = jnp.concatenate([ts, jnp.zeros((B, pad), ts.dtype)], axis=1)
    return Retrieved(got, idx_out, ts)


def timestamp_code(ts: jax.Array, freqs: jax.Array, val_dim: int) -> jax.Array:
    """Sinusoidal code ``[sin(ts*f), cos(ts*f)]`` (+ a zero column when ``D`` is odd)."""
    angles = ts[..., None].astype(jnp.float32) * freqs
    parts = [jnp.sin(angles), jnp.cos(angles)]
    if val_dim % 2:
        parts.append(jnp.zeros(ts.shape + (1,), jnp.float32))
    return jnp.concatenate(parts, axis=-1)


def inner_update(
    memory: WorkingMemory,
    idx: jax.Array,
    grads: jax.Array,
    lr: jax.Array | float,
    *,
    timestamp: jax.Array | float,
    source: int = 1,
    tokens_covered: jax.Array | float,
    reference_chunk_len: float,
    momentum: float,
    weight_decay: float,
    forget_rate: float,
) -> WorkingMemory:
    """Titans-style update of the working memory (no gradient flows through it).

    ``idx [B, ..., k]`` (-1 = ignore) addresses slots and ``grads [B, ..., k, D]`` carries
    the update signal for each address. A private memory (``Bm == B``) is updated per row;
    a shared memory (``Bm == 1``) pools every row's addresses. A row (or the pool) that
    addressed no valid slot is left unchanged (not even decayed).
    """
    if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"LTM learning rate must be finite and >= 0, got {lr}")
    Bm, S, D = memory.fast.shape
    idx = jax.lax.stop_gradient(idx).reshape(Bm, -1) if Bm > 1 else jax.lax.stop_gradient(idx).reshape(1, -1)
    grads = jax.lax.stop_gradient(grads).astype(jnp.float32).reshape(idx.shape + (D,))
    valid = idx >= 0
    safe = jnp.where(valid, idx, 0)
    onehot = (safe[..., None] == jnp.arange(S)) & valid[..., None]  # [Bm, n, S]
    counts = jnp.sum(onehot, axis=1).astype(jnp.float32)  # [Bm, S]
    sums = jnp.einsum("bns,bnd->bsd", onehot.astype(jnp.float32), grads)
    touched = counts > 0
    any_valid = jnp.any(valid, axis=1)  # [Bm]
    mean_g = sums / (counts[..., None] + 1e-8)

    retention = (1.0 - forget_rate) ** (jnp.asarray(tokens_covered, jnp.float32) / reference_chunk_len)
    mom = momentum * memory.mom
    mom = jnp.where(touched[..., None], jnp.clip(mom + mean_g, -SLOT_CLIP, SLOT_CLIP), mom)
    fast_touched = jnp.clip(retention * memory.fast - lr * (mom + weight_decay * memory.fast), -SLOT_CLIP, SLOT_CLIP)
    fast = jnp.where(touched[..., None], fast_touched, retention * memory.fast)
    ts = jnp.where(touched, jnp.asarray(timestamp, jnp.float32), memory.timestamps)
    src = jnp.where(touched, jnp.int32(source), memory.sources)

    keep = ~any_valid
    pick = lambda new, old: jnp.where(keep.reshape((Bm,) + (1,) * (old.ndim - 1)), old, new)  # noqa: E731
    return WorkingMemory(pick(fast, memory.fast), pick(mom, memory.mom), pick(ts, memory.timestamps),
                         pick(src, memory.sources))
