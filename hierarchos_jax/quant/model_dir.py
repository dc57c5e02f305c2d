"""Quantized model directories (``hierarchos quantize``).

Layout::

    OUT/
      hierarchos_config.json   the full reference config (as a float model directory)
      quantized.safetensors    every tensor under its reference state-dict name: the packed
                               uint8 [rows, bytes_per_row] matrices of the quantized layers,
                               float32 for the rest; the tied lm_head is stored once
                               (as tok_emb.weight)
      quantization.json        manifest (version 2): qtype (Q4_0 / Q8_0 / Q2_K are GGUF block
                               layouts, INT4 / REF_* the reference's), and per packed tensor its kind
                               (linear | embedding), logical shape [rows, K], padded K
      model.gguf               optional (``gguf=True``, GGUF qtypes only): the same tensors in a
                               GGUF file (see :mod:`hierarchos_jax.quant.gguf_export`)
      tokenizer files          copied from the source directory

Written atomically (a temp directory renamed into place). :func:`load_quantized_dir`
returns a :class:`~hierarchos_jax.io.model_dir.LoadedModel` whose quantized layers are
:class:`QuantizedLinear` / :class:`QuantizedEmbed`; ``load_model_dir`` dispatches here
when the manifest is present.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.io import model_dir as md
from hierarchos_jax.io.atomic import atomic_directory
from hierarchos_jax.io.reference_state import (
    from_reference,
    state_dict_layout,
    to_reference,
    variable_at,
)
from hierarchos_jax.quant.formats import get_format
from hierarchos_jax.quant.layers import QuantizedEmbed, QuantizedLinear
from hierarchos_jax.quant.model import (
    module_at,
    quantize_model,
    quantized_paths,
    set_module,
)

MANIFEST = "quantization.json"
WEIGHTS = "quantized.safetensors"
FORMAT_NAME = "hierarchos-jax-quantized"
# 2: Q4_0 / Q8_0 / Q2_K are the GGUF block layouts (version 1, never shipped, stored the
# reference layouts under those names; they are now REF_Q4_0 / REF_Q8_0 / REF_Q2_K).
FORMAT_VERSION = 2
TIED_HEAD = "lm_head.weight"


def is_quantized_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def _owner(path: str) -> str:
    return path.rpartition(".")[0]


def _entries(config):
    """Reference entries a quantized directory stores: parameters (not the tied head) and
    ``time_freqs``; the transient LTM buffers are not saved."""
    for e in state_dict_layout(config):
        if e.name == TIED_HEAD or (e.kind == "buffer" and e.name != "time_freqs"):
            continue
        yield e


def collect_tensors(model) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Every stored tensor of a quantized ``model`` under its reference name (packed uint8
    for the quantized layers, float32 for the rest) and the manifest entries of the packed
    ones."""
    cfg = model.config
    tensors: dict[str, np.ndarray] = {}
    packed_info: dict[str, dict] = {}
    for e in _entries(cfg):
        if e.kind == "buffer":
            tensors[e.name] = np.asarray(model.time_freqs[...], np.float32)
            continue
        owner = _owner(e.path)
        module = module_at(model, owner) if owner else None
        if isinstance(module, (QuantizedLinear, QuantizedEmbed)):
            if e.path.endswith(".bias"):
                tensors[e.name] = np.asarray(module.bias[...], np.float32)
                continue
            linear = isinstance(module, QuantizedLinear)
            rows, k = ((module.out_features, module.in_features) if linear
                       else (module.num_embeddings, module.features))
            tensors[e.name] = np.asarray(module.packed[...], np.uint8)
            packed_info[e.name] = {"module": owner, "kind": "linear" if linear else "embedding", "qtype": module.qtype,
                                   "shape": [rows, k], "padded_k": module.padded_in if linear else module.padded_features,
                                   "has_bias": bool(linear and module.bias is not None)}
            continue
        tensors[e.name] = np.array(to_reference(e.kind, np.asarray(variable_at(model, e.path)[...], np.float32)),
                                   order="C", copy=True)
    if not packed_info:
        raise ValueError("model has no quantized layers: call hierarchos_jax.quant.model.quantize_model first")
    return tensors, packed_info


def save_quantized_dir(model, out: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
                       metadata: dict | None = None, gguf: bool = False) -> Path:
    """Write a quantized ``model`` (see :func:`~hierarchos_jax.quant.model.quantize_model`).
    ``gguf``: also write ``model.gguf`` (GGUF layouts only; needs the ``gguf`` package)."""
    from safetensors.numpy import save_file

    out = Path(out)
    cfg = model.config
    tensors, packed_info = collect_tensors(model)
    qtypes = {info["qtype"] for info in packed_info.values()}
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "qtype": min(qtypes) if len(qtypes) == 1 else
                "mixed", "weights": WEIGHTS, "tied": {TIED_HEAD: "tok_emb.weight"}, "tensors": packed_info,
                "metadata": {k: v for k, v in (metadata or {}).items() if isinstance(v, (str, int, float, bool))
                             or v is None}}
    if gguf:
        from hierarchos_jax.quant.gguf_export import check_gguf_export

        check_gguf_export(packed_info)  # before anything is written
    with atomic_directory(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / md.CONFIG_JSON).write_text(json.dumps(cfg.to_reference_dict(), indent=2) + "\n")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if gguf:
            from hierarchos_jax.quant.gguf_export import GGUF_FILE, write_gguf

            write_gguf(tmp / GGUF_FILE, tensors, manifest, cfg.to_reference_dict())
        if tokenizer_dir is not None:
            for name in md.TOKENIZER_FILES:
                src = Path(tokenizer_dir) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
    return out


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise md.ModelDirError(f"{path}: cannot read the quantization manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise md.ModelDirError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise md.ModelDirError(f"{path}: manifest version {manifest.get('version')!r} is not supported "
                               f"(this version reads {FORMAT_VERSION}; quantize the float model again)")
    if not isinstance(manifest.get("tensors"), dict):
        raise md.ModelDirError(f"{path}: manifest has no 'tensors' table")
    return manifest


def _build_module(name: str, info: dict, tensors: dict, config):
    try:
        kind, qtype = info["kind"], info["qtype"]
        rows, k = (int(v) for v in info["shape"])
        owner = str(info["module"])
    except (KeyError, TypeError, ValueError):
        raise md.ModelDirError(f"quantization manifest: entry {name!r} is malformed") from None
    if owner not in quantized_paths(config):
        raise md.ModelDirError(f"quantization manifest: {owner!r} is not a quantizable layer of this config")
    get_format(qtype)
    if name not in tensors:
        raise md.ModelDirError(f"{WEIGHTS} has no '{name}' (listed in the manifest)")
    packed = tensors[name]
    try:
        if kind == "linear":
            bias_name = name.rpartition(".")[0] + ".bias"
            bias = tensors.get(bias_name) if info.get("has_bias") else None
            if info.get("has_bias") and bias is None:
                raise md.ModelDirError(f"{WEIGHTS} has no '{bias_name}'")
            return owner, QuantizedLinear(packed, qtype, k, rows, bias)
        if kind == "embedding":
            return owner, QuantizedEmbed(packed, qtype, rows, k)
    except ValueError as e:
        raise md.ModelDirError(f"'{name}': {e}") from None
    raise md.ModelDirError(f"quantization manifest: entry {name!r} has unknown kind {kind!r}")


def load_quantized_dir(directory: str | os.PathLike) -> md.LoadedModel:
    """Load a directory written by :func:`save_quantized_dir`."""
    from safetensors.numpy import load_file

    from hierarchos_jax.model.hierarchos import Hierarchos

    directory = Path(directory)
    manifest = _read_manifest(directory)
    weights = directory / WEIGHTS
    try:
        tensors = dict(load_file(str(weights)))
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
        raise md.ModelDirError(f"{weights}: cannot read safetensors file ({e})") from None
    raw = md._read_config(directory, None, prefer_payload=False)
    config = HierarchosConfig.from_reference_dict(raw)
    # Shapes only: the float tensors are filled in below, the packed layers swapped in.
    model = nnx.eval_shape(lambda: Hierarchos(config, rngs=nnx.Rngs(0)))
    owners = set()
    for name, info in manifest["tensors"].items():
        owner, module = _build_module(name, info, tensors, config)
        set_module(model, owner, module)
        owners.add(owner)
    for e in _entries(config):
        if _owner(e.path or "") in owners:
            continue
        if e.name not in tensors:
            raise md.ModelDirError(f"{weights}: no '{e.name}' (needed by this config)")
        value = from_reference(e.kind if e.kind != "buffer" else "same", np.asarray(tensors[e.name], np.float32))
        var = variable_at(model, e.path)
        want = tuple(var.get_value().shape)
        if tuple(value.shape) != want:
            raise md.ModelDirError(f"'{e.name}' has shape {tuple(value.shape)}, the config needs {want}")
        if not np.all(np.isfinite(value)):
            raise md.ModelDirError(f"'{e.name}' contains NaN or Inf")
        var.set_value(jnp.asarray(value))
    missing = [str(p) for p, v in nnx.to_flat_state(nnx.state(model))
               if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if missing:
        raise md.ModelDirError(f"{directory}: no weights for {', '.join(missing[:5])}")
    return md.LoadedModel(model, config, directory, dict(manifest.get("metadata") or {}))


def quantize_model_dir(src: str | os.PathLike, out: str | os.PathLike, qtype: str = "Q8_0", *,
                       gguf: bool = False) -> Path:
    """``hierarchos quantize``: any model directory -> a quantized one (``qtype`` for every
    selected layer; ``gguf``: also ``model.gguf``)."""
    fmt = get_format(qtype)
    src = Path(src)
    loaded = md.load_model_dir(src)
    quantize_model(loaded.model, fmt.name)
    meta = dict(loaded.metadata)
    meta["quantized_from"] = str(src)
    tokenizer_dir = None
    try:
        from hierarchos_jax.io.tokenizer import TokenizerError, find_tokenizer_dir

        tokenizer_dir = find_tokenizer_dir(src if src.is_dir() else src.parent)
    except TokenizerError:
        pass  # no tokenizer to copy
    return save_quantized_dir(loaded.model, out, tokenizer_dir=tokenizer_dir, metadata=meta, gguf=gguf)


def read_summary(directory: str | os.PathLike) -> dict:
    """Size summary of a quantized directory: packed tensor count, bytes of the weights
    file, and the ratio float32-bytes / stored-bytes over every stored tensor."""
    from safetensors import safe_open

    directory = Path(directory)
    manifest = _read_manifest(directory)
    stored = float_bytes = 0
    with safe_open(str(directory / WEIGHTS), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            info = manifest["tensors"].get(name)
            shape = f.get_slice(name).get_shape()
            n = int(np.prod(shape)) if shape else 1
            if info is None:
                stored += 4 * n  # float32
                float_bytes += 4 * n
            else:
                stored += n
                float_bytes += 4 * int(np.prod(info["shape"]))
    return {"packed": len(manifest["tensors"]), "bytes": (directory / WEIGHTS).stat().st_size,
                "ratio": float_bytes / max(stored, 1)}
