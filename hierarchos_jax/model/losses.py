"""Language-model loss and auxiliary costs (spec: model.md §7).

Labels are aligned with the inputs (the shift happens here) and may be one token longer
than the block (the TBPTT look-ahead). ``-100`` marks ignored targets.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hierarchos_jax.model.numerics import finite_clamp

IGNORE_INDEX = -100
LOGIT_CLAMP = 30.0


class LMLoss(NamedTuple):
    loss: jax.Array    # CE + z-loss
    ce: jax.Array
    z_loss: jax.Array
    weight: jax.Array  # sum of target weights (the denominator before the 1e-8 floor)


def shift_targets(labels: jax.Array, T: int, loss_weights: jax.Array | None = None):
    """Targets and weights for predictions ``0 .. n-1`` with ``n = min(T, L-1)``.

    Returns ``(targets [B, T], weights [B, T])`` padded to ``T`` with ignored positions.
    """
    B, L = labels.shape
    if L > T + 1:
        raise ValueError(f"labels are {L} long for a block of {T} tokens (at most T+1 allowed)")
    n = min(T, max(0, L - 1))
    targets = jnp.full((B, T), IGNORE_INDEX, labels.dtype).at[:, :n].set(labels[:, 1:n + 1])
    valid = targets != IGNORE_INDEX
    if loss_weights is None:
        weights = valid.astype(jnp.float32)
    else:
        w = jnp.zeros((B, L), jnp.float32).at[:, :loss_weights.shape[1]].set(loss_weights.astype(jnp.float32)[:, :L])
        shifted = jnp.zeros((B, T), jnp.float32).at[:, :n].set(w[:, 1:n + 1])
        weights = jnp.where(valid, shifted, 0.0)
    return targets, weights


def _token_terms(logits: jax.Array, targets: jax.Array):
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    safe = jnp.where(targets == IGNORE_INDEX, 0, targets)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return lse - picked, lse * lse


def lm_loss(logits: jax.Array, labels: jax.Array, *, z_loss_weight: float,
            loss_weights: jax.Array | None = None) -> LMLoss:
    """Dense path: CE (+ z-loss) from materialised ``logits [B, T, V]`` (already clamped)."""
    targets, weights = shift_targets(labels, logits.shape[1], loss_weights)
    ce_tok, z_tok = _token_terms(logits, targets)
    return _reduce(ce_tok, z_tok, weights, z_loss_weight)


def _reduce(ce_tok, z_tok, weights, z_loss_weight):
    total = jnp.sum(weights)
    den = jnp.maximum(total, 1e-8)
    ce = jnp.sum(weights * ce_tok) / den
    z = z_loss_weight * jnp.sum(weights * z_tok) / den if z_loss_weight > 0 else jnp.float32(0.0)
    return LMLoss(ce + z, ce, z, total)


def chunked_lm_loss(hidden: jax.Array, embedding: jax.Array, labels: jax.Array, *, z_loss_weight: float,
                    loss_weights: jax.Array | None = None, rows_per_chunk: int = 0, compute_dtype=None) -> LMLoss:
    """The same objective without materialising ``[B, T, V]`` logits at once.

    Rows (``B*T`` flattened positions) are processed ``rows_per_chunk`` at a time under
    ``jax.checkpoint``, so the backward pass recomputes each chunk's logits instead of
    storing them. ``rows_per_chunk = 0`` uses one chunk. With ``compute_dtype`` (bfloat16)
    the head matmul takes that dtype's operands and accumulates in float32: the logits,
    the clamp and the losses stay float32.
    """
    B, T, C = hidden.shape
    targets, weights = shift_targets(labels, T, loss_weights)
    n = B * T
    rows = n if rows_per_chunk <= 0 else min(rows_per_chunk, n)
    pad = (-n) % rows
    h = jnp.pad(hidden.reshape(n, C), ((0, pad), (0, 0)))
    tg = jnp.pad(targets.reshape(n), (0, pad), constant_values=IGNORE_INDEX)
    wt = jnp.pad(weights.reshape(n), (0, pad))

    @jax.checkpoint
    def chunk_terms(h_c, t_c):
        if compute_dtype is None:
            raw = jax.lax.dot_general(h_c, embedding, (((1,), (1,)), ((), ())))
        else:
            raw = jax.lax.dot_general(h_c.astype(compute_dtype), embedding.astype(compute_dtype),
                                      (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        logits = finite_clamp(raw, LOGIT_CLAMP)
        return _token_terms(logits, t_c)

    def body(carry, xs):
        h_c, t_c, w_c = xs
        ce_tok, z_tok = chunk_terms(h_c, t_c)
        return (carry[0] + jnp.sum(w_c * ce_tok), carry[1] + jnp.sum(w_c * z_tok)), None

    shape = (-1, rows)
    (ce_sum, z_sum), _ = jax.lax.scan(body, (jnp.float32(0.0), jnp.float32(0.0)),
                                      (h.reshape(shape + (C,)), tg.reshape(shape), wt.reshape(shape)))
    total = jnp.sum(weights)
    den = jnp.maximum(total, 1e-8)
    z = z_loss_weight * z_sum / den if z_loss_weight > 0 else jnp.float32(0.0)
    return LMLoss(ce_sum / den + z, ce_sum / den, z, total)


def weighted_mean(cost: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(cost * w) / sum(w)``, 0 when the weights sum to <= 0."""
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(cost * weights) / jnp.where(total > 0, total, 1.0), 0.0)


def ponder_cost(outputs, attention_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Mean ponder cost over planning tokens; also whether the block had any plan."""
    B, T = outputs.ponder_cost.shape
    mask = jnp.ones((B, T), jnp.float32) if attention_mask is None else attention_mask.astype(jnp.float32)
    w = mask * outputs.planned[None, :].astype(jnp.float32)
    return weighted_mean(outputs.ponder_cost, w), jnp.any(outputs.planned)


def commitment_cost(outputs, attention_mask: jax.Array | None) -> jax.Array:
    B, T = outputs.commitment.shape
    mask = jnp.ones((B, T), jnp.float32) if attention_mask is None else attention_mask.astype(jnp.float32)
    return weighted_mean(outputs.commitment, mask)
