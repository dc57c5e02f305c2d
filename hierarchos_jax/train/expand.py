"""Grow a model to larger dimensions, its trained weights placed block by block
(``hierarchos expand``; spec: training.md §11.1, cli.md §5.2).

The reference's ``expand_model.py`` copies the leading overlap of every tensor
positionally. That misplaces the blocks of concatenation-structured axes after a width
change: ``in_proj``'s input ``[token C | persistent P | k value blocks of D]``,
``qproj``'s and ``l_input_proj``'s ``[C | C]``, ``rosa_emb``'s ``[V tokens | "no hint"
row]``, and the LTM value axis ``D = [sin h | cos h | (odd)]`` of the timestamp code.
Here every axis is described as a list of segments (:func:`axis_segments`); old segment
``i`` goes to new segment ``i`` (leading overlap inside it) and segments the old model
lacks (more retrieved slots ``k``) are new.

New entries keep the new model's fresh initialisation (the model's init distributions),
except the weights that connect new inputs to old outputs, which start at zero: the
``in_proj`` rows fed by new persistent entries, new value dimensions and new retrieved
slots, and the ``qproj`` columns of new key dimensions. Hence (with a fresh working
memory, no Hebbian writes) growing ``vocab_size`` (logits of the old tokens),
``persistent_dim``, ``ltm_key_dim``, ``ltm_val_dim`` or ``ltm_topk`` gives the old
model's outputs. Growing ``context_dim``/``h_hidden``/``l_hidden`` cannot: the layer
and group norms then average over the new channels too; ``ltm_slots`` neither: new
slots compete in the top-k retrieval. ``placement="reference"`` reproduces the
reference's positional overlap copy exactly (spec §11.1 step 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.train.optimizer import path_name

# Shape-defining keys that may only grow.
GROWABLE = ("vocab_size", "context_dim", "persistent_dim", "ltm_slots", "ltm_key_dim", "ltm_val_dim", "ltm_topk",
            "h_hidden", "l_hidden")
# Keys the command may change that do not define shapes (cli.md §5.2).
RUNTIME = ("ltm_lr", "h_stride", "max_h_steps", "max_l_steps", "l_conv_atol", "commitment_threshold",
           "detach_every_n_steps", "h_halt_thresh", "ltm_forget_rate", "rosa_max_context", "max_length")
FLAGS = ("use_deepembed", "use_rosa")
PLACEMENTS = ("blocks", "reference")


class ExpandError(ValueError):
    """An expansion that cannot be done (shrinking, unknown key, head-size change...)."""


class Segment(NamedTuple):
    size: int
    zero_new: bool = False   # entries of this segment the old model lacks start at 0


def _d_segments(D: int, zero_new: bool) -> list[Segment]:
    h = D // 2
    return [Segment(h, zero_new), Segment(h, zero_new), Segment(D - 2 * h, zero_new)]


def axis_segments(path: str, shape: tuple[int, ...], cfg: HierarchosConfig) -> list[list[Segment]]:
    """The block structure of every axis of parameter ``path`` under ``cfg``."""
    C, P, K, D, k, V = (cfg.context_dim, cfg.persistent_dim, cfg.ltm_key_dim, cfg.ltm_val_dim, cfg.ltm_topk,
                        cfg.vocab_size)
    if path == "in_proj.kernel":  # [C + P + k*D, C]
        rows = [Segment(C), Segment(P, True)] + [s for _ in range(k) for s in _d_segments(D, True)]
        return [rows, [Segment(C)]]
    if path == "qproj.kernel":    # [token C | context C, K]
        return [[Segment(C), Segment(C)], [Segment(K, True)]]
    if path == "l_input_proj.kernel":  # [enc C | context C, Wl]
        return [[Segment(C), Segment(C)], [Segment(shape[1])]]
    if path == "rosa_emb.embedding":   # [V tokens | no-hint row, C]
        return [[Segment(V), Segment(1)], [Segment(shape[1])]]
    if path == "ltm.vals":             # [S, D]
        return [[Segment(shape[0])], _d_segments(D, False)]
    if path == "val_proj.kernel":      # [C, D]
        return [[Segment(shape[0])], _d_segments(D, False)]
    return [[Segment(n)] for n in shape]


def _axis_maps(old: list[Segment], new: list[Segment]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(old_index, new_index, zero_mask)`` along one axis."""
    o_idx, n_idx = [], []
    zero = np.zeros(sum(s.size for s in new), bool)
    o_start = n_start = 0
    for i, seg in enumerate(new):
        have = old[i].size if i < len(old) else 0
        m = min(have, seg.size)
        o_idx.extend(range(o_start, o_start + m))
        n_idx.extend(range(n_start, n_start + m))
        if seg.zero_new:
            zero[n_start + m:n_start + seg.size] = True
        o_start += have
        n_start += seg.size
    return np.asarray(o_idx, np.int64), np.asarray(n_idx, np.int64), zero


def place(old: np.ndarray, fresh: np.ndarray, old_segs, new_segs) -> np.ndarray:
    """``fresh`` with ``old``'s entries placed segment by segment (and the flagged new
    entries zeroed). Pure NumPy; the result has ``fresh``'s shape."""
    out = np.array(fresh, copy=True)
    maps = [_axis_maps(o, n) for o, n in zip(old_segs, new_segs)]
    for axis, (_, _, zero) in enumerate(maps):
        if zero.any():
            idx = [slice(None)] * out.ndim
            idx[axis] = zero
            out[tuple(idx)] = 0.0
    if all(len(m[0]) for m in maps):
        out[np.ix_(*[m[1] for m in maps])] = np.asarray(old)[np.ix_(*[m[0] for m in maps])]
    return out


class ExpandReport(NamedTuple):
    copied: list[str]       # same shape, copied whole
    placed: list[str]       # grown, old entries placed
    initialised: list[str]  # not in the old model: fresh init


def expanded_config(old: HierarchosConfig, changes: dict) -> HierarchosConfig:
    """The new config: ``old`` with ``changes``; refuses shrinking and head-size changes.

    ``h_hidden`` follows ``context_dim`` (they must be equal); ``l_hidden`` follows it too
    when the old model had ``l_hidden == context_dim`` and ``--l-hidden`` is not given
    (the reference forces both to ``context_dim``, even when ``l_hidden`` differed)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = [k for k in changes if k not in GROWABLE + RUNTIME + FLAGS + ("rwkv_head_size",)]
    if unknown:
        raise ExpandError(f"expand cannot change {unknown[0]!r}")
    if "context_dim" in changes:
        changes.setdefault("h_hidden", changes["context_dim"])
        if old.l_hidden == old.context_dim:
            changes.setdefault("l_hidden", changes["context_dim"])
    for key in GROWABLE:
        if key in changes and int(changes[key]) < int(getattr(old, key)):
            raise ExpandError(f"--{key.replace('_', '-')} {changes[key]} is smaller than the model's "
                              f"{getattr(old, key)}: expand only grows a model")
    max_length = changes.pop("max_length", None)
    try:
        new = old.replace(**changes)
    except ValueError as e:  # ConfigError: an invalid combination (head size not dividing, say)
        raise ExpandError(f"the expanded config is invalid: {e}") from None
    if max_length is not None:
        new = new.with_extra(max_length=int(max_length))
    for width, name in ((new.h_hidden, "h_hidden"), (new.l_hidden, "l_hidden")):
        old_n = old.head_size(getattr(old, name))
        if new.head_size(width) != old_n and "rwkv_head_size" not in changes:
            if width % old_n:
                raise ExpandError(f"{name} {width} is not a multiple of the model's RWKV head size {old_n}: "
                                  "heads would be regrouped (pass --rwkv-head-size explicitly to accept that)")
            new = new.replace(rwkv_head_size=old_n)  # keep the heads: channels c = h·N + i stay put
    return new


def expand_params(old_model, new_cfg: HierarchosConfig, *, seed: int = 0, placement: str = "blocks"):
    """``(new_model, report)``: a fresh ``Hierarchos(new_cfg)`` with ``old_model``'s
    parameters placed into it (``placement``: ``"blocks"`` or ``"reference"``)."""
    from hierarchos_jax.model.hierarchos import Hierarchos

    if placement not in PLACEMENTS:
        raise ExpandError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    old_cfg = old_model.config
    new_model = Hierarchos(new_cfg, rngs=nnx.Rngs(seed))
    _, old_params = nnx.split(old_model, nnx.Param, ...)[:2]
    old_flat = {path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(old_params)}
    graphdef, new_params, rest = nnx.split(new_model, nnx.Param, ...)
    report = ExpandReport([], [], [])

    def one(path, fresh):
        name = path_name(path)
        fresh = np.asarray(fresh)
        if name not in old_flat:
            report.initialised.append(name)
            return jnp.asarray(fresh)
        old = old_flat[name]
        if old.ndim != fresh.ndim:
            report.initialised.append(name)
            return jnp.asarray(fresh)
        if placement == "reference":
            o_segs = [[Segment(n)] for n in old.shape]
            n_segs = [[Segment(n)] for n in fresh.shape]
        else:
            o_segs = axis_segments(name, old.shape, old_cfg)
            n_segs = axis_segments(name, fresh.shape, new_cfg)
        # Same shape is not enough where blocks move inside an axis (P and k·D traded, say).
        if old.shape == fresh.shape and o_segs == n_segs:
            report.copied.append(name)
            return jnp.asarray(old)
        report.placed.append(name)
        return jnp.asarray(place(old, fresh, o_segs, n_segs))

    placed = jax.tree_util.tree_map_with_path(one, new_params)
    return nnx.merge(graphdef, placed, rest), report


def expand_model_dir(old_path: str, out_dir: str, changes: dict, *, seed: int = 0, placement: str = "blocks",
                     log=print) -> Path:
    """``hierarchos expand``: load ``old_path``, grow it per ``changes``, save ``out_dir``
    (atomic; the old tokenizer files are copied: a vocabulary change is the user's to
    make in the tokenizer)."""
    from hierarchos_jax.io.model_dir import load_model_dir, save_model_dir
    from hierarchos_jax.io.tokenizer import TokenizerError, find_tokenizer_dir

    loaded = load_model_dir(old_path)
    new_cfg = expanded_config(loaded.config, changes)
    model, report = expand_params(loaded.model, new_cfg, seed=seed, placement=placement)
    src = Path(old_path)
    try:
        tok = find_tokenizer_dir(src if src.is_dir() else src.parent)
    except TokenizerError:
        tok = None
    out = save_model_dir(model, out_dir, tokenizer_dir=tok, metadata={"converted_from": f"expand {old_path}"})
    grown = {k: (getattr(loaded.config, k), getattr(new_cfg, k)) for k in GROWABLE
             if getattr(loaded.config, k) != getattr(new_cfg, k)}
    log(f"expanded {old_path} -> {out} ({placement} placement): "
        + (", ".join(f"{k} {a}->{b}" for k, a, b in ((k, *v) for k, v in grown.items())) or "no shape change")
        + f"; {len(report.copied)} tensors copied, {len(report.placed)} placed into larger ones, "
          f"{len(report.initialised)} freshly initialised")
    if new_cfg.vocab_size != loaded.config.vocab_size and tok is not None:
        log(f"note: the tokenizer copied from {tok} still has the old vocabulary; add "
            f"{new_cfg.vocab_size - loaded.config.vocab_size} tokens to it before using the model")
    return out


__all__ = [
    "GROWABLE",
    "PLACEMENTS",
    "RUNTIME",
    "ExpandError",
    "ExpandReport",
    "Segment",
    "axis_segments",
    "expand_model_dir",
    "expand_params",
    "expanded_config",
    "place",
]
