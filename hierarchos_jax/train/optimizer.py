"""AdamW with the reference's parameter groups, warm-up + cosine schedule, clipping
(spec: training.md §5.10, §6.1, §6.2).

Parameters are the model's ``nnx.Param`` state (an ``nnx.State`` pytree); the
non-trainable ``Buffer`` (``time_freqs``) is never part of it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hierarchos_jax.io.reference_state import state_dict_layout


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    starting_lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0          # > 0 wins over warmup_ratio
    warmup_ratio: float = 0.0
    total_updates: int = 1         # U
    weight_decay: float = 0.1      # --rwkv-weight-decay
    grad_clip: float = 1.0         # <= 0: no clipping
    disable_lr_schedule: bool = False


# ---------------------------------------------------------------- schedule (§6.2)

def warmup_length(cfg: OptimConfig) -> int:
    U = max(1, int(cfg.total_updates))
    if cfg.warmup_steps > 0:
        return max(0, min(int(cfg.warmup_steps), U - 1))
    if cfg.warmup_ratio > 0:
        return max(0, min(math.ceil(U * min(cfg.warmup_ratio, 1.0)), U - 1))
    return 0


def lr_bounds(cfg: OptimConfig) -> tuple[float, float]:
    lr_max = cfg.starting_lr if (math.isfinite(cfg.starting_lr) and cfg.starting_lr > 0) else 1e-4
    lr_min = min(max(cfg.min_lr, 0.0), lr_max)
    return lr_max, lr_min


def make_schedule(cfg: OptimConfig):
    """``u -> lr_max * lambda(u)`` for the 0-based update index ``u`` (jit-friendly)."""
    lr_max, lr_min = lr_bounds(cfg)
    if cfg.disable_lr_schedule:
        return lambda u: jnp.float32(cfg.starting_lr)
    f = lr_min / lr_max
    U = max(1, int(cfg.total_updates))
    W = warmup_length(cfg)
    D = max(1, U - W)

    def schedule(u):
        u = jnp.asarray(u, jnp.float32)
        warm = f + (1.0 - f) * (u + 1.0) / max(W, 1)
        cos = f + (1.0 - f) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(jnp.maximum(u - W, 0.0), D) / D))
        lam = jnp.where((W > 0) & (u < W), warm, cos)
        return (lr_max * lam).astype(jnp.float32)

    return schedule


def make_ltm_schedule(ltm_lr: float, min_ltm_lr: float, total_steps: int, *, disabled: bool = False):
    """§6.3: ``s -> eta(s)``, the LTM inner-update LR: a cosine without warm-up from
    ``ltm_lr`` (invalid or <= 0 -> 1e-3) to ``min_ltm_lr`` (clipped to ``[0, ltm_lr]``) over
    ``total_steps`` (>= 1) updates; ``s`` saturates at ``total_steps``. ``disabled``:
    constant ``ltm_lr``."""
    eta_max = float(ltm_lr) if (math.isfinite(ltm_lr) and ltm_lr > 0) else 1e-3
    eta_min = float(min_ltm_lr) if math.isfinite(min_ltm_lr) else 0.0
    eta_min = min(max(eta_min, 0.0), eta_max)
    U = max(1, int(total_steps))
    if disabled:
        return lambda s: jnp.float32(eta_max)

    def schedule(s):
        s = jnp.clip(jnp.asarray(s, jnp.float32), 0.0, U)
        return (eta_min + (eta_max - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * s / U))).astype(jnp.float32)

    return schedule


# ---------------------------------------------------------------- parameter groups (§6.1)

def path_name(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name != "value":
                parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
    return ".".join(parts)


def reference_names(config) -> dict[str, str]:
    """Our dotted parameter path -> the reference's state-dict name (first one; the tied
    ``lm_head.weight`` maps to ``tok_emb.weight``)."""
    out: dict[str, str] = {}
    for e in state_dict_layout(config):
        if e.path is not None and e.path not in out:
            out[e.path] = e.name
    return out


def decays(reference_name: str) -> bool:
    """The reference's rule: which parameter gets weight decay."""
    name = reference_name.replace("_orig_mod.", "")
    if name.startswith(("h_deepemb.", "l_deepemb.")):
        return False
    if name.startswith("val_proj.") or ".val_proj." in reference_name:
        return False
    if (".weight" in reference_name or "emb" in reference_name) and \
            "ln" not in reference_name and "norm" not in reference_name:
        return True
    return False


def decay_mask(params, config):
    """A pytree of bools like ``params``: True where AdamW applies weight decay."""
    names = reference_names(config)

    def one(path, _):
        ours = path_name(path)
        if ours not in names:
            raise KeyError(f"parameter {ours!r} has no reference name")
        return decays(names[ours])

    return jax.tree_util.tree_map_with_path(one, params)


def param_groups(params, config) -> dict[str, list[str]]:
    """``{"decay": [reference names], "no_decay": [...]}`` (for reports and tests)."""
    names = reference_names(config)
    groups: dict[str, list[str]] = {"decay": [], "no_decay": []}
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        ref = names[path_name(path)]
        groups["decay" if decays(ref) else "no_decay"].append(ref)
    return groups


# ---------------------------------------------------------------- transforms

def global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


class ClipState(NamedTuple):
    pass


def clip_by_global_norm_ref(max_norm: float) -> optax.GradientTransformation:
    """``g * min(1, c / (||g|| + 1e-6))`` (PyTorch's clip_grad_norm_, spec §5.10)."""

    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None):
        del params
        if max_norm <= 0:
            return updates, state
        n = global_norm(updates)
        scale = jnp.minimum(1.0, max_norm / (n + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig, params, model_config) -> tuple[optax.GradientTransformation, callable]:
    """``(tx, schedule)``: clip -> AdamW(b=(0.9, 0.999), eps=1e-8, masked decay)."""
    schedule = make_schedule(cfg)
    mask = decay_mask(params, model_config)
    tx = optax.chain(
        clip_by_global_norm_ref(cfg.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay, mask=mask),
    )
    return tx, schedule


def schedule_count(opt_state) -> jax.Array:
    """The number of optimizer updates applied so far (the schedule's ``u``)."""
    for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState)):
        if isinstance(s, optax.ScaleByScheduleState):
            return s.count
    raise ValueError("no schedule state in this optimizer state")
