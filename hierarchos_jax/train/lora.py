"""LoRA adapters as a pure transform of the parameter pytree (spec: training.md §7).

An adapted Linear of the reference computes ``y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`` with
``A [r, in]``, ``B [out, r]`` (PyTorch layout) and ``s = α / r``. Our kernels are Flax
``[in, out]`` (``W_flax = Wᵀ``), so the adapted kernel is ``W_flax + s·Aᵀ·Bᵀ``
(= ``(W + s·B·A)ᵀ``). The adapter pytree keeps ``A``/``B`` in the PyTorch layout, which
is also how they are saved (PEFT names), so reference adapters and ours are interchangeable.

* :class:`LoraSpec` — rank, alpha, dropout, target module names, modules fully trained.
* :func:`init_lora` — ``A`` Kaiming-uniform (bound ``1/√in``), ``B = 0``: the initial
  model equals the base; the modules-to-save (``ltm``) start as copies of the base.
* :func:`apply_lora` — ``(base, lora) -> params`` (pure, jittable, differentiable in
  ``lora``); :func:`merge_lora` — the same on the host in float64, rounded once.
* :func:`save_adapter` / :func:`load_adapter` — ``adapter_model.safetensors`` +
  ``adapter_config.json`` (atomic), with the base's shape signature and weights hash.

Unlike the reference (whose worker loop keeps references to the original
``l_input_proj``/``context_drift_proj``/``l_to_out`` layers, leaving their adapters dead
or half-dead), adapters act everywhere the weight is used: the fine-tuned model is exactly
the merged model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierarchos_jax.io.atomic import atomic_path, write_json_atomic
from hierarchos_jax.io.reference_state import TRANSIENT_LTM_BUFFERS
from hierarchos_jax.train.optimizer import path_name

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."

# The reference's target list, verbatim (``receptance_cm`` matches no module there either).
DEFAULT_TARGETS = ("key", "value", "receptance", "output", "key_cm", "receptance_cm", "value_cm",
                   "qproj", "in_proj", "h_to_context", "l_input_proj", "l_to_out", "h_halt_proj",
                   "context_drift_proj", "l_feedback_proj", "val_proj")
# Layers whose name contains one of these feed --finetune-unlock-percent (spec §7).
UNLOCK_PERCENT_NAMES = ("qproj", "in_proj", "val_proj", "h_to_context", "l_to_out", "h_halt_proj")


# Buffers of the reference's LTM module that its PEFT adapters save with ``ltm`` (not parameters).
_LTM_BUFFERS = frozenset({*TRANSIENT_LTM_BUFFERS, "ltm.neg_inf", "ltm.update_counts", "ltm.update_slots",
                          "ltm.ltm_deltas"})


class AdapterError(ValueError):
    """An adapter that is missing, malformed, or does not fit the base model."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    modules_to_save: tuple[str, ...] = ("ltm",)

    def __post_init__(self):
        if int(self.rank) < 1:
            raise AdapterError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)


# ---------------------------------------------------------------- which parameters

def _flat(params) -> dict[str, Any]:
    return {path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}


def _matches(module: str, target: str) -> bool:
    """PEFT's rule: the module name equals the target or ends with ``.target``."""
    return module == target or module.endswith("." + target)


def target_paths(params, spec: LoraSpec) -> list[str]:
    """Dotted kernel paths (``h_rnn.key.kernel``) of the Linear layers ``spec`` adapts."""
    out = []
    for name, leaf in _flat(params).items():
        if name.endswith(".kernel") and getattr(leaf, "ndim", 0) == 2:
            module = name[: -len(".kernel")]
            if any(_matches(module, t) for t in spec.targets):
                out.append(name)
    return out


def saved_paths(params, spec: LoraSpec) -> list[str]:
    """Parameters of the modules trained in full (``modules_to_save``: ``ltm.keys``, ``ltm.vals``)."""
    return [n for n in _flat(params) if any(n.startswith(m + ".") for m in spec.modules_to_save)]


def unlock_percent_rank(params, percent: float) -> int:
    """``--finetune-unlock-percent``: ``max(1, round(total · p/100 / Σ(in+out)))`` over the
    six top-level layers of spec §7 (Python ``round``: halves to even)."""
    flat = _flat(params)
    total = sum(int(np.prod(v.shape)) for v in flat.values())
    per_r = sum(int(v.shape[0]) + int(v.shape[1]) for n, v in flat.items()
                if n.endswith(".kernel") and any(s in n[: -len(".kernel")] for s in UNLOCK_PERCENT_NAMES))
    if per_r <= 0:
        return 8
    return max(1, int(round(total * (percent / 100.0) / per_r)))


# ---------------------------------------------------------------- init / apply / merge

def init_lora(params, spec: LoraSpec, rng: jax.Array) -> dict:
    """``{"adapters": {kernel_path: {"A": [r, in], "B": [out, r]}}, "saved": {path: array}}``."""
    flat = _flat(params)
    paths = target_paths(params, spec)
    if not paths:
        raise AdapterError(f"no Linear layer matches the LoRA targets {list(spec.targets)}")
    keys = jax.random.split(rng, len(paths))
    adapters = {}
    for key, p in zip(keys, paths):
        fan_in, fan_out = flat[p].shape
        bound = 1.0 / np.sqrt(fan_in)
        adapters[p] = {"A": jax.random.uniform(key, (spec.rank, fan_in), jnp.float32, -bound, bound),
                       "B": jnp.zeros((fan_out, spec.rank), jnp.float32)}
    saved = {p: jnp.array(flat[p], copy=True) for p in saved_paths(params, spec)}
    return {"adapters": adapters, "saved": saved}


def _dropout_mask(key, n: int, p: float) -> jax.Array:
    keep = jax.random.bernoulli(key, 1.0 - p, (n,))
    return keep.astype(jnp.float32) / (1.0 - p)


def apply_lora(base, lora: dict, spec: LoraSpec, *, dropout_key: jax.Array | None = None):
    """The adapted parameters: ``W_flax + s·Aᵀ·Bᵀ`` at every adapted kernel, the trained
    copies at the modules-to-save, ``base`` elsewhere (same pytree structure as ``base``).

    With ``dropout_key`` (training) the adapter input is dropped feature-wise with
    probability ``spec.dropout`` (one mask per layer and step, scaled by ``1/(1-p)``): the
    weight-space form of the reference's dropout on the adapter input.
    """
    adapters, saved = lora["adapters"], lora["saved"]
    drop = dropout_key is not None and spec.dropout > 0
    scale = jnp.float32(spec.scale)

    def one(path, w):
        name = path_name(path)
        if name in adapters:
            a, b = adapters[name]["A"], adapters[name]["B"]
            if drop:
                k = jax.random.fold_in(dropout_key, _stable_id(name))
                a = a * _dropout_mask(k, a.shape[1], spec.dropout)[None, :]
            return w + scale * (a.T @ b.T)
        if name in saved:
            return saved[name]
        return w

    return jax.tree_util.tree_map_with_path(one, base)


def _stable_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def merge_lora(base, lora: dict, spec: LoraSpec):
    """:func:`apply_lora` without dropout, computed on the host in float64 and rounded
    once to float32: ``W' = (W + s·B·A)`` in the reference's layout, transposed to ours."""
    adapters, saved = lora["adapters"], lora["saved"]

    def one(path, w):
        name = path_name(path)
        if name in adapters:
            a = np.asarray(adapters[name]["A"], np.float64)
            b = np.asarray(adapters[name]["B"], np.float64)
            merged = np.asarray(w, np.float64) + spec.scale * (b @ a).T
            return jnp.asarray(merged.astype(np.float32))
        if name in saved:
            return jnp.asarray(np.asarray(saved[name], np.float32))
        return w

    return jax.tree_util.tree_map_with_path(one, base)


def check_fits(base, lora: dict) -> None:
    """Raise :class:`AdapterError` (one line) unless every adapter fits the base's shapes."""
    flat = _flat(base)
    for name, ab in lora["adapters"].items():
        if name not in flat:
            raise AdapterError(f"adapter for '{name[: -len('.kernel')]}' but the base model has no such layer")
        fan_in, fan_out = flat[name].shape
        a, b = np.shape(ab["A"]), np.shape(ab["B"])
        if len(a) != 2 or len(b) != 2 or a[1] != fan_in or b[0] != fan_out or a[0] != b[1]:
            raise AdapterError(
                f"adapter for '{name[: -len('.kernel')]}' has lora_A {tuple(a)} / lora_B {tuple(b)}, but the base "
                f"layer is [out={fan_out}, in={fan_in}]: this adapter was trained on a different base model")
    for name, v in lora["saved"].items():
        if name not in flat:
            raise AdapterError(f"adapter carries '{name}' but the base model has no such parameter")
        if tuple(np.shape(v)) != tuple(flat[name].shape):
            raise AdapterError(f"adapter's '{name}' has shape {tuple(np.shape(v))}, the base model's is "
                               f"{tuple(flat[name].shape)}: this adapter was trained on a different base model")


# ---------------------------------------------------------------- base identity

def shape_signature(params) -> str:
    """sha256 of every parameter's path and shape (what an adapter must fit)."""
    items = sorted((n, list(map(int, v.shape))) for n, v in _flat(params).items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- files

def save_adapter(out_dir: str | os.PathLike, lora: dict, spec: LoraSpec, *, base: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write ``adapter_model.safetensors`` (PEFT key names, PyTorch layout) and
    ``adapter_config.json`` into ``out_dir``, each through a temp file + ``os.replace``
    (weights first, so a config never describes weights that are not there yet).

    ``base`` describes the base model (``path``, ``shape_sha256``, ``weights_sha256``)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, ab in lora["adapters"].items():
        module = name[: -len(".kernel")]
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.array(ab["A"], np.float32, order="C")
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.array(ab["B"], np.float32, order="C")
    for name, v in lora["saved"].items():
        tensors[f"{PEFT_PREFIX}{name}"] = np.array(v, np.float32, order="C")
    modules = sorted({n[: -len(".kernel")] for n in lora["adapters"]})
    base = dict(base or {})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none",
        "r": int(spec.rank), "lora_alpha": int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": list(spec.targets), "modules_to_save": list(spec.modules_to_save),
        "base_model_name_or_path": base.get("path"),
        "hierarchos_jax": {"adapted_modules": modules, "base_shape_sha256": base.get("shape_sha256"),
                           "base_weights_sha256": base.get("weights_sha256"), **(extra or {})},
    }
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(out / ADAPTER_CONFIG, config)
    return out


def load_adapter(path: str | os.PathLike) -> tuple[dict, LoraSpec, dict]:
    """``(lora, spec, config_json)`` from an adapter directory (ours or a reference PEFT one;
    ``adapter_model.bin`` is not read)."""
    from safetensors.numpy import load_file

    d = Path(path)
    if d.is_file():
        d = d.parent
    cfg_path, w_path = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise AdapterError(f"{d}: no {ADAPTER_CONFIG} (not a LoRA adapter directory)")
    if not w_path.is_file():
        raise AdapterError(f"{d}: no {ADAPTER_WEIGHTS}")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type {config.get('peft_type')!r} is not LORA")
    try:
        spec = LoraSpec(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                        dropout=float(config.get("lora_dropout", 0.0)),
                        targets=tuple(config.get("target_modules") or DEFAULT_TARGETS),
                        modules_to_save=tuple(config.get("modules_to_save") or ()))
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{cfg_path}: missing or invalid LoRA field ({e})") from None
    try:
        tensors = load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types
        raise AdapterError(f"{w_path}: cannot read safetensors file ({e})") from None
    adapters: dict[str, dict] = {}
    saved: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if name.endswith(part):
                adapters.setdefault(name[: -len(part)] + ".kernel", {})[slot] = np.asarray(value, np.float32)
                break
        else:
            if name not in _LTM_BUFFERS:  # a reference adapter also carries the LTM module's buffers
                saved[name] = np.asarray(value, np.float32)
    for name, ab in adapters.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{w_path}: '{name[: -len('.kernel')]}' has lora_{'A' if 'A' not in ab else 'B'} missing")
    if not adapters:
        raise AdapterError(f"{w_path}: no lora_A/lora_B tensors")
    return {"adapters": adapters, "saved": saved}, spec, config
