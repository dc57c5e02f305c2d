"""The whole Hierarchos model: embeddings, one token step, and the scan over a sequence.

Per token: token embedding (+ gated ROSA hint) -> LTM query from ``[token, prev_context]``
-> top-k memory values (+ timestamp code, x LTM gate) -> ``in_proj`` + GELU = ``enc`` ->
manager RWKV step on ``enc + feedback(worker hidden)`` -> every ``h_stride`` positions an
ACT-pondered plan gives a new target context -> interpolated context -> worker refines a
drift against it and takes one real step -> output norm -> tied LM head.

:class:`Hierarchos` holds the parameters (Flax NNX). :func:`forward` is a pure function of
the model, the token block and the carried :class:`HierarchosState`; the token loop is
one ``jax.lax.scan`` over :func:`token_step`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from hierarchos_jax.model import init as I
from hierarchos_jax.model.ltm import LTM, WorkingMemory, inner_update, retrieve_topk, timestamp_code
from hierarchos_jax.model.manager import plan
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.numerics import drift_clamp, finite_clamp, gelu, layer_norm
from hierarchos_jax.model.rwkv import RWKVCell, state_hidden
from hierarchos_jax.model.state import HierarchosState
from hierarchos_jax.model.worker import refine_and_step

QUERY_CLAMP = 12.0
ENCODER_CLAMP = 30.0
GATE_LOGIT_CLAMP = 50.0
LOGIT_CLAMP = 30.0
HEBBIAN_VALUE_CLAMP = 20.0


class Buffer(nnx.Variable):
    """Non-trainable state saved with the weights (here: the timestamp-code frequencies)."""


def tied_head(hidden: jax.Array, embedding: jax.Array) -> jax.Array:
    """``hidden [..., C] @ embedding[V, C]^T`` without materialising the transposed table
    (XLA would otherwise copy the whole ``[V, C]`` table every call)."""
    return jax.lax.dot_general(hidden, embedding, (((hidden.ndim - 1,), (1,)), ((), ())))


# Projections kept in float32 under a bf16 compute policy (model.md §9.2 fp32 islands):
# the LTM query and the ACT halting logit.
FP32_PROJECTIONS = ("qproj", "h_halt_proj")


def set_compute_dtype(model: "Hierarchos", dtype) -> "Hierarchos":
    """Run the model's dense matmuls in ``dtype`` (``None``/float32: as stored) with float32
    accumulation and float32 outputs, in place; returns ``model``.

    Parameters stay float32 (the cast happens inside each matmul, so gradients reach the
    float32 masters). Recurrent state, norms, LTM retrieval/updates, ACT weighting and the
    losses stay float32 because every matmul returns float32. Use it on a freshly merged
    model inside a jitted step.
    """
    dtype = None if dtype is None or jnp.dtype(dtype) == jnp.float32 else jnp.dtype(dtype)
    for path, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Linear) and not (path and path[0] in FP32_PROJECTIONS):
            module.dtype = dtype
            module.preferred_element_type = None if dtype is None else jnp.float32
    return model


def matmul(x: jax.Array, w: jax.Array, dtype=None) -> jax.Array:
    """``x @ w``; with a ``dtype`` (e.g. bfloat16) both operands are cast to it and the
    product is accumulated and returned in float32."""
    if dtype is None:
        return x @ w
    return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _linear(fan_in, fan_out, rngs, *, bias=True, kernel_init=None, bias_init=None):
    default = I.torch_linear_default(fan_in)
    return nnx.Linear(fan_in, fan_out, use_bias=bias, kernel_init=kernel_init or default,
                      bias_init=bias_init or default, rngs=rngs)


class Hierarchos(nnx.Module):
    """Parameters of the Hierarchos model (names follow the reference's state dict)."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        V, C, P = cfg.vocab_size, cfg.context_dim, cfg.persistent_dim
        Wh, Wl = cfg.h_hidden, cfg.l_hidden
        S, K, D, k = cfg.ltm_slots, cfg.ltm_key_dim, cfg.ltm_val_dim, cfg.ltm_topk
        zeros = jax.nn.initializers.zeros

        self.persistent = nnx.Param(I.normal(0.02)(rngs.params(), (P,)))
        self.ltm_gate_logit = nnx.Param(jnp.float32(-2.0))
        # Tied token embedding / LM head: the reference keeps the LM head's Linear init.
        self.tok_emb = nnx.Embed(V, C, embedding_init=I.torch_linear_default(C), rngs=rngs)
        if cfg.use_deepembed:
            self.h_deepemb = nnx.Embed(V, 4 * Wh, embedding_init=jax.nn.initializers.ones, rngs=rngs)
            self.l_deepemb = nnx.Embed(V, 4 * Wl, embedding_init=jax.nn.initializers.ones, rngs=rngs)
        if cfg.use_rosa:
            self.rosa_gate_logit = nnx.Param(jnp.float32(-1.0))
            self.rosa_emb = nnx.Embed(V + 1, C, embedding_init=zeros, rngs=rngs)
            if cfg.memory_token_routers:
                self.rosa_router = _linear(C, 1, rngs, kernel_init=zeros, bias_init=zeros)
        if cfg.memory_token_routers:
            self.ltm_router = _linear(C, 1, rngs, kernel_init=zeros, bias_init=zeros)
        self.ltm = LTM(S, K, D, rngs=rngs)
        self.qproj = _linear(2 * C, K, rngs, bias=False)
        self.val_proj = _linear(C, D, rngs, bias=False)
        self.in_proj = _linear(C + P + k * D, C, rngs)
        self.l_feedback_proj = _linear(Wl, Wh, rngs, bias=False, kernel_init=I.normal(0.01))
        self.h_rnn = RWKVCell(Wh, cfg.h_head_size, cfg.lora_ranks(Wh), rngs=rngs,
                              channel_mix_key_clamp=cfg.rwkv_channel_mix_key_clamp,
                              deepembed_clamp=cfg.rwkv_channel_mix_deepembed_clamp)
        self.h_to_context = _linear(Wh, C, rngs)
        self.h_halt_proj = _linear(Wh, 1, rngs, bias_init=I.constant(cfg.halt_bias_init))
        self.l_input_proj = _linear(2 * C, Wl, rngs)
        self.l_rnn = RWKVCell(Wl, cfg.l_head_size, cfg.lora_ranks(Wl), rngs=rngs,
                              channel_mix_key_clamp=cfg.rwkv_channel_mix_key_clamp,
                              deepembed_clamp=cfg.rwkv_channel_mix_deepembed_clamp)
        self.context_drift_proj = _linear(Wl, C, rngs, bias=False, kernel_init=I.normal(0.01))
        self.l_to_out = _linear(Wl, C, rngs)
        self.out_norm_scale = nnx.Param(jnp.ones((C,), jnp.float32))
        self.out_norm_bias = nnx.Param(jnp.zeros((C,), jnp.float32))
        self.time_freqs = Buffer(jnp.asarray(cfg.time_freqs()))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Tied LM head on final hidden states, clamped to +-30 (NaN -> 0)."""
        head = getattr(self.tok_emb, "head", None)  # a quantized table brings its own (hierarchos_jax.quant)
        out = head(hidden) if head is not None else tied_head(hidden, self.tok_emb.embedding[...])
        return finite_clamp(out, LOGIT_CLAMP)


class StepOutputs(NamedTuple):
    hidden: jax.Array        # [B, C] pre-norm final hidden of the token
    topk_vals: jax.Array     # [B, k, D] raw retrieved values
    topk_idx: jax.Array      # [B, k]
    planned: jax.Array       # bool scalar: this token was a planning step
    ponder_cost: jax.Array   # [B] (0 when not planning)
    ponder_steps: jax.Array  # int32 scalar (-1 when not planning)
    commitment: jax.Array    # [B]
    worker_steps: jax.Array  # int32 scalar


class Outputs(NamedTuple):
    """Per-call results; ``[T, ...]`` leading axes are moved to ``[B, T, ...]`` where batched."""

    hidden: jax.Array        # [B, T, C] final hidden states (after out_norm and clamp)
    topk_vals: jax.Array     # [B, T, k, D] raw retrieved values (before time code and gate)
    topk_idx: jax.Array      # [B, T, k] int32
    planned: jax.Array       # [T] bool
    ponder_cost: jax.Array   # [B, T] (0 at non-planning tokens)
    ponder_steps: jax.Array  # [T] int32, -1 at non-planning tokens
    commitment: jax.Array    # [B, T]
    worker_steps: jax.Array  # [T] int32


def gate_floor(cfg, step) -> jax.Array | float:
    """Training-time memory-gate warm-up floor at ``step`` (0 when disabled)."""
    if cfg.memory_gate_warmup_steps <= 0 or cfg.memory_gate_warmup_floor <= 0:
        return 0.0
    floor = min(max(cfg.memory_gate_warmup_floor, 0.0), 0.95)
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / cfg.memory_gate_warmup_steps, 0.0, 1.0)
    return floor * (1.0 - progress)


def _gate(model, logit_param, router, x, *, mode, warmup_step):
    logit = logit_param[...]
    if router is not None:
        logit = logit + router(x)
    else:
        logit = jnp.broadcast_to(logit, x.shape[:-1] + (1,))
    gate = jax.nn.sigmoid(finite_clamp(logit, GATE_LOGIT_CLAMP))
    if mode.training:
        floor = gate_floor(model.config, warmup_step)
        gate = floor + (1.0 - floor) * gate
    return gate


def embed_tokens(model: Hierarchos, input_ids, rosa_ids, *, mode: RunMode, warmup_step=0.0):
    """``token_x [B, T, C]``: token embedding plus the gated ROSA hint."""
    cfg = model.config
    e = model.tok_emb(input_ids)
    if not cfg.use_rosa:
        return e
    rosa_ids = jnp.where((rosa_ids < 0) | (rosa_ids > cfg.vocab_size), cfg.vocab_size, rosa_ids)
    router = getattr(model, "rosa_router", None) if cfg.memory_token_routers else None
    gate = _gate(model, model.rosa_gate_logit, router, e, mode=mode, warmup_step=warmup_step)
    return e + gate * model.rosa_emb(rosa_ids)


def forward(
    model: Hierarchos,
    input_ids: jax.Array,
    state: HierarchosState,
    *,
    mode: RunMode,
    rosa_ids: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    drift_seed: jax.Array | None = None,
    warmup_step: jax.Array | float = 0.0,
    min_timestamp: float = 0.0,
    source_filter: int | None = None,
    retrieval_probe: jax.Array | None = None,
    remat: bool = True,
) -> tuple[Outputs, HierarchosState]:
    """Run ``input_ids [B, T]`` from ``state``; returns per-token outputs and the new state.

    ``rosa_ids [B, T]`` are the host-computed ROSA hints (required when ``use_rosa``).
    ``drift_seed [B, C]`` replaces the derived initial drift at the first token (the
    reference's TBPTT chunk-boundary semantics); leave it ``None`` for streaming.
    ``retrieval_probe [B, T, k, D]`` (zeros) is added to the raw retrieved values; its
    gradient is the gradient w.r.t. those values (the Titans update signal).
    ``remat`` (training only): rematerialise each token step in the backward pass.
    The in-projection's matmuls follow ``model.in_proj.dtype`` (see :func:`set_compute_dtype`).
    """
    cfg = model.config
    B, T = input_ids.shape
    C, P = cfg.context_dim, cfg.persistent_dim
    D, k = cfg.ltm_val_dim, cfg.ltm_topk
    R, Cc, A = cfg.recurrent_state_clamp, cfg.context_state_clamp, cfg.activation_clamp
    dclamp = lambda d: drift_clamp(d, cfg.drift_state_clamp, cfg.drift_norm_clamp)  # noqa: E731
    if cfg.use_rosa and rosa_ids is None:
        raise ValueError("this model uses ROSA: pass rosa_ids (see hierarchos_jax.model.rosa)")
    if drift_seed is not None:  # [C] and [1, C] seeds serve every row; other shapes are ignored
        drift_seed = drift_seed[None] if drift_seed.ndim == 1 else drift_seed
        if drift_seed.shape == (1, C):
            drift_seed = jnp.broadcast_to(drift_seed, (B, C))
        elif drift_seed.shape != (B, C):
            drift_seed = None  # as the reference: silently
    memory = state.memory  # [B, ...] private rows or [1, ...] shared by all rows

    # ---- everything that depends on the token only, for the whole block at once -------
    token_x = embed_tokens(model, input_ids, rosa_ids, mode=mode, warmup_step=warmup_step)
    router = getattr(model, "ltm_router", None) if cfg.memory_token_routers else None
    ltm_gate = _gate(model, model.ltm_gate_logit, router, token_x, mode=mode, warmup_step=warmup_step)
    q_kernel = model.qproj.kernel[...]
    q_token = token_x @ q_kernel[:C]
    in_kernel, in_bias = model.in_proj.kernel[...], model.in_proj.bias[...]
    mm_dtype = model.in_proj.dtype
    persistent = jnp.broadcast_to(model.persistent[...], (B, T, P))
    enc_token = matmul(token_x, in_kernel[:C], mm_dtype) + matmul(persistent, in_kernel[C:C + P], mm_dtype) + in_bias
    mem_kernel = in_kernel[C + P:]
    deep_h = model.h_deepemb(input_ids) if cfg.use_deepembed else None
    deep_l = model.l_deepemb(input_ids) if cfg.use_deepembed else None
    freqs = model.time_freqs[...]
    detach_every = cfg.detach_every_n_steps if mode.training else None

    def time_major(x):
        return None if x is None else jnp.swapaxes(x, 0, 1)

    xs = dict(t=jnp.arange(T, dtype=jnp.int32), q=time_major(q_token), enc=time_major(enc_token),
              gate=time_major(ltm_gate), deep_h=time_major(deep_h), deep_l=time_major(deep_l),
              probe=time_major(retrieval_probe))

    seed = None if drift_seed is None else dclamp(drift_seed)

    def token_step(carry, x):
        h_state, l_state, prev_ctx, target_ctx, _, memory = carry
        t = x["t"]
        tau = state.position + t

        # LTM read, query from [token, prev_context] (prev_context before any plan).
        q = finite_clamp(x["q"] + prev_ctx @ q_kernel[C:], QUERY_CLAMP)
        got = retrieve_topk(model.ltm.keys[...], model.ltm.vals[...], memory, q, k,
                            min_timestamp=min_timestamp, source_filter=source_filter,
                            score_grad_scale=cfg.ltm_score_grad_scale if mode.training else 0.0)
        raw_vals = got.vals if x["probe"] is None else got.vals + x["probe"]
        mem_in = (raw_vals + timestamp_code(got.ts, freqs, D)) * x["gate"][:, :, None]
        enc = finite_clamp(gelu(x["enc"] + matmul(mem_in.reshape(B, k * D), mem_kernel, mm_dtype)), ENCODER_CLAMP)

        # Manager: real step on enc + feedback from the worker's hidden.
        enc_fb = finite_clamp(enc + model.l_feedback_proj(state_hidden(l_state)), A)
        if detach_every:
            cut = (t > 0) & (t % detach_every == 0)
            h_state = jnp.where(cut, jax.lax.stop_gradient(h_state), h_state)
        h_real, h_state = model.h_rnn(enc_fb, h_state, x["deep_h"])
        h_real, h_state = finite_clamp(h_real, A), finite_clamp(h_state, R)

        planned = (tau % cfg.h_stride) == 0

        def do_plan(_):
            p = plan(model, enc_fb, h_state, h_real, x["deep_h"], mode=mode, cfg=cfg)
            return finite_clamp(target_ctx, Cc), p.target_context, p.ponder_cost, p.ponder_steps

        def no_plan(_):
            return prev_ctx, target_ctx, jnp.zeros((B,), enc.dtype), jnp.int32(-1)

        prev_ctx, target_ctx, ponder_cost, ponder_steps = jax.lax.cond(planned, do_plan, no_plan, None)

        alpha = (tau % cfg.h_stride).astype(jnp.float32) / cfg.h_stride
        context = finite_clamp(prev_ctx + alpha * (target_ctx - prev_ctx), Cc)

        derived = dclamp(jnp.tanh(model.context_drift_proj(state_hidden(l_state))))
        drift0 = derived if seed is None else jnp.where(t == 0, seed, derived)
        if detach_every:
            l_state = jnp.where(cut, jax.lax.stop_gradient(l_state), l_state)
        w = refine_and_step(model, enc, context, l_state, drift0, x["deep_l"], mode=mode, cfg=cfg)
        hidden = finite_clamp(w.hidden, A)
        l_state = finite_clamp(w.l_state, R)
        drift = dclamp(w.drift)

        if mode.hebbian:
            value = jnp.clip(model.val_proj(hidden), -HEBBIAN_VALUE_CLAMP, HEBBIAN_VALUE_CLAMP)
            memory = hebbian_write(cfg, memory, got.idx, value)

        out = StepOutputs(hidden, got.vals, got.idx, planned, ponder_cost, ponder_steps, w.commitment, w.steps)
        return (h_state, l_state, prev_ctx, target_ctx, drift, memory), out

    carry0 = (finite_clamp(state.h_state, R), finite_clamp(state.l_state, R), finite_clamp(state.prev_context, Cc),
              finite_clamp(state.target_context, Cc), state.drift, memory)
    # Training: rematerialise each token step in the backward pass instead of storing its
    # ~1k intermediates (fewer, larger ops on CPU; far less memory on accelerators).
    step = jax.checkpoint(token_step) if mode.training and remat else token_step
    carry, ys = jax.lax.scan(step, carry0, xs)
    h_state, l_state, prev_ctx, target_ctx, drift, memory = carry

    batch_major = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    hidden = finite_clamp(layer_norm(batch_major(ys.hidden), model.out_norm_scale[...], model.out_norm_bias[...]), A)
    outputs = Outputs(hidden, batch_major(ys.topk_vals), batch_major(ys.topk_idx), ys.planned,
                      batch_major(ys.ponder_cost), ys.ponder_steps, batch_major(ys.commitment), ys.worker_steps)
    new_state = HierarchosState(h_state, l_state, prev_ctx, target_ctx, drift, memory, state.position + T)
    return outputs, new_state


def hebbian_write(cfg, memory: WorkingMemory, idx: jax.Array, value: jax.Array) -> WorkingMemory:
    """Eval-time Hebbian write of ``value [B, D]`` into the slots just read (``idx [B, k]``)."""
    grads = -jnp.broadcast_to(value[:, None, :], idx.shape + value.shape[-1:])
    return inner_update(memory, idx, grads, cfg.ltm_lr, timestamp=0.0, source=1, tokens_covered=1.0,
                        reference_chunk_len=cfg.effective_reference_chunk_len, momentum=cfg.ltm_momentum,
                        weight_decay=cfg.ltm_weight_decay, forget_rate=cfg.ltm_forget_rate)


def recover_contexts(model: Hierarchos, h_state: jax.Array) -> jax.Array:
    """Context rebuilt from a manager state: ``h_to_context(slot 0)`` (reference semantics
    when a state is passed without contexts)."""
    return model.h_to_context(state_hidden(h_state))

