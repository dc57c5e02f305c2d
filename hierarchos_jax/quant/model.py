"""Quantizing a :class:`~hierarchos_jax.model.hierarchos.Hierarchos` in place.

Which tensors (spec/quantization.md §12, chosen explicitly by module path):

* quantized :class:`QuantizedLinear` — the large matrices applied as ``x @ W^T``: both RWKV
  cells' ``receptance, key, value, output, key_cm, value_cm`` and ``val_proj,
  l_feedback_proj, h_to_context, l_input_proj, context_drift_proj, l_to_out``;
* quantized :class:`QuantizedEmbed` — the lookup tables ``tok_emb`` (also the tied LM head,
  stored once), ``h_deepemb``, ``l_deepemb``, ``rosa_emb`` (97 % of the 232M parameters);
* float32 — everything else: norms, mixing/decay vectors, ``r_k``, the low-rank
  ``w/a/g`` matrices (right-multiplied, not ``x @ W^T``), biases, gate logits, routers,
  ``h_halt_proj``, the LTM, ``persistent``, and ``qproj`` / ``in_proj`` (the forward slices
  their kernels into token/context/memory parts; together under 1 % of the parameters).
"""

from __future__ import annotations

from flax import nnx

from hierarchos_jax.quant.formats import get_format
from hierarchos_jax.quant.layers import QuantizedEmbed, QuantizedLinear

CELL_LINEARS = ("receptance", "key", "value", "output", "key_cm", "value_cm")
TOP_LINEARS = ("val_proj", "l_feedback_proj", "h_to_context", "l_input_proj", "context_drift_proj", "l_to_out")
EMBEDDINGS = ("tok_emb", "h_deepemb", "l_deepemb", "rosa_emb")


def linear_paths(config) -> tuple[str, ...]:
    cells = tuple(f"{cell}.{name}" for cell in ("h_rnn", "l_rnn") for name in CELL_LINEARS)
    return TOP_LINEARS + cells


def embedding_paths(config) -> tuple[str, ...]:
    out = ["tok_emb"]
    if config.use_deepembed:
        out += ["h_deepemb", "l_deepemb"]
    if config.use_rosa:
        out.append("rosa_emb")
    return tuple(out)


def quantized_paths(config) -> tuple[str, ...]:
    """Module paths (``h_rnn.key``, ``tok_emb``, ...) that a quantized model stores packed."""
    return linear_paths(config) + embedding_paths(config)


def module_at(model, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_module(model, path: str, module) -> None:
    *parents, name = path.split(".")
    setattr(module_at(model, ".".join(parents)) if parents else model, name, module)


def _to_float(module):
    """The float weights of a (possibly already quantized) layer: ``(kind, weight, bias)``
    with ``weight`` in PyTorch layout ``[out, in]`` / ``[V, C]``."""
    import numpy as np

    if isinstance(module, QuantizedLinear):
        bias = None if module.bias is None else np.asarray(module.bias[...])
        return "linear", np.asarray(module.weight()), bias
    if isinstance(module, QuantizedEmbed):
        return "embed", np.asarray(module.embedding), None
    if isinstance(module, nnx.Linear):
        bias = None if module.bias is None else np.asarray(module.bias[...])
        return "linear", np.asarray(module.kernel[...]).T, bias
    if isinstance(module, nnx.Embed):
        return "embed", np.asarray(module.embedding[...]), None
    raise TypeError(f"cannot quantize a {type(module).__name__}")


def quantize_model(model, qtype: str = "Q8_0"):
    """Replace the selected layers of ``model`` (in place) by quantized ones; returns it.

    Already quantized layers of another qtype are re-quantized from their dequantized
    weights; layers already in ``qtype`` are kept as they are.
    """
    fmt = get_format(qtype)
    for path in quantized_paths(model.config):
        module = module_at(model, path)
        if isinstance(module, (QuantizedLinear, QuantizedEmbed)) and module.qtype == fmt.name:
            continue
        kind, weight, bias = _to_float(module)
        new = (QuantizedLinear.from_weight(weight, fmt.name, bias) if kind == "linear"
               else QuantizedEmbed.from_table(weight, fmt.name))
        set_module(model, path, new)
    return model


def requantize_model(model, qtype: str | None = None, *, float_model=None):
    """Quantize again after the weights changed (online learning).

    ``float_model``: a float copy whose (updated) weights should be quantized into
    ``model``'s layers; without it, ``model`` itself is (re)quantized, which only changes
    layers that are float or in another qtype. ``qtype`` defaults to the model's current
    one. Returns ``model``.
    """
    if qtype is None:
        qtype = model_qtype(model) or "Q8_0"
    fmt = get_format(qtype)
    if float_model is None:
        return quantize_model(model, fmt.name)
    for path in quantized_paths(model.config):
        kind, weight, bias = _to_float(module_at(float_model, path))
        new = (QuantizedLinear.from_weight(weight, fmt.name, bias) if kind == "linear"
               else QuantizedEmbed.from_table(weight, fmt.name))
        set_module(model, path, new)
    # every other (float) parameter follows the float model too
    from hierarchos_jax.io.reference_state import state_dict_layout, variable_at

    packed = tuple(p + "." for p in quantized_paths(model.config))
    for e in state_dict_layout(model.config):
        if e.path is not None and not e.path.startswith(packed):
            variable_at(model, e.path).set_value(variable_at(float_model, e.path)[...])
    return model


def model_qtype(model) -> str | None:
    """The qtype of ``model``'s quantized layers (None for a float model)."""
    for path in quantized_paths(model.config):
        module = module_at(model, path)
        if isinstance(module, (QuantizedLinear, QuantizedEmbed)):
            return module.qtype
    return None
