"""Model directories: the reference's (``hierarchos.pt``) and ours (``model.safetensors``).

Both layouts share ``hierarchos_config.json`` (the full reference config) and the
tokenizer files. A directory we write carries both weight files, so PyTorch Hierarchos
loads it with its own loader and JAX users get a fast, code-free ``safetensors`` file.

* :func:`load_model_dir` — any Hierarchos v0.21 directory -> :class:`LoadedModel`
  (also quantized directories, see :mod:`hierarchos_jax.quant.model_dir`).
* :func:`save_model_dir` — write one, atomically (a temp directory renamed into place).
* :func:`export_torch_dir` — ``hierarchos export-torch SRC OUT``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.io import reference_state, torch_zip
from hierarchos_jax.io.atomic import atomic_directory

WEIGHTS_TORCH = "hierarchos.pt"
WEIGHTS_SAFETENSORS = "model.safetensors"
CONFIG_JSON = "hierarchos_config.json"
QUANTIZED_MANIFEST = "quantization.json"  # hierarchos_jax.quant.model_dir.MANIFEST
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
_META_KEYS = ("completed_epoch", "training_complete", "converted_from", "tokenizer_name")


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or inconsistent."""


class LoadedModel(NamedTuple):
    model: Any                     # hierarchos_jax.model.Hierarchos
    config: HierarchosConfig
    directory: Path
    metadata: dict                 # checkpoint metadata (epochs, tokenizer name, ...)


def _read_config(directory: Path, payload: dict | None, *, prefer_payload: bool) -> dict:
    if prefer_payload and payload is not None and isinstance(payload.get("config"), dict):
        return dict(payload["config"])
    path = directory / CONFIG_JSON
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{path}: not valid JSON ({e})") from None
    if payload is not None and isinstance(payload.get("config"), dict):
        return dict(payload["config"])
    raise ModelDirError(f"{directory}: no {CONFIG_JSON} and no config inside the checkpoint")


def find_weights(path: Path) -> Path:
    """The weights file of a model directory, searched as the reference's loader does.

    ``model.safetensors`` (ours) first, then ``hierarchos.pt``, ``model.pt``,
    ``hierarchos_final.pt``, then the newest ``*.pt``; failing all, the same search inside
    a single nested directory. A file path is returned as is.
    """
    if path.is_file():
        return path
    for name in (WEIGHTS_SAFETENSORS, WEIGHTS_TORCH, "model.pt", "hierarchos_final.pt"):
        if (path / name).is_file():
            return path / name
    pts = sorted(path.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if pts:
        return pts[-1]
    nested = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(nested) == 1:
        return find_weights(nested[0])
    raise ModelDirError(f"{path}: no {WEIGHTS_SAFETENSORS} or {WEIGHTS_TORCH} found")


def read_weights(path: Path) -> tuple[dict, dict | None, Path]:
    """``(state_dict, torch_payload_or_None, weights_file)`` of a directory or weights file."""
    weights = find_weights(Path(path))
    if weights.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(weights))), None, weights
        except Exception as e:  # safetensors raises its own error types
            raise ModelDirError(f"{weights}: cannot read safetensors file ({e})") from None
    payload = torch_zip.load_torch_file(weights)
    if not isinstance(payload, dict):
        raise ModelDirError(f"{weights}: expected a checkpoint dict, found {type(payload).__name__}")
    return dict(torch_zip.read_state_dict(payload)), payload, weights


def infer_missing_flags(raw: dict, state_dict: dict) -> dict:
    """Back-fill architecture flags an old config lacks, from which weights exist (spec §1.5)."""
    raw = dict(raw)
    keys = list(state_dict)
    if "use_deepembed" not in raw:
        raw["use_deepembed"] = any(k.startswith(("h_deepemb.", "l_deepemb.")) for k in keys)
    if "use_rosa" not in raw:
        raw["use_rosa"] = any(k.startswith("rosa_emb.") or k == "rosa_gate_logit" for k in keys)
    if "memory_token_routers" not in raw:
        raw["memory_token_routers"] = any(k.startswith(("rosa_router.", "ltm_router.")) for k in keys)
    if "rwkv_head_size" not in raw and "h_rnn.r_k" in state_dict:
        raw["rwkv_head_size"] = int(np.asarray(state_dict["h_rnn.r_k"]).shape[1])
    if any(k.startswith(("h_rnn.time_decay", "h_rnn.time_mix_")) for k in keys):
        raise ModelDirError("legacy scalar-RWKV checkpoint (h_rnn.time_decay/time_mix_*) is not supported")
    return raw


def load_model_dir(directory: str | os.PathLike) -> LoadedModel:
    """Load any Hierarchos v0.21 model directory (reference or ours), or a bare reference
    checkpoint file (inference or training checkpoint), into a JAX model."""
    from flax import nnx

    from hierarchos_jax.model.hierarchos import Hierarchos

    directory = Path(directory)
    if not directory.exists():
        raise ModelDirError(f"{directory}: no such model directory")
    if (directory / QUANTIZED_MANIFEST).is_file():  # written by `hierarchos quantize`
        from hierarchos_jax.quant.model_dir import load_quantized_dir

        return load_quantized_dir(directory)
    state_dict, payload, weights = read_weights(directory)
    # As the reference loader: the checkpoint's own config wins, else the JSON beside it.
    raw = infer_missing_flags(_read_config(weights.parent, payload, prefer_payload=True), state_dict)
    config = HierarchosConfig.from_reference_dict(raw)
    model = Hierarchos(config, rngs=nnx.Rngs(0))
    reference_state.import_state_dict(model, state_dict)
    meta = {k: payload[k] for k in _META_KEYS if payload is not None and k in payload}
    return LoadedModel(model, config, directory, meta)


def save_model_dir(model, out: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
                   metadata: dict | None = None, write_torch: bool = True) -> Path:
    """Write ``model`` as a model directory: config JSON, ``model.safetensors`` and (by
    default) the reference's ``hierarchos.pt``, plus tokenizer files copied from
    ``tokenizer_dir``. Nothing is visible at ``out`` until everything is written."""
    from safetensors.numpy import save_file

    out = Path(out)
    sd = reference_state.export_state_dict(model)
    cfg_dict = model.config.to_reference_dict()
    meta = {"completed_epoch": 0, "training_complete": True, "converted_from": None, "tokenizer_name": None}
    meta.update({k: v for k, v in (metadata or {}).items() if k in _META_KEYS})
    with atomic_directory(out) as tmp:
        if write_torch:
            payload = {"model_state_dict": sd, "config": cfg_dict}
            payload.update(meta)
            torch_zip.save_torch_file(tmp / WEIGHTS_TORCH, payload)
        # safetensors refuses aliased arrays: give the tied head its own copy.
        save_file({k: np.array(v, order="C", copy=True) for k, v in sd.items()}, str(tmp / WEIGHTS_SAFETENSORS))
        config_out = dict(cfg_dict)
        config_out.update({k: v for k, v in meta.items() if k in ("completed_epoch", "tokenizer_name",
                                                                  "converted_from")})
        (tmp / CONFIG_JSON).write_text(json.dumps(config_out, indent=2) + "\n")
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
    return out


def export_torch_dir(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``hierarchos export-torch``: any model directory -> one PyTorch Hierarchos loads."""
    src = Path(src)
    loaded = load_model_dir(src)
    meta = dict(loaded.metadata)
    meta.setdefault("converted_from", str(src))
    tokenizer_dir = src if src.is_dir() else src.parent
    try:
        from hierarchos_jax.io.tokenizer import TokenizerError, find_tokenizer_dir

        tokenizer_dir = find_tokenizer_dir(tokenizer_dir)
    except TokenizerError:
        pass  # no tokenizer to copy
    return save_model_dir(loaded.model, out, tokenizer_dir=tokenizer_dir, metadata=meta)
