"""The worker: refines a drift vector against the manager's context, then takes one step.

Refinement runs the worker cell on a shadow copy of its state; each step nudges the
drift by ``tanh(context_drift_proj(y))`` and stops once the batch-mean nudge falls
below ``l_conv_atol``. Only the final step advances the real worker state, from the
original state, with the refined drift folded into its input.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hierarchos_jax.model.numerics import drift_clamp, finite_clamp

HINGE_CAP = 100.0


class WorkerOut(NamedTuple):
    hidden: jax.Array      # [B, C] token's final hidden (enc + l_to_out(y))
    l_state: jax.Array     # [B, Wl, 3+N]
    commitment: jax.Array  # [B] mean hinge cost over executed refinement steps
    drift: jax.Array       # [B, C] final drift
    steps: jax.Array       # int32 scalar: refinement steps executed


def _worker_input(model, enc, context, drift, R):
    return finite_clamp(model.l_input_proj(jnp.concatenate([enc, context + drift], axis=-1)), R)


def refine_and_step(model, enc, context, l_state, drift0, deep_l, *, mode, cfg) -> WorkerOut:
    A, R, Cc = cfg.activation_clamp, cfg.recurrent_state_clamp, cfg.context_state_clamp
    dclamp = lambda d: drift_clamp(d, cfg.drift_state_clamp, cfg.drift_norm_clamp)  # noqa: E731
    eps, theta, max_steps = cfg.l_conv_atol, cfg.commitment_threshold, cfg.max_l_steps

    enc = finite_clamp(enc, A)
    context = finite_clamp(context, Cc)
    l_state = finite_clamp(l_state, R)
    drift = dclamp(drift0)
    u = _worker_input(model, enc, context, drift, R)

    def refine(shadow, drift, u):
        """One refinement step: new shadow state, drift and worker input, hinge cost, mean |delta|."""
        y, shadow = model.l_rnn(u, shadow, deep_l)
        y, shadow = finite_clamp(y, A), finite_clamp(shadow, R)
        delta = jnp.tanh(model.context_drift_proj(y)) * cfg.drift_delta_scale
        drift = dclamp(drift + delta)
        hinge = jnp.minimum(jax.nn.relu(jnp.sum(drift * drift, axis=-1) - theta), HINGE_CAP)
        return shadow, drift, _worker_input(model, enc, context, drift, R), hinge, jnp.mean(jnp.abs(delta))

    B = enc.shape[0]
    zero_cost = jnp.zeros((B,), enc.dtype)

    if mode.training:
        # Fixed-length masked loop so gradients flow (the reference's mode "S", equal in
        # value to breaking out of the loop once the drift has converged).
        shadow, active = l_state, jnp.bool_(True)
        cost_sum, count = zero_cost, jnp.int32(0)
        for _ in range(max_steps):
            cand_shadow, cand_drift, cand_u, hinge, mean_delta = refine(shadow, drift, u)
            cost_sum = cost_sum + jnp.where(active, hinge, 0.0)
            count = count + active.astype(jnp.int32)
            shadow = jnp.where(active, cand_shadow, shadow)
            drift = jnp.where(active, cand_drift, drift)
            u = jnp.where(active, cand_u, u)
            active = active & (mean_delta >= eps)
        commitment = cost_sum / jnp.maximum(count, 1).astype(cost_sum.dtype)
        steps = count
    else:
        # Inference: a while loop that stops on the batch-global convergence test.
        legacy = mode.legacy_worker_exit

        def cond(c):
            return (c[0] < max_steps) & ~c[1]

        def body(c):
            step, _, shadow, drift, u, cost_sum = c
            new_shadow, drift, u, hinge, mean_delta = refine(shadow, drift, u)
            done = mean_delta < eps
            if legacy:  # also stop when slots 0..2 of the shadow state stopped moving
                old, new = shadow[..., :3], new_shadow[..., :3]
                done = done | jnp.all(jnp.abs(new - old) <= eps + 1e-5 * jnp.abs(old))
            return step + 1, done, new_shadow, drift, u, cost_sum + hinge

        steps, _, _, drift, u, cost_sum = jax.lax.while_loop(
            cond, body, (jnp.int32(0), jnp.bool_(False), l_state, drift, u, zero_cost))
        if legacy:
            commitment = zero_cost
        else:
            commitment = cost_sum / jnp.maximum(steps, 1).astype(cost_sum.dtype)

    # The final real step starts from the original state; u already encodes the final drift.
    y, new_state = model.l_rnn(u, l_state, deep_l)
    y, new_state = finite_clamp(y, A), finite_clamp(new_state, R)
    hidden = finite_clamp(enc + model.l_to_out(y), A)
    return WorkerOut(hidden, new_state, commitment, dclamp(drift), steps)
