"""The manager: a planning step that ponders on a shadow state with ACT halting.

Called at tokens whose absolute position is a multiple of ``h_stride``. The manager's
real state has already advanced for this token; pondering re-applies the cell to the
same input on a throw-away copy, collects up to ``max_h_steps`` outputs and mixes them
with ACT weights into the new target context.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hierarchos_jax.model.numerics import finite_clamp

HALT_EPS = 1e-6


class Plan(NamedTuple):
    target_context: jax.Array  # [B, C]
    ponder_cost: jax.Array     # [B]: sum of the ACT "still running" masses
    ponder_steps: jax.Array    # int32 scalar: ponder steps executed (outputs collected - 1)


def halt_probability(halt_proj, h: jax.Array, halt_clamp: float) -> jax.Array:
    logit = finite_clamp(halt_proj(h)[..., 0], halt_clamp)
    return jnp.clip(jax.nn.sigmoid(logit), HALT_EPS, 1.0 - HALT_EPS)


def act_mix(outputs: jax.Array, halt: jax.Array, collected: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ACT weighting of ``outputs [M, B, W]`` with halt probabilities ``halt [M, B]``.

    Only the first ``collected`` (scalar, >= 1) entries take part; the remainder mass
    goes to the last collected output. Returns ``(mixed [B, W], ponder_cost [B])``.
    """
    M = outputs.shape[0]
    p = jnp.clip(jnp.nan_to_num(halt.astype(jnp.float32), nan=0.5, posinf=1.0 - HALT_EPS, neginf=HALT_EPS),
                 HALT_EPS, 1.0 - HALT_EPS)
    used = (jnp.arange(M) < collected)[:, None]
    remain = jnp.where(used, 1.0 - p, 1.0)
    running = jnp.cumprod(jnp.concatenate([jnp.ones_like(remain[:1]), remain[:-1]], axis=0), axis=0)
    weights = jnp.where(used, p * running, 0.0)
    last = collected - 1
    p_last = jax.lax.dynamic_index_in_dim(p, last, keepdims=False)
    run_last = jax.lax.dynamic_index_in_dim(running, last, keepdims=False)
    h_last = jax.lax.dynamic_index_in_dim(outputs, last, keepdims=False).astype(jnp.float32)
    remainder = run_last * (1.0 - p_last)
    total = jnp.sum(weights, axis=0) + remainder + 1e-8
    mixed = jnp.sum((weights / total)[..., None] * outputs.astype(jnp.float32), axis=0)
    mixed = mixed + (remainder / total)[..., None] * h_last
    cost = jnp.sum(jnp.where(used, running, 0.0), axis=0)
    return mixed, cost


def plan(model, enc_fb: jax.Array, h_state: jax.Array, h_real: jax.Array, deep_h, *, mode, cfg) -> Plan:
    """ACT ponder from the (already advanced) real manager state; returns the new target."""
    M = cfg.max_h_steps
    A, R, Hc = cfg.activation_clamp, cfg.recurrent_state_clamp, cfg.halt_logit_clamp
    B, W = h_real.shape
    outputs = jnp.zeros((M, B, W), jnp.float32).at[0].set(h_real.astype(jnp.float32))
    halts = jnp.ones((M, B), jnp.float32).at[0].set(halt_probability(model.h_halt_proj, h_real, Hc))
    shadow = finite_clamp(h_state, R)

    def ponder(s, outputs, halts, shadow):
        h, shadow = model.h_rnn(enc_fb, shadow, deep_h)
        h, shadow = finite_clamp(h, A), finite_clamp(shadow, R)
        outputs = outputs.at[s].set(h.astype(jnp.float32))
        halts = halts.at[s].set(halt_probability(model.h_halt_proj, h, Hc))
        return outputs, halts, shadow

    if mode.act_early_exit:
        # Inference only: a while loop that stops when the batch-mean halt probability of
        # the last collected output exceeds the threshold (checked before every step).
        def cond(c):
            s, outputs, halts, _ = c
            return (s < M) & ~(jnp.mean(halts[s - 1]) > cfg.h_halt_thresh)

        def body(c):
            s, outputs, halts, shadow = c
            return (s + 1,) + ponder(s, outputs, halts, shadow)

        collected, outputs, halts, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), outputs, halts, shadow))
    else:
        for s in range(1, M):  # fixed length: every ponder step runs (training and parity eval)
            outputs, halts, shadow = ponder(s, outputs, halts, shadow)
        collected = jnp.int32(M)

    mixed, cost = act_mix(outputs, halts, collected)
    mixed = jnp.nan_to_num(mixed, nan=0.0, posinf=10.0, neginf=-10.0)
    mixed = finite_clamp(mixed, A).astype(h_real.dtype)
    target = finite_clamp(model.h_to_context(mixed), cfg.context_state_clamp)
    return Plan(target, cost.astype(h_real.dtype), collected - 1)
