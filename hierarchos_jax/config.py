"""The frozen Hierarchos model configuration (spec: ``model.md`` §1, §2.5).

One immutable, hashable :class:`HierarchosConfig` holds every key the model reads
(``model.md`` §1.1–§1.3) as a typed field, plus everything else a reference
``hierarchos_config.json`` carries (training / CLI keys, ``tokenizer_name``,
``completed_epoch``, …) in :attr:`HierarchosConfig.extra`.  The config is meant to be
a static argument of :func:`jax.jit`: equality and hashing cover the model fields
only, so changing a training-only key (``extra``) never forces a recompile.

This module imports nothing else of the package (stdlib and numpy only).

Three ways to build a config, with deliberately different strictness
--------------------------------------------------------------------

``HierarchosConfig(...)`` / :meth:`HierarchosConfig.from_dict` / :meth:`HierarchosConfig.replace`
    *Python-built* configs.  Missing keys take the **reference CLI defaults** (the
    values a real training run stores: ``l_conv_atol=1e-4``, ``commitment_threshold=0.05``,
    memory-gate warm-up ``2000``/``0.1``, …).  Every bad value raises
    :class:`ConfigError` naming the key, including values the reference would silently
    replace (a clamp ``≤ 0``, a non-numeric clamp, …) and a few range checks the
    reference does not make (``ltm_lr ≥ 0``, ``0 ≤ ltm_forget_rate ≤ 1``, …).

:meth:`HierarchosConfig.from_reference_dict` / :meth:`HierarchosConfig.from_json_file`
    *Reference* configs (a checkpoint's ``config`` or ``hierarchos_config.json``).  The
    reference model's reading rules are reproduced exactly:

    * a key that is **absent** takes the *model's* ``getattr`` fallback, which for a few
      keys differs from the CLI default (``l_conv_atol`` 0.01, ``commitment_threshold``
      0.1, ``memory_gate_warmup_steps`` 0, ``memory_gate_warmup_floor`` 0.0, and
      ``reference_chunk_len`` = ``training_chunk_size`` if present else 128) — see
      ``model.md`` §1.1/§1.2 "Fallback if absent";
    * ``vocab_size`` and ``context_dim`` are required (the reference has no default);
    * ``None`` for ``h_hidden``/``l_hidden``/``h_stride``/… takes the default;
      ``detach_every_n_steps ≤ 0`` becomes ``None``; ``rwkv_head_size`` in
      ``{None, 0, "", False}`` selects the automatic rule and a numeric string works like
      the integer; ``"auto"`` is rejected (the reference cell constructor fails on it);
    * the "pos"/"nonneg" clamps (§1.2) silently fall back to their default in the
      reference when non-numeric / non-finite / out of range; here they fall back too,
      but with one :class:`ConfigWarning` listing them;
    * values the reference would crash on (a non-integer width, ``h_hidden !=
      context_dim``, a head size that does not divide a width, …) raise
      :class:`ConfigError`;
    * keys the reference CLI writes (``REFERENCE_EXTRA_KEYS``) go to ``extra`` silently;
      any other unknown key goes to ``extra`` too, with one :class:`ConfigWarning`
      listing them.

    Such a config remembers the original dict, so :meth:`to_reference_dict` gives back
    every original key with its original (raw, un-normalised) value in the original
    order, and :meth:`to_json_file` writes byte-identical JSON (``indent=2``,
    ``default=str``, no trailing newline, as the reference writes it).  A field changed
    afterwards (:meth:`replace`) is written with its new value.  Weight-based back-fill of
    absent architecture flags (``model.md`` §1.5) is the checkpoint loader's job: use
    :func:`backfill_reference_dict` before :meth:`from_reference_dict`.

Presets: :meth:`HierarchosConfig.from_preset` reads ``<name>.json`` from
``hierarchos_jax/configs/`` (where a wheel installs the presets) or from the source
tree's top-level ``configs/`` (editable / source checkouts); it also accepts a path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "FrozenDict",
    "HierarchosConfig",
    "MODEL_KEYS",
    "REFERENCE_CLI_KEYS",
    "REFERENCE_EXTRA_KEYS",
    "backfill_reference_dict",
    "choose_head_size",
    "list_presets",
    "lora_rank",
    "preset_dirs",
]


class ConfigError(ValueError):
    """An invalid Hierarchos configuration; the message names the offending key."""


class ConfigWarning(UserWarning):
    """A reference config was read with a reference fallback, or had unknown keys."""


# ----------------------------------------------------------------------------------
# Small immutable mapping for ``extra``
# ----------------------------------------------------------------------------------


class FrozenDict(Mapping[str, Any]):
    """An insertion-ordered, read-only, picklable mapping (used for ``extra``).

    Values are deep-copied on construction; the mapping itself cannot be changed.
    Hashable as long as its values are JSON-serialisable (hash over a canonical JSON
    dump), though :class:`HierarchosConfig` does not include ``extra`` in its hash.
    """

    __slots__ = ("_d",)

    def __init__(self, data: Union[Mapping[str, Any], Iterable[Tuple[str, Any]], None] = None):
        d = dict(data) if data is not None else {}
        for k in d:
            if not isinstance(k, str):
                raise ConfigError(f"config keys must be strings, got {k!r}")
        object.__setattr__(self, "_d", copy.deepcopy(d))

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"FrozenDict({self._d!r})"

    def __setattr__(self, name, value):
        raise AttributeError("FrozenDict is immutable")

    def __hash__(self) -> int:
        return hash(json.dumps(self._d, sort_keys=True, default=repr))

    def __reduce__(self):
        return (FrozenDict, (list(self._d.items()),))

    def to_dict(self) -> dict:
        """A deep copy as a plain ``dict`` (original order)."""
        return copy.deepcopy(self._d)


# ----------------------------------------------------------------------------------
# Derived-value rules (model.md §1.4)
# ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def choose_head_size(width: int, requested: Optional[int] = None) -> int:
    """RWKV head size for a cell of ``width`` channels (``model.md`` §1.4).

    A positive ``requested`` size that divides ``width`` is used as is.  Otherwise the
    candidates are the divisors of ``width`` in ``[1, min(width, 128)]``; if any is
    ``≥ 16`` the ones below 16 are dropped; the candidate minimising ``|ln(size/64)|``
    wins, ties going to the size ``≤ 64``.  448 → 64, 96 → 48, 100 → 50, 16 → 16,
    8 → 8, 450 → 75.
    """
    width = int(width)
    if requested:
        requested = int(requested)
        if requested > 0 and width % requested == 0:
            return requested
    candidates = [s for s in range(1, min(width, 128) + 1) if width % s == 0]
    if not candidates:
        return 1
    big = [s for s in candidates if s >= 16]
    if big:
        candidates = big
    return min(candidates, key=lambda s: (abs(math.log(s / 64.0)), s > 64))


def lora_rank(width: int, scale: float) -> int:
    """RWKV low-rank size ``r(W, s)`` (``model.md`` §1.4).

    ``8`` if ``W < 128``, else ``max(32, 32 · round(s·√W / 32))`` with Python's
    half-to-even ``round``.
    """
    width = int(width)
    if width < 128:
        return 8
    return max(32, int(round((scale * math.sqrt(width)) / 32.0) * 32))


# ----------------------------------------------------------------------------------
# Key tables
# ----------------------------------------------------------------------------------

# Every destination of the reference ``hierarchos_cli.py`` argument parser (v0.21).
# A reference config stores all of them (training.md §8.6).
REFERENCE_CLI_KEYS = frozenset(
    """
    accumulation_steps activation_clamp adaptive_ponder alpaca amp arc_agi_keep_samples
    arc_agi_max_tasks arc_agi_max_test_items arc_agi_path assistant_recovery
    auto_length_bucket_size auto_max_length batch_size benchmark benchmark_all
    benchmark_out_dir benchmark_preset benchmark_run_name benchmark_sequential
    benchmark_suite carry_chat_state chat_input_history_chars chat_input_history_turns
    chat_prefill_chunk_size chat_state_file ckpt_input ckpt_tok_path
    commitment_loss_weight commitment_threshold compile compile_backend
    compile_cudagraphs compile_dynamic compile_fullgraph_worker compile_h_rnn
    compile_mode compile_pad_to_chunk_size compile_quiet compile_static_worker_loop
    completion_column context_dim context_state_clamp cpu_chunked_lm_loss
    cpu_loss_chunk_rows cuda_chunked_lm_loss cuda_loss_chunk_rows cuda_prefetch
    dataset_size debug_numerics detach_every_n_steps device disable_lr_schedule
    disable_ltm_lr_schedule drift_delta_scale drift_norm_clamp drift_state_clamp
    drop_empty_completions enable_quantized_learning encourage_thinking
    entropy_stop_min_tokens entropy_stop_threshold entropy_stop_top_prob eos_stop_prob
    epochs eval_batch_size eval_every_epoch eval_limit eval_steps eval_tasks
    finetune_unlock_percent force_compile full_sample_activation_checkpointing
    full_sample_bptt full_sample_checkpoint_segment_size grad_clip
    gradient_checkpointing h_halt_thresh h_hidden h_stride halt_logit_clamp
    hf_auto_shard hf_cache_chunks_per_file hf_dataset hf_dataset_config
    hf_dataset_revision hf_dataset_split hf_shard_cache_dir hf_streaming_shuffle_buffer
    hf_token_cache hf_token_cache_dir inf_output kayla l_conv_atol l_hidden
    length_bucket_auto_sample_size length_bucket_auto_tolerance length_bucket_size
    length_bucketing list_benchmarks local_token_cache local_token_cache_dir lora_alpha
    lora_r ltm_cpu_gather_retrieval ltm_cpu_sparse_update ltm_key_dim ltm_lora_path
    ltm_lr ltm_schedule_min_lr ltm_schedule_steps ltm_score_grad_scale ltm_slots
    ltm_topk ltm_training_mode ltm_val_dim ltm_value_alignment_min_updates
    ltm_value_alignment_weight max_ce_loss_for_backward max_commitment_cost_for_backward
    max_h_steps max_l_steps max_length max_new_tokens max_ponder_cost_for_backward
    max_sanitized_gradient_values memory_gate_warmup_floor memory_gate_warmup_steps
    memory_token_routers min_lr min_ltm_lr min_response_tokens mode model_path
    num_workers online_ltm_grad_clip out_dir override_scheduling padding_metric_steps
    padding_metrics passive_learning passive_lr passive_response_learning persist_state
    persistent_dim ponder_loss_weight ponder_target_scale pre_chunked_dataset
    pre_pt_dataset prefetch_factor progress_log_steps prompt_column prompt_loss_weight
    pt_cache_size recurrent_state_clamp refresh_hf_shards refresh_hf_token_cache
    refresh_local_token_cache repetition_penalty reset_halt_bias
    response_boundary_loss_weight response_boundary_tokens response_loss_weight
    resume_chat_from_state_file resume_from_ckpt rosa_max_context
    rwkv_channel_mix_deepembed_clamp rwkv_channel_mix_key_clamp rwkv_head_size
    rwkv_weight_decay save_steps shadow_model_path starting_lr startup_weight_max_abs
    static_ltm_lr streaming_datasets strict_all_token_loss strict_benchmarks
    surprise_threshold temperature text_column threads token_cache_build_batch_size
    token_cache_only token_cache_write_buffer_mb tokenizer_path top_k top_p train
    train_prompt_tokens training_chunk_size use_deepembed use_rosa warmup_ratio
    warmup_steps
    """.split()
)

# Keys the reference adds to a stored config at run time or on export (training.md §8.5,
# §8.6) and keys of the model's ``getattr`` surface that this port does not model.
_REFERENCE_RUNTIME_KEYS = frozenset(
    """
    model_type completed_epoch tokenizer_name converted_from training_complete
    amp_dtype val_proj_alignment_updates resume_completed_epoch base_completed_epoch
    _resolved_hf_dataset_revision epoch
    """.split()
)

# Field kinds (validation / parsing rules).
_POS_INT = "pos_int"          # int > 0
_NONNEG_INT = "nonneg_int"    # int >= 0
_INT = "int"                  # any int
_OPT_WIDTH = "opt_width"      # None -> context_dim, else int > 0
_HEAD = "head"                # None (auto) or int > 0 dividing both widths
_DETACH = "detach"            # None or int > 0 (<= 0 -> None)
_OPT_POS_INT = "opt_pos_int"  # None or int > 0
_POS_FLOAT = "pos_float"      # "pos" parse rule (model.md §1.2)
_NONNEG_FLOAT = "nonneg_float"  # "nonneg" parse rule
_FLOAT = "float"              # "raw" keys: any finite real
_WARMUP_STEPS = "warmup_steps"  # int >= 0 (reference: float(x or 0), <= 0 = off)
_BOOL = "bool"
_OPT_BOOL = "opt_bool"

# name -> kind, in canonical order (model.md §1.1, §1.2, §1.3).
_FIELD_KINDS: dict = {
    # §1.1 architecture
    "vocab_size": _POS_INT,
    "context_dim": _POS_INT,
    "h_hidden": _OPT_WIDTH,
    "l_hidden": _OPT_WIDTH,
    "persistent_dim": _NONNEG_INT,
    "ltm_slots": _POS_INT,
    "ltm_key_dim": _POS_INT,
    "ltm_val_dim": _POS_INT,
    "ltm_topk": _POS_INT,
    "h_stride": _POS_INT,
    "max_h_steps": _POS_INT,
    "max_l_steps": _POS_INT,
    "use_deepembed": _BOOL,
    "use_rosa": _BOOL,
    "memory_token_routers": _BOOL,
    "rwkv_head_size": _HEAD,
    "rwkv_n_layer_hint": _INT,
    "rosa_max_context": _INT,
    # §1.2 numeric runtime keys
    "recurrent_state_clamp": _POS_FLOAT,
    "context_state_clamp": _POS_FLOAT,
    "drift_state_clamp": _POS_FLOAT,
    "drift_norm_clamp": _NONNEG_FLOAT,
    "drift_delta_scale": _POS_FLOAT,
    "activation_clamp": _POS_FLOAT,
    "halt_logit_clamp": _POS_FLOAT,
    "rwkv_channel_mix_key_clamp": _NONNEG_FLOAT,
    "rwkv_channel_mix_deepembed_clamp": _NONNEG_FLOAT,
    "l_conv_atol": _FLOAT,
    "commitment_threshold": _FLOAT,
    "h_halt_thresh": _FLOAT,
    "memory_gate_warmup_steps": _WARMUP_STEPS,
    "memory_gate_warmup_floor": _FLOAT,
    "ltm_lr": _FLOAT,
    "ltm_momentum": _FLOAT,
    "ltm_weight_decay": _FLOAT,
    "ltm_forget_rate": _FLOAT,
    "reference_chunk_len": _OPT_POS_INT,
    "ltm_score_grad_scale": _FLOAT,
    "z_loss_weight": _FLOAT,
    "isolate_batch_ltm": _BOOL,
    "detach_every_n_steps": _DETACH,
    "training_chunk_size": _POS_INT,
    # §1.3 mode flags
    "inference_logit_parity": _BOOL,
    "full_sample_bptt": _BOOL,
    "compile_static_worker_loop": _OPT_BOOL,
    "gradient_checkpointing": _BOOL,
    "val_proj_trained": _BOOL,
    "allow_untrained_hebbian_writer": _BOOL,
    "debug_numerics": _BOOL,
}

#: Every model key (§1.1–§1.3), in canonical order.
MODEL_KEYS: Tuple[str, ...] = tuple(_FIELD_KINDS)

#: Non-model keys a reference config may carry; they go to ``extra`` without warning.
REFERENCE_EXTRA_KEYS = frozenset((REFERENCE_CLI_KEYS | _REFERENCE_RUNTIME_KEYS) - set(MODEL_KEYS))

# Where the model's fallback for an ABSENT key differs from the CLI default (= the
# dataclass default).  h_hidden/l_hidden/reference_chunk_len are handled specially.
_REFERENCE_ABSENT_FALLBACK = {
    "l_conv_atol": 0.01,
    "commitment_threshold": 0.1,
    "memory_gate_warmup_steps": 0,
    "memory_gate_warmup_floor": 0.0,
}

# Range checks made for Python-built values only (the reference accepts anything).
_STRICT_RANGES = {
    "l_conv_atol": (0.0, None),
    "memory_gate_warmup_floor": (0.0, None),
    "ltm_lr": (0.0, None),
    "ltm_weight_decay": (0.0, None),
    "ltm_forget_rate": (0.0, 1.0),
    "ltm_score_grad_scale": (0.0, None),
    "z_loss_weight": (0.0, None),
    "rwkv_n_layer_hint": (1, None),
    "rosa_max_context": (0, None),
}

_PRESET_SUFFIX = ".json"


# ----------------------------------------------------------------------------------
# Value coercion helpers
# ----------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _ref_int(key: str, v: Any) -> int:
    """``int(v)`` as the reference validates it, refusing lossy conversions."""
    if _is_int(v):
        return int(v)
    if isinstance(v, bool):
        raise ConfigError(f"{key} must be an integer, got {v!r}")
    if _is_real(v):
        if math.isfinite(float(v)) and float(v).is_integer():
            return int(v)
        raise ConfigError(f"{key} must be an integer, got {v!r}")
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ConfigError(f"{key} must be an integer, got {v!r}")


def _ref_float(key: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ConfigError(f"{key} must be finite, got {v!r}")
    return f


# ----------------------------------------------------------------------------------
# Bookkeeping for round-tripping reference dicts
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _RefSource:
    """What :meth:`HierarchosConfig.from_reference_dict` saw (for exact re-export).

    ``order``: the original keys in order.  ``raw``: original values of the model keys
    that were present.  ``norm``: the normalised value every model key received at load
    time (present or absent), to tell an unchanged field from a replaced one.
    """

    order: Tuple[str, ...]
    raw: FrozenDict
    norm: FrozenDict


def _same(a: Any, b: Any) -> bool:
    """Equal normalised field values (normalised values have canonical types)."""
    return type(a) is type(b) and a == b


# ----------------------------------------------------------------------------------
# The config
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HierarchosConfig:
    """Hierarchos v0.21 model configuration (``model.md`` §1).

    Field defaults are the reference **CLI** defaults (what a real checkpoint stores).
    Fields are grouped as in the spec: architecture (§1.1), numeric runtime keys (§1.2),
    mode flags (§1.3).  ``h_hidden``/``l_hidden`` given as ``None`` become
    ``context_dim``; ``rwkv_head_size`` ``None`` or ``0`` means the automatic head-size
    rule (stored as ``None``); ``detach_every_n_steps ≤ 0`` becomes ``None``; int-valued
    floats are stored as ``float``.

    ``extra`` holds every non-model key (training/CLI keys, ``tokenizer_name``, …) as a
    read-only :class:`FrozenDict`; it is excluded from ``==`` and ``hash`` so the config
    can be a :func:`jax.jit` static argument whose cache ignores training-only keys.
    """

    # ---- §1.1 architecture (shape-defining) ----
    vocab_size: int = 50257
    context_dim: int = 448
    h_hidden: Optional[int] = None  # None -> context_dim; must equal context_dim
    l_hidden: Optional[int] = None  # None -> context_dim
    persistent_dim: int = 128
    ltm_slots: int = 1024
    ltm_key_dim: int = 128
    ltm_val_dim: int = 128
    ltm_topk: int = 4
    h_stride: int = 4
    max_h_steps: int = 5
    max_l_steps: int = 5
    use_deepembed: bool = True
    use_rosa: bool = True
    memory_token_routers: bool = True
    rwkv_head_size: Optional[int] = None  # None/0 -> automatic rule (§1.4)
    rwkv_n_layer_hint: int = 2  # inert (both cells use layer_id 0)
    rosa_max_context: int = 512  # inert in v0.21

    # ---- §1.2 numeric runtime keys ----
    recurrent_state_clamp: float = 50.0
    context_state_clamp: float = 50.0
    drift_state_clamp: float = 5.0
    drift_norm_clamp: float = 0.0
    drift_delta_scale: float = 1.0
    activation_clamp: float = 100.0
    halt_logit_clamp: float = 30.0
    rwkv_channel_mix_key_clamp: float = 12.0
    rwkv_channel_mix_deepembed_clamp: float = 4.0
    l_conv_atol: float = 1e-4
    commitment_threshold: float = 0.05
    h_halt_thresh: float = 0.9
    memory_gate_warmup_steps: int = 2000
    memory_gate_warmup_floor: float = 0.1
    ltm_lr: float = 1e-3
    ltm_momentum: float = 0.9
    ltm_weight_decay: float = 1e-4
    ltm_forget_rate: float = 0.01
    reference_chunk_len: Optional[int] = None  # None -> training_chunk_size
    ltm_score_grad_scale: float = 1.0
    z_loss_weight: float = 1e-4
    isolate_batch_ltm: bool = True
    detach_every_n_steps: Optional[int] = 32  # <= 0 -> None (no in-chunk detach)
    training_chunk_size: int = 256

    # ---- §1.3 mode flags ----
    inference_logit_parity: bool = False
    full_sample_bptt: bool = False
    compile_static_worker_loop: Optional[bool] = None
    gradient_checkpointing: bool = False
    val_proj_trained: bool = False
    allow_untrained_hebbian_writer: bool = False
    debug_numerics: bool = False

    # ---- everything else ----
    extra: Mapping[str, Any] = dataclasses.field(
        default_factory=FrozenDict, compare=False, repr=False
    )
    _ref: Optional[_RefSource] = dataclasses.field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        self._validate(strict_keys=MODEL_KEYS if self._ref is None else ())

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _validate(self, strict_keys: Iterable[str]) -> None:
        """Coerce and check every field; ``strict_keys`` also get Python-only checks."""
        strict = set(strict_keys)

        # extra
        extra = self.extra
        if not isinstance(extra, FrozenDict):
            if not isinstance(extra, Mapping):
                raise ConfigError(f"extra must be a mapping, got {type(extra).__name__}")
            extra = FrozenDict(extra)
            self._set("extra", extra)
        clash = [k for k in extra if k in _FIELD_KINDS]
        if clash:
            raise ConfigError(
                f"extra must not contain model keys {clash}; set them as fields instead"
            )

        # order matters: context_dim before the widths, widths before the head size.
        for name, kind in _FIELD_KINDS.items():
            v = getattr(self, name)
            if kind in (_POS_INT, _NONNEG_INT, _INT):
                if not _is_int(v):
                    raise ConfigError(f"{name} must be an integer, got {v!r}")
                v = int(v)
                if kind == _POS_INT and v <= 0:
                    raise ConfigError(f"{name} must be a positive integer, got {v}")
                if kind == _NONNEG_INT and v < 0:
                    raise ConfigError(f"{name} must be a non-negative integer, got {v}")
            elif kind == _OPT_WIDTH:
                if v is None:
                    v = self.context_dim
                if not _is_int(v):
                    raise ConfigError(f"{name} must be an integer or None, got {v!r}")
                v = int(v)
                if v <= 0:
                    raise ConfigError(f"{name} must be a positive integer, got {v}")
            elif kind == _HEAD:
                if isinstance(v, str):
                    raise ConfigError(
                        f"rwkv_head_size must be a positive integer or None (automatic rule), "
                        f"got the string {v!r}; use None for 'auto'"
                    )
                if v is None or (_is_int(v) and int(v) == 0):
                    v = None
                elif not _is_int(v):
                    raise ConfigError(
                        f"rwkv_head_size must be a positive integer or None, got {v!r}"
                    )
                elif int(v) < 0:
                    raise ConfigError(
                        f"rwkv_head_size must be a positive integer or None, got {v!r}"
                    )
                else:
                    v = int(v)
            elif kind == _DETACH:
                if v is not None:
                    if not _is_int(v):
                        raise ConfigError(
                            f"detach_every_n_steps must be an integer or None, got {v!r}"
                        )
                    v = int(v) if int(v) > 0 else None
            elif kind == _OPT_POS_INT:
                if v is not None:
                    if not _is_int(v) or int(v) <= 0:
                        raise ConfigError(f"{name} must be a positive integer or None, got {v!r}")
                    v = int(v)
            elif kind in (_POS_FLOAT, _NONNEG_FLOAT, _FLOAT):
                if not _is_real(v):
                    raise ConfigError(f"{name} must be a real number, got {v!r}")
                v = float(v)
                if not math.isfinite(v):
                    raise ConfigError(f"{name} must be finite, got {v!r}")
                if kind == _POS_FLOAT and v <= 0.0:
                    raise ConfigError(
                        f"{name} must be > 0, got {v!r} (the reference would silently use its "
                        f"default; this clamp cannot be disabled)"
                    )
                if kind == _NONNEG_FLOAT and v < 0.0:
                    raise ConfigError(f"{name} must be >= 0 (0 disables it), got {v!r}")
            elif kind == _WARMUP_STEPS:
                if not _is_real(v) or not math.isfinite(float(v)):
                    raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
                if float(v).is_integer():
                    v = int(v)
                elif name in strict:
                    raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
                else:
                    v = float(v)
                if v < 0:
                    raise ConfigError(f"{name} must be >= 0 (0 disables the warm-up), got {v!r}")
            elif kind == _BOOL:
                if not isinstance(v, (bool, np.bool_)):
                    raise ConfigError(f"{name} must be a bool, got {v!r}")
                v = bool(v)
            elif kind == _OPT_BOOL:
                if v is not None:
                    if not isinstance(v, (bool, np.bool_)):
                        raise ConfigError(f"{name} must be a bool or None, got {v!r}")
                    v = bool(v)
            else:  # pragma: no cover - table error
                raise AssertionError(kind)

            if name in strict and name in _STRICT_RANGES:
                lo, hi = _STRICT_RANGES[name]
                if lo is not None and v < lo:
                    raise ConfigError(f"{name} must be >= {lo}, got {v!r}")
                if hi is not None and v > hi:
                    raise ConfigError(f"{name} must be <= {hi}, got {v!r}")
            self._set(name, v)

        # cross-field rules (model.md §1.4)
        if self.h_hidden != self.context_dim:
            raise ConfigError(
                f"h_hidden ({self.h_hidden}) must equal context_dim ({self.context_dim})"
            )
        if self.rwkv_head_size is not None:
            for wname in ("h_hidden", "l_hidden"):
                w = getattr(self, wname)
                if w % self.rwkv_head_size:
                    raise ConfigError(
                        f"rwkv_head_size {self.rwkv_head_size} does not divide {wname} {w}"
                    )
        if self.ltm_topk > self.ltm_slots:
            raise ConfigError(
                f"ltm_topk ({self.ltm_topk}) must not exceed ltm_slots ({self.ltm_slots})"
            )

    # ------------------------------------------------------------------ derived values

    def head_size(self, width: int) -> int:
        """Head size the automatic/requested rule gives for a cell of ``width``."""
        return choose_head_size(int(width), self.rwkv_head_size)

    @property
    def h_head_size(self) -> int:
        """Head size ``N`` of the manager cell (width ``h_hidden``)."""
        return self.head_size(self.h_hidden)

    @property
    def l_head_size(self) -> int:
        """Head size ``N`` of the worker cell (width ``l_hidden``)."""
        return self.head_size(self.l_hidden)

    @property
    def h_n_head(self) -> int:
        """Head count ``H = h_hidden / N`` of the manager cell."""
        return self.h_hidden // self.h_head_size

    @property
    def l_n_head(self) -> int:
        """Head count ``H = l_hidden / N`` of the worker cell."""
        return self.l_hidden // self.l_head_size

    @property
    def h_state_slots(self) -> int:
        """Last-axis size ``3 + N`` of the manager's packed RWKV state."""
        return 3 + self.h_head_size

    @property
    def l_state_slots(self) -> int:
        """Last-axis size ``3 + N`` of the worker's packed RWKV state."""
        return 3 + self.l_head_size

    @property
    def state_slots(self) -> int:
        """``3 + N`` when both cells share the head size ``N`` (the usual case).

        Raises :class:`ConfigError` when they differ (possible with the automatic rule
        and ``l_hidden != h_hidden``): use :attr:`h_state_slots` / :attr:`l_state_slots`.
        """
        h, l = self.h_state_slots, self.l_state_slots
        if h != l:
            raise ConfigError(
                f"state_slots is ambiguous: the manager cell has {h} slots and the worker "
                f"cell {l}; use h_state_slots / l_state_slots"
            )
        return h

    @staticmethod
    def lora_ranks(width: int) -> Tuple[int, int, int]:
        """Low-rank sizes ``(r_w, r_a, r_g)`` of an RWKV cell of ``width`` (§1.4)."""
        return (lora_rank(width, 2.5), lora_rank(width, 2.5), lora_rank(width, 5.0))

    @property
    def h_lora_ranks(self) -> Tuple[int, int, int]:
        return self.lora_ranks(self.h_hidden)

    @property
    def l_lora_ranks(self) -> Tuple[int, int, int]:
        return self.lora_ranks(self.l_hidden)

    @property
    def in_dim(self) -> int:
        """Input width of ``in_proj``: ``C + P + k·D``."""
        return self.context_dim + self.persistent_dim + self.ltm_topk * self.ltm_val_dim

    def time_freqs(self) -> np.ndarray:
        """The ``time_freqs`` buffer, float32 of length ``h = ltm_val_dim // 2`` (§1.4).

        Empty for ``h = 0``, ``[1.0]`` for ``h = 1``, else ``exp(j · (−ln(10000)/(h−1)))``
        with ``j·scale`` formed in float32 exactly as the reference does
        (``arange(h, float32) * -scale``).  The exponential is evaluated in float64 and
        rounded once to float32 (correctly rounded): the reference's float32 ``exp``
        (MKL/SLEEF, CPU dependent) agrees bit-for-bit on the reference fixtures and is
        at most 1 ulp away elsewhere.  Loaders should keep a checkpoint's stored buffer.
        """
        h = self.ltm_val_dim // 2
        if h <= 0:
            return np.zeros((0,), np.float32)
        if h == 1:
            return np.ones((1,), np.float32)
        scale = math.log(10000) / (h - 1)
        arg = np.arange(h, dtype=np.float32) * np.float32(-scale)
        return np.exp(arg.astype(np.float64)).astype(np.float32)

    @property
    def halt_bias_init(self) -> float:
        """ACT halt-bias init ``−ln(max(2, max_h_steps) − 1)`` (halt prob ``1/max_h_steps``)."""
        return -math.log(max(2.0, float(self.max_h_steps)) - 1.0)

    @property
    def effective_reference_chunk_len(self) -> int:
        """``L_ref`` of the LTM decay schedule when the model is built from this config.

        ``reference_chunk_len`` if set, else ``training_chunk_size``.  (The reference
        trainer additionally forces ``L_ref := training_chunk_size`` during training.)
        """
        if self.reference_chunk_len is not None:
            return self.reference_chunk_len
        return self.training_chunk_size

    @property
    def rosa_router_enabled(self) -> bool:
        """``rosa_router`` exists (``use_rosa`` and ``memory_token_routers``)."""
        return self.use_rosa and self.memory_token_routers

    @property
    def ltm_router_enabled(self) -> bool:
        """``ltm_router`` exists (``memory_token_routers``)."""
        return self.memory_token_routers

    @staticmethod
    def rwkv_cell_param_count(width: int) -> int:
        """Parameters of one RWKV cell: ``12W² + 2W(r_w + r_a + r_g) + 18W`` (§2.5)."""
        W = int(width)
        r_w, r_a, r_g = HierarchosConfig.lora_ranks(W)
        return 12 * W * W + 2 * W * (r_w + r_a + r_g) + 18 * W

    def param_count_breakdown(self) -> dict:
        """Unique parameter counts per group (the table of ``model.md`` §2.5)."""
        V, C = self.vocab_size, self.context_dim
        Wh, Wl, P = self.h_hidden, self.l_hidden, self.persistent_dim
        S, K, D = self.ltm_slots, self.ltm_key_dim, self.ltm_val_dim
        groups = {
            "tied embedding / lm_head": V * C,
            "h_deepemb + l_deepemb": 4 * V * (Wh + Wl) if self.use_deepembed else 0,
            "rosa_emb": (V + 1) * C if self.use_rosa else 0,
            "rosa_gate_logit + rosa_router": (
                (1 if self.use_rosa else 0) + ((C + 1) if self.rosa_router_enabled else 0)
            ),
            "persistent + ltm_gate_logit + ltm_router": (
                P + 1 + ((C + 1) if self.ltm_router_enabled else 0)
            ),
            "ltm.keys + ltm.vals": S * K + S * D,
            "qproj + val_proj": 2 * C * K + C * D,
            "in_proj": self.in_dim * C + C,
            "l_feedback_proj": Wl * Wh,
            "h_to_context + h_halt_proj": Wh * C + C + Wh + 1,
            "l_input_proj": 2 * C * Wl + Wl,
            "context_drift_proj + l_to_out": Wl * C + Wl * C + C,
            "out_norm": 2 * C,
            "h_rnn": self.rwkv_cell_param_count(Wh),
            "l_rnn": self.rwkv_cell_param_count(Wl),
        }
        return groups

    def param_count(self) -> int:
        """Unique trainable parameters (tied embedding counted once), ``model.md`` §2.5.

        232,516,229 for the 448/448/448 defaults (``hierarchos-232m``).
        """
        return sum(self.param_count_breakdown().values())

    # ------------------------------------------------------------------ functional updates

    def replace(self, **changes: Any) -> "HierarchosConfig":
        """A copy with ``changes`` applied and validated (Python-built strictness).

        Changing ``context_dim`` without giving ``h_hidden`` moves ``h_hidden`` along
        (they must be equal); ``l_hidden`` is kept unless given.  ``extra`` may be
        passed as a whole mapping; see also :meth:`with_extra`.
        """
        unknown = [k for k in changes if k not in _FIELD_KINDS and k != "extra"]
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {unknown}; use with_extra() for non-model keys"
            )
        if "context_dim" in changes and "h_hidden" not in changes:
            changes["h_hidden"] = None
        new = dataclasses.replace(self, **changes)
        if new._ref is not None:  # lenient __post_init__ ran; check the new values strictly
            new._validate(strict_keys=[k for k in changes if k in _FIELD_KINDS])
        return new

    def with_extra(self, updates: Optional[Mapping[str, Any]] = None, /, **kw: Any) -> "HierarchosConfig":
        """A copy whose ``extra`` has ``updates``/``kw`` set (e.g. ``completed_epoch``).

        A value of ``None`` is stored as ``None`` (JSON ``null``); use
        :meth:`without_extra` to drop keys.  Model keys are refused (use :meth:`replace`).
        """
        merged = dict(self.extra)
        merged.update(updates or {})
        merged.update(kw)
        return dataclasses.replace(self, extra=FrozenDict(merged))

    def without_extra(self, *keys: str) -> "HierarchosConfig":
        """A copy whose ``extra`` lacks ``keys`` (missing keys are ignored)."""
        return dataclasses.replace(
            self, extra=FrozenDict((k, v) for k, v in self.extra.items() if k not in keys)
        )

    # ------------------------------------------------------------------ dict views

    def model_dict(self) -> dict:
        """The model fields (normalised values) as a plain dict in canonical order."""
        return {k: getattr(self, k) for k in MODEL_KEYS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, warn: bool = True) -> "HierarchosConfig":
        """Build a *Python-built* config from a flat dict (e.g. ``vars(cli_args)``).

        Model keys become fields (missing ones take the CLI defaults, strict
        validation); every other key goes to ``extra`` (unknown ones, i.e. neither a
        model key nor in :data:`REFERENCE_EXTRA_KEYS`, trigger one warning).
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(d).__name__}")
        fields = {k: v for k, v in d.items() if k in _FIELD_KINDS}
        extra = {k: v for k, v in d.items() if k not in _FIELD_KINDS}
        if warn:
            _warn_unknown(extra)
        return cls(**fields, extra=FrozenDict(extra))

    @classmethod
    def from_reference_dict(cls, d: Mapping[str, Any], *, warn: bool = True) -> "HierarchosConfig":
        """Read a reference config dict with the reference model's rules (module doc).

        The result re-exports the original dict exactly via :meth:`to_reference_dict`.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(d).__name__}")
        for k in d:
            if not isinstance(k, str):
                raise ConfigError(f"config keys must be strings, got {k!r}")
        fallbacks: list = []
        values: dict = {}

        # required keys
        for key in ("vocab_size", "context_dim"):
            if d.get(key) is None:
                raise ConfigError(
                    f"{key} is required in a reference config (the reference has no default)"
                )

        for name, kind in _FIELD_KINDS.items():
            if name not in d:
                continue  # absent-key fallbacks below
            raw = d[name]
            if kind in (_POS_INT, _OPT_WIDTH):
                if raw is None:
                    continue  # None -> default (written back by the reference)
                v = _ref_int(name, raw)
                if v <= 0:
                    raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
            elif kind in (_NONNEG_INT, _INT):
                if raw is None:
                    fallbacks.append(f"{name}=None -> default")
                    continue
                v = _ref_int(name, raw)
                if kind == _NONNEG_INT and v < 0:
                    raise ConfigError(f"{name} must be a non-negative integer, got {raw!r}")
            elif kind == _HEAD:
                if isinstance(raw, str) and raw.strip().lower() == "auto":
                    raise ConfigError(
                        "rwkv_head_size 'auto' is not supported (the reference RWKV cell "
                        "constructor fails on it); use null for the automatic rule"
                    )
                if not raw:  # None, 0, "", False -> automatic rule
                    v = None
                else:
                    v = _ref_int(name, raw)
                    if v <= 0:
                        raise ConfigError(
                            f"rwkv_head_size must be a positive divisor or null, got {raw!r}"
                        )
            elif kind == _DETACH:
                if raw is None:
                    v = None
                else:
                    v = _ref_int(name, raw)
                    if v <= 0:
                        v = None
            elif kind == _OPT_POS_INT:  # reference_chunk_len
                if raw is None:
                    fallbacks.append(f"{name}=None -> absent rule")
                    continue
                v = _ref_int(name, raw)
                if v <= 0:
                    raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
            elif kind in (_POS_FLOAT, _NONNEG_FLOAT):
                default = getattr(cls, name)
                try:
                    v = float(raw)
                except (TypeError, ValueError):
                    v = None
                ok = v is not None and math.isfinite(v) and (v > 0.0 if kind == _POS_FLOAT else v >= 0.0)
                if not ok:
                    fallbacks.append(f"{name}={raw!r} -> {default!r}")
                    v = default
            elif kind == _FLOAT:
                if raw is None:
                    fallbacks.append(f"{name}=None -> absent fallback")
                    continue
                v = _ref_float(name, raw)
                if name in ("memory_gate_warmup_floor", "z_loss_weight") and v < 0.0:
                    v = 0.0  # the reference treats <= 0 as "off"; same effect
            elif kind == _WARMUP_STEPS:
                v = _ref_float(name, raw or 0)  # reference: float(x or 0)
                v = int(v) if v.is_integer() else v
                if v < 0:
                    v = 0  # <= 0 is "off" in the reference
            elif kind == _BOOL:
                v = bool(raw)
                if not isinstance(raw, (bool, np.bool_)):
                    fallbacks.append(f"{name}={raw!r} read as {v} (truthiness)")
            elif kind == _OPT_BOOL:
                if raw is None:
                    v = None
                else:
                    v = bool(raw)
                    if not isinstance(raw, (bool, np.bool_)):
                        fallbacks.append(f"{name}={raw!r} read as {v} (truthiness)")
            else:  # pragma: no cover
                raise AssertionError(kind)
            values[name] = v

        # absent-key fallbacks of the reference MODEL (not the CLI defaults)
        for name, fb in _REFERENCE_ABSENT_FALLBACK.items():
            values.setdefault(name, fb)
        # reference: getattr(config, 'reference_chunk_len',
        #                    getattr(config, 'training_chunk_size', 128))
        if "reference_chunk_len" not in values and "training_chunk_size" not in values:
            values["reference_chunk_len"] = 128
        # (h_hidden/l_hidden absent or None -> context_dim: handled by __post_init__)

        extra = {k: v for k, v in d.items() if k not in _FIELD_KINDS}
        if warn:
            _warn_unknown(extra)
            if fallbacks:
                warnings.warn(
                    "reference config values replaced as the reference model does: "
                    + "; ".join(fallbacks),
                    ConfigWarning,
                    stacklevel=2,
                )

        placeholder = _RefSource(order=(), raw=FrozenDict(), norm=FrozenDict())
        cfg = cls(**values, extra=FrozenDict(extra), _ref=placeholder)
        ref = _RefSource(
            order=tuple(d.keys()),
            raw=FrozenDict({k: d[k] for k in d if k in _FIELD_KINDS}),
            norm=FrozenDict(cfg.model_dict()),
        )
        object.__setattr__(cfg, "_ref", ref)
        return cfg

    def to_reference_dict(self) -> dict:
        """The config as a reference-style flat dict (what ``hierarchos_config.json`` holds).

        For a config read by :meth:`from_reference_dict`: every original key, in the
        original order, with its original value unless the field was changed since;
        changed or newly relevant model keys and new ``extra`` keys are appended.  For
        a Python-built config: ``model_type`` then every model key (explicit values, so
        the reference's absent-key fallbacks never apply; ``reference_chunk_len`` is
        omitted when ``None``), then ``extra``.
        """
        out: dict = {}
        ref = self._ref
        if ref is None:
            if "model_type" not in self.extra:
                out["model_type"] = "hierarchos"
            for k in MODEL_KEYS:
                v = getattr(self, k)
                if k == "reference_chunk_len" and v is None:
                    continue
                out[k] = v
            for k, v in self.extra.items():
                out[k] = copy.deepcopy(v)
            return out

        for k in ref.order:
            if k in _FIELD_KINDS:
                cur = getattr(self, k)
                if _same(cur, ref.norm[k]):
                    out[k] = copy.deepcopy(ref.raw[k])
                elif k == "reference_chunk_len" and cur is None:
                    out[k] = self.effective_reference_chunk_len  # explicit, never null
                else:
                    out[k] = cur
            elif k in self.extra:
                out[k] = copy.deepcopy(self.extra[k])
        for k, v in self.extra.items():
            if k not in out:
                out[k] = copy.deepcopy(v)
        for k in MODEL_KEYS:
            if k in ref.raw:
                continue
            cur = getattr(self, k)
            if not _same(cur, ref.norm[k]):
                if k == "reference_chunk_len" and cur is None:
                    cur = self.effective_reference_chunk_len  # explicit, never null
                out[k] = cur
        return out

    # ------------------------------------------------------------------ files and presets

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike], *, warn: bool = True) -> "HierarchosConfig":
        """Read a reference-style JSON config (``hierarchos_config.json``, a preset)."""
        p = Path(path)
        try:
            with p.open("r", encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: a config file must hold a JSON object")
        return cls.from_reference_dict(d, warn=warn)

    def to_json(self) -> str:
        """:meth:`to_reference_dict` as JSON text, formatted exactly as the reference writes it."""
        return json.dumps(self.to_reference_dict(), indent=2, default=str)

    def to_json_file(self, path: Union[str, os.PathLike]) -> Path:
        """Atomically write :meth:`to_json` to ``path`` (temp file + ``os.replace``)."""
        from hierarchos_jax.io.atomic import write_text_atomic

        return write_text_atomic(path, self.to_json())

    @classmethod
    def from_preset(cls, name: Union[str, os.PathLike], *, warn: bool = True) -> "HierarchosConfig":
        """Load a preset by name (``tiny``, ``small``, ``hierarchos-232m``) or from a path.

        A name is looked up as ``<name>.json`` in :func:`preset_dirs` (the installed
        ``hierarchos_jax/configs/`` first, then the source tree's ``configs/``).  An
        existing file path, or anything ending in ``.json``, is read directly.
        """
        s = os.fspath(name)
        p = Path(s)
        if p.suffix == _PRESET_SUFFIX or os.sep in s or "/" in s:
            if not p.is_file():
                raise ConfigError(f"preset file {s!r} does not exist")
            return cls.from_json_file(p, warn=warn)
        for d in preset_dirs():
            f = d / f"{s}{_PRESET_SUFFIX}"
            if f.is_file():
                return cls.from_json_file(f, warn=warn)
        raise ConfigError(f"unknown preset {s!r}; available: {', '.join(list_presets()) or 'none'}")


# ----------------------------------------------------------------------------------
# Module helpers
# ----------------------------------------------------------------------------------


def _warn_unknown(extra: Mapping[str, Any]) -> None:
    unknown = sorted(k for k in extra if k not in REFERENCE_EXTRA_KEYS)
    if unknown:
        warnings.warn(
            f"unknown config key(s) kept in extra (not read by the model): {', '.join(unknown)}",
            ConfigWarning,
            stacklevel=3,
        )


def preset_dirs() -> Tuple[Path, ...]:
    """Directories searched for presets, in order: installed package data, source tree."""
    here = Path(__file__).resolve().parent
    dirs = (here / "configs", here.parent / "configs")
    return tuple(d for d in dirs if d.is_dir())


def list_presets() -> Tuple[str, ...]:
    """Names of the available presets (sorted, de-duplicated)."""
    names = set()
    for d in preset_dirs():
        names.update(f.stem for f in d.glob(f"*{_PRESET_SUFFIX}"))
    return tuple(sorted(names))


def backfill_reference_dict(
    d: Mapping[str, Any],
    state_dict_keys: Iterable[str],
    *,
    h_r_k_shape: Optional[Tuple[int, ...]] = None,
) -> dict:
    """Back-fill absent architecture flags from checkpoint weights (``model.md`` §1.5).

    Returns a new dict; only ABSENT keys are added (an explicit ``null`` stays):
    ``use_deepembed`` (any ``h_deepemb.*``/``l_deepemb.*`` key), ``use_rosa`` (any
    ``rosa_emb.*`` or ``rosa_gate_logit``), ``rosa_max_context`` 512,
    ``memory_token_routers`` (any ``rosa_router.*``/``ltm_router.*``), ``rwkv_head_size``
    = ``h_rnn.r_k`` columns (give ``h_r_k_shape``), channel-mix clamps 12.0 / 4.0.
    ``_orig_mod`` path components in the keys are ignored.
    """
    keys = [".".join(p for p in k.split(".") if p != "_orig_mod") for k in state_dict_keys]
    out = dict(d)

    def any_prefix(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    out.setdefault("use_deepembed", any_prefix("h_deepemb.", "l_deepemb."))
    out.setdefault("use_rosa", any_prefix("rosa_emb.") or "rosa_gate_logit" in keys)
    out.setdefault("rosa_max_context", 512)
    out.setdefault("memory_token_routers", any_prefix("rosa_router.", "ltm_router."))
    if "rwkv_head_size" not in out and h_r_k_shape is not None:
        out["rwkv_head_size"] = int(h_r_k_shape[1])
    out.setdefault("rwkv_channel_mix_key_clamp", 12.0)
    out.setdefault("rwkv_channel_mix_deepembed_clamp", 4.0)
    return out
