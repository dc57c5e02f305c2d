"""Compiled, stateful-looking entry points over the pure model.

:class:`Runner` splits an NNX model once into ``(graphdef, params)`` and calls a jitted
:func:`~hierarchos_jax.model.hierarchos.forward`. It also keeps ROSA's token history on
the host: ROSA depends only on token ids, so its hints are computed in NumPy before each
call and fed to the device as ``rosa_ids``. :class:`Carry` bundles the device state with
that host history; pass the returned carry to the next call to continue a sequence.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.model import rosa
from hierarchos_jax.model.hierarchos import Hierarchos, Outputs, forward
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.state import HierarchosState, zeros_state


class RosaHistory(NamedTuple):
    """Host-side ROSA history of every row (token ids so far) and the automaton cache."""

    past_tokens: np.ndarray | None  # [B, P] int64 or None (empty)
    automata: Any = None


class Carry(NamedTuple):
    state: HierarchosState
    rosa: RosaHistory


class Result(NamedTuple):
    outputs: Outputs
    logits: jax.Array | None  # [B, T, V]
    rosa_ids: np.ndarray | None


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("mode", "with_logits", "min_timestamp",
                                                                   "source_filter"))
def _forward_jit(graphdef, params, input_ids, rosa_ids, state, attention_mask, drift_seed, warmup_step, *,
                 mode, with_logits, min_timestamp=0.0, source_filter=None):
    model = nnx.merge(graphdef, params)
    outputs, new_state = forward(model, input_ids, state, mode=mode, rosa_ids=rosa_ids,
                                 attention_mask=attention_mask, drift_seed=drift_seed, warmup_step=warmup_step,
                                 min_timestamp=min_timestamp, source_filter=source_filter)
    logits = model.logits(outputs.hidden) if with_logits else None
    return outputs, logits, new_state


class Runner:
    """Run a model over token blocks, carrying state (device) and ROSA history (host)."""

    def __init__(self, model: Hierarchos):
        self.config = model.config
        self.graphdef, self.params = nnx.split(model)

    @property
    def model(self) -> Hierarchos:
        return nnx.merge(self.graphdef, self.params)

    def init_carry(self, batch: int, *, shared_memory: bool = False,
                   memory: WorkingMemory | None = None) -> Carry:
        state = zeros_state(self.config, batch, shared_memory=shared_memory)
        if memory is not None:
            state = state._replace(memory=WorkingMemory(*(jnp.asarray(a) for a in memory)))
        return Carry(state, RosaHistory(None, None))

    def rosa_ids(self, input_ids: np.ndarray, history: RosaHistory) -> tuple[np.ndarray | None, RosaHistory]:
        if not self.config.use_rosa:
            return None, history
        ids, past, automata = rosa.rosa_step(history.past_tokens, np.asarray(input_ids, np.int64),
                                             self.config.vocab_size, history.automata)
        return ids, RosaHistory(past, automata)

    def __call__(self, input_ids, carry: Carry, *, mode: RunMode, attention_mask=None, drift_seed=None,
                 position: int | None = None, warmup_step: float = 0.0, with_logits: bool = True,
                 min_timestamp: float = 0.0, source_filter: int | None = None) -> tuple[Result, Carry]:
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or min(input_ids.shape) < 1:
            raise ValueError(f"input_ids must be [B, T] with B, T >= 1, got shape {input_ids.shape}")
        vocab = self.config.vocab_size
        if input_ids.min() < 0 or input_ids.max() >= vocab:
            raise ValueError(f"token ids must lie in [0, {vocab}), got [{input_ids.min()}, {input_ids.max()}]")
        rosa_ids, history = self.rosa_ids(input_ids, carry.rosa)
        state = carry.state
        if position is not None:
            state = state._replace(position=jnp.int32(position))
        outputs, logits, new_state = _forward_jit(
            self.graphdef, self.params, jnp.asarray(input_ids, jnp.int32),
            None if rosa_ids is None else jnp.asarray(rosa_ids, jnp.int32), state,
            None if attention_mask is None else jnp.asarray(attention_mask),
            None if drift_seed is None else jnp.asarray(drift_seed, jnp.float32), jnp.float32(warmup_step),
            mode=mode, with_logits=with_logits, min_timestamp=float(min_timestamp), source_filter=source_filter)
        return Result(outputs, logits, rosa_ids), Carry(new_state, history)
