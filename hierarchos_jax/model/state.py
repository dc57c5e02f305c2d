"""The recurrent state of a Hierarchos model, as one explicit pytree.

Everything a caller needs to continue a sequence lives here, so a sequence can be run
whole, in chunks, or one token at a time with the same result. (ROSA's token history is
host-side and lives in :mod:`hierarchos_jax.model.rosa`.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hierarchos_jax.model.ltm import WorkingMemory


class HierarchosState(NamedTuple):
    h_state: jax.Array         # [B, Wh, 3+Nh] manager RWKV packed state (f32)
    l_state: jax.Array         # [B, Wl, 3+Nl] worker RWKV packed state (f32)
    prev_context: jax.Array    # [B, C] context of the previous plan
    target_context: jax.Array  # [B, C] context of the latest plan
    drift: jax.Array           # [B, C] drift left by the last token (a TBPTT seed, if wanted)
    memory: WorkingMemory      # LTM working memory ([B|1, S, D] ...)
    position: jax.Array        # int32 scalar: absolute position of the next token

    @property
    def batch(self) -> int:
        return self.h_state.shape[0]


def zeros_state(config, batch: int, *, shared_memory: bool = False) -> HierarchosState:
    """A fresh state: zero RWKV states and contexts, empty working memory, position 0.

    ``shared_memory=True`` gives one working memory for all rows (the reference's
    behaviour for batch-1 eval, or ``isolate_batch_ltm=False``); otherwise every row
    has a private one.
    """
    C = config.context_dim
    h = jnp.zeros((batch, config.h_hidden, 3 + config.h_head_size), jnp.float32)
    l = jnp.zeros((batch, config.l_hidden, 3 + config.l_head_size), jnp.float32)
    ctx = jnp.zeros((batch, C), jnp.float32)
    mem = WorkingMemory.zeros(1 if shared_memory else batch, config.ltm_slots, config.ltm_val_dim)
    return HierarchosState(h, l, ctx, ctx, ctx, mem, jnp.int32(0))


def stop_gradient(state: HierarchosState) -> HierarchosState:
    """Cut the gradient path through a carried state (TBPTT chunk boundary)."""
    return jax.tree.map(jax.lax.stop_gradient, state)
