"""Chat runtime-state files: continue a conversation's recurrence in a later session (spec
inference.md §12.2; our own format).

One ``safetensors`` file, written atomically: the batch-1 recurrent state (``h_state``,
``l_state``, ``prev_context``, ``target_context``, ``drift``), the absolute ``position``
and the ROSA token history (the automaton is rebuilt from it on load). Metadata: kind,
version, save time, model path and the shape signature that must match the loading model
(``context_dim``, ``h_hidden``, ``l_hidden``, ``vocab_size``, head sizes). The learned
memory and the weights are never stored here (the memory has its own file,
:mod:`hierarchos_jax.infer.memory`).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from hierarchos_jax.infer.engine import GenerationState
from hierarchos_jax.io.atomic import write_bytes_atomic
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.rosa import RosaAutomaton
from hierarchos_jax.model.state import HierarchosState

KIND = "hierarchos_jax_chat_runtime_state"
VERSION = "1"
FIELDS = ("h_state", "l_state", "prev_context", "target_context", "drift")


class ChatStateError(ValueError):
    """A chat-state file is unreadable or made for another model shape."""


def signature(config) -> dict:
    return {"context_dim": config.context_dim, "h_hidden": config.h_hidden, "l_hidden": config.l_hidden,
            "vocab_size": config.vocab_size, "h_head_size": config.h_head_size, "l_head_size": config.l_head_size}


def default_path(model_path: str | os.PathLike, directory: str | os.PathLike = "hierarchos_chat_states") -> Path:
    """``./hierarchos_chat_states/<model-dir-name>-YYYYmmdd-HHMMSS.safetensors`` (the
    reference's ``auto`` path, with our extension)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(directory) / f"{Path(model_path).resolve().name}-{stamp}.safetensors"


def save_chat_state(path: str | os.PathLike, state: GenerationState, config, *, model_path: str = "") -> Path:
    from safetensors.numpy import save

    if state.layout != "batch" or state.batch != 1:
        raise ValueError("a chat state is one batch-1 conversation")
    st = state.state
    tensors = {f: np.ascontiguousarray(np.asarray(getattr(st, f), np.float32)) for f in FIELDS}
    tensors["position"] = np.asarray([int(np.asarray(st.position))], np.int64)
    tokens = state.rosa[0].tokens if state.rosa is not None else np.zeros((0,), np.int64)
    tensors["rosa_tokens"] = np.ascontiguousarray(np.asarray(tokens, np.int64))
    meta = {"kind": KIND, "version": VERSION, "saved_at": repr(time.time()), "model_path": str(model_path),
            "signature": json.dumps(signature(config), sort_keys=True)}
    path = Path(path)
    write_bytes_atomic(path, save(tensors, metadata=meta))
    return path


def load_chat_state(path: str | os.PathLike, config, memory: WorkingMemory) -> GenerationState:
    """The saved conversation state (with ``memory`` as its working memory)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise ChatStateError(f"{path}: not a readable chat-state file ({e})") from None
    if meta.get("kind") != KIND:
        raise ChatStateError(f"{path}: not a hierarchos-jax chat-state file")
    saved = json.loads(meta.get("signature", "{}"))
    want = signature(config)
    if saved != want:
        diff = ", ".join(f"{k} {saved.get(k)} vs {v}" for k, v in want.items() if saved.get(k) != v)
        raise ChatStateError(f"{path}: made for another model shape ({diff})")
    missing = [f for f in (*FIELDS, "position", "rosa_tokens") if f not in tensors]
    if missing:
        raise ChatStateError(f"{path}: missing {', '.join(missing)}")
    position = int(tensors["position"][0])
    tokens = tensors["rosa_tokens"]
    rosa = None
    if config.use_rosa:
        if len(tokens) != position:
            raise ChatStateError(f"{path}: ROSA history has {len(tokens)} tokens for position {position}")
        automaton = RosaAutomaton(config.vocab_size)
        if len(tokens):
            automaton.extend(tokens.tolist())
        rosa = (automaton,)
    parts = {f: jnp.asarray(tensors[f], jnp.float32) for f in FIELDS}
    state = HierarchosState(memory=WorkingMemory(*(jnp.asarray(a) for a in memory)),
                            position=jnp.int32(position), **parts)
    return GenerationState(state, rosa, "batch")
