"""Mapping between the reference's PyTorch state dict and our NNX parameters.

One table, :func:`state_dict_layout`, lists every reference key in the reference's own
order (the order ``torch.save`` wrote) with where it lives in :class:`Hierarchos` and how
the array changes on the way:

* ``linear``: PyTorch ``[out, in]`` weight <-> Flax ``[in, out]`` kernel (transpose),
* ``row``: a ``[1, W]`` RWKV mixing vector <-> our ``[W]``,
* ``same``: identical layout,
* ``buffer``: not a parameter (``time_freqs`` and the transient LTM buffers), written as
  the reference writes them on export (recomputed / zeroed) and ignored on import.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

_CELL_KEYS: tuple[tuple[str, str, str], ...] = (
    ("x_r", "x_r", "row"), ("x_w", "x_w", "row"), ("x_k", "x_k", "row"), ("x_v", "x_v", "row"),
    ("x_a", "x_a", "row"), ("x_g", "x_g", "row"),
    ("w1", "w1", "same"), ("w2", "w2", "same"), ("w0", "w0", "row"),
    ("a1", "a1", "same"), ("a2", "a2", "same"), ("a0", "a0", "row"),
    ("g1", "g1", "same"), ("g2", "g2", "same"),
    ("k_k", "k_k", "row"), ("k_a", "k_a", "row"), ("r_k", "r_k", "same"), ("x_k_cm", "x_k_cm", "row"),
    ("ln1.weight", "ln1_scale", "same"), ("ln1.bias", "ln1_bias", "same"),
    ("ln2.weight", "ln2_scale", "same"), ("ln2.bias", "ln2_bias", "same"),
    ("receptance.weight", "receptance.kernel", "linear"), ("key.weight", "key.kernel", "linear"),
    ("value.weight", "value.kernel", "linear"), ("output.weight", "output.kernel", "linear"),
    ("ln_x.weight", "ln_x_scale", "same"), ("ln_x.bias", "ln_x_bias", "same"),
    ("key_cm.weight", "key_cm.kernel", "linear"), ("value_cm.weight", "value_cm.kernel", "linear"),
)

TRANSIENT_LTM_BUFFERS = ("ltm.fast_vals", "ltm._mom_vals", "ltm.timestamps", "ltm.sources")


class Entry(NamedTuple):
    name: str          # reference state-dict key
    path: str | None   # dotted attribute path in Hierarchos (None for buffers)
    kind: str          # linear | row | same | buffer


def state_dict_layout(config) -> Iterator[Entry]:
    """Every reference state-dict key for ``config``, in the reference's order."""
    c = config
    if c.use_rosa:
        yield Entry("rosa_gate_logit", "rosa_gate_logit", "same")
    yield Entry("persistent", "persistent", "same")
    yield Entry("ltm_gate_logit", "ltm_gate_logit", "same")
    yield Entry("time_freqs", "time_freqs", "buffer")
    yield Entry("tok_emb.weight", "tok_emb.embedding", "same")
    if c.use_deepembed:
        yield Entry("h_deepemb.weight", "h_deepemb.embedding", "same")
        yield Entry("l_deepemb.weight", "l_deepemb.embedding", "same")
    if c.use_rosa:
        yield Entry("rosa_emb.weight", "rosa_emb.embedding", "same")
        if c.memory_token_routers:
            yield Entry("rosa_router.weight", "rosa_router.kernel", "linear")
            yield Entry("rosa_router.bias", "rosa_router.bias", "same")
    if c.memory_token_routers:
        yield Entry("ltm_router.weight", "ltm_router.kernel", "linear")
        yield Entry("ltm_router.bias", "ltm_router.bias", "same")
    yield Entry("ltm.keys", "ltm.keys", "same")
    yield Entry("ltm.vals", "ltm.vals", "same")
    for name in TRANSIENT_LTM_BUFFERS:
        yield Entry(name, None, "buffer")
    yield Entry("qproj.weight", "qproj.kernel", "linear")
    yield Entry("val_proj.weight", "val_proj.kernel", "linear")
    yield Entry("in_proj.weight", "in_proj.kernel", "linear")
    yield Entry("in_proj.bias", "in_proj.bias", "same")
    yield Entry("l_feedback_proj.weight", "l_feedback_proj.kernel", "linear")
    yield from _cell("h_rnn")
    for lin in ("h_to_context", "h_halt_proj", "l_input_proj"):
        yield Entry(f"{lin}.weight", f"{lin}.kernel", "linear")
        yield Entry(f"{lin}.bias", f"{lin}.bias", "same")
    yield from _cell("l_rnn")
    yield Entry("context_drift_proj.weight", "context_drift_proj.kernel", "linear")
    yield Entry("l_to_out.weight", "l_to_out.kernel", "linear")
    yield Entry("l_to_out.bias", "l_to_out.bias", "same")
    yield Entry("out_norm.weight", "out_norm_scale", "same")
    yield Entry("out_norm.bias", "out_norm_bias", "same")
    yield Entry("lm_head.weight", "tok_emb.embedding", "same")


def _cell(prefix: str) -> Iterator[Entry]:
    for ref, ours, kind in _CELL_KEYS:
        yield Entry(f"{prefix}.{ref}", f"{prefix}.{ours}", kind)


def variable_at(model, path: str) -> nnx.Variable:
    """The NNX variable at a dotted attribute path of :func:`state_dict_layout` (e.g. ``h_rnn.key.kernel``)."""
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def to_reference(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return np.ascontiguousarray(value.T)
    if kind == "row":
        return value.reshape(1, -1)
    return value


def from_reference(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return np.ascontiguousarray(value.T)
    if kind == "row":
        return value.reshape(-1)
    return value


class StateDictError(ValueError):
    """A reference state dict does not fit the model (missing key, wrong shape, non-finite)."""


def export_state_dict(model) -> "OrderedDict[str, np.ndarray]":
    """The reference state dict of ``model`` (tied embedding: one array object, two keys)."""
    cfg = model.config
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    cache: dict[str, np.ndarray] = {}
    S, D = cfg.ltm_slots, cfg.ltm_val_dim
    buffers = {
        "time_freqs": np.asarray(model.time_freqs[...]),
        "ltm.fast_vals": np.zeros((S, D), np.float32),
        "ltm._mom_vals": np.zeros((S, D), np.float32),
        "ltm.timestamps": np.zeros((S,), np.float32),
        "ltm.sources": np.zeros((S,), np.int64),
    }
    for e in state_dict_layout(cfg):
        if e.kind == "buffer":
            out[e.name] = buffers[e.name]
            continue
        if e.path not in cache:
            cache[e.path] = to_reference(e.kind, np.asarray(variable_at(model, e.path)[...]))
        out[e.name] = cache[e.path]
    return out


def _strip_compile_prefix(name: str) -> str:
    return ".".join(p for p in name.split(".") if p != "_orig_mod")


def import_state_dict(model, state_dict) -> None:
    """Load a reference state dict into ``model`` in place (every parameter must be there).

    Accepts ``torch.compile`` prefixes (``_orig_mod``), either alias of the tied
    embedding, and the legacy ``qproj.weight [K, C]`` (widened with zero columns for the
    previous-context half). Rejects missing keys, shape mismatches and NaN/Inf.
    """
    cfg = model.config
    sd = {_strip_compile_prefix(k): v for k, v in state_dict.items()}
    tied = [sd.get("tok_emb.weight"), sd.get("lm_head.weight")]
    if tied[0] is not None and tied[1] is not None and not np.array_equal(tied[0], tied[1]):
        raise StateDictError("tok_emb.weight and lm_head.weight differ, but the model ties them")
    if "tok_emb.weight" not in sd and tied[1] is not None:
        sd["tok_emb.weight"] = tied[1]
    q = sd.get("qproj.weight")
    if q is not None and q.shape == (cfg.ltm_key_dim, cfg.context_dim):
        sd["qproj.weight"] = np.concatenate([q, np.zeros_like(q)], axis=1)
    if "time_freqs" in sd:  # keep the stored frequencies (a recomputed exp can differ by 1 ulp)
        freqs = np.asarray(sd["time_freqs"], np.float32)
        if freqs.shape != tuple(model.time_freqs[...].shape):
            raise StateDictError(f"'time_freqs' has shape {freqs.shape}, expected {tuple(model.time_freqs[...].shape)}")
        model.time_freqs.set_value(jnp.asarray(freqs))
    done = set()
    for e in state_dict_layout(cfg):
        if e.kind == "buffer" or e.path in done:
            continue
        if e.name not in sd:
            raise StateDictError(f"state dict has no '{e.name}' (needed by this config)")
        value = np.asarray(sd[e.name])
        if value.dtype.kind not in "f" and value.dtype.name != "bfloat16":
            raise StateDictError(f"'{e.name}' has dtype {value.dtype}, expected floating point")
        value = from_reference(e.kind, value.astype(np.float32))
        var = variable_at(model, e.path)
        if tuple(value.shape) != tuple(var[...].shape):
            raise StateDictError(
                f"'{e.name}' has shape {tuple(to_reference(e.kind, value).shape)}, the config needs "
                f"{tuple(to_reference(e.kind, np.zeros(var[...].shape)).shape)}")
        if not np.all(np.isfinite(value)):
            raise StateDictError(f"'{e.name}' contains NaN or Inf")
        var.set_value(jnp.asarray(value))
        done.add(e.path)
