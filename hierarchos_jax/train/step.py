"""The jitted training step: TBPTT over chunks, loss composition, gradient accumulation,
clipping, AdamW, non-finite skipping (spec: training.md §5.3–5.12, §6).

One call of :meth:`TrainStep.__call__` is one optimizer update: it takes a window of
``A`` micro-batches stacked as ``[A, B, T]`` (the accumulation window; pad a short final
window with all-padding micro-batches and pass the real count as ``divisor``), runs each
micro-batch from a fresh state in chunks of ``chunk_size`` tokens with the state carried
between chunks under stop-gradient (the previous chunk's drift is the next chunk's
``drift_seed``), back-propagates each chunk separately (the reference's memory profile),
accumulates the gradients and applies one AdamW update — all under one ``jax.jit`` with
the parameters and optimizer state donated.

Options (:class:`StepOptions`):

* LTM training mode (§5.8): ``read-only`` (the forward retrieves from the per-row working
  memory, nothing is written) or ``inner-update`` (after each chunk's backward, the
  gradient of the chunk loss w.r.t. the raw retrieved values — the forward's
  ``retrieval_probe`` — is clipped and written into the carried working memory with the
  LTM LR ``eta(Counters.ltm_steps)`` of §6.3; the counter advances with every applied
  update, so a checkpoint of the counters resumes the LTM schedule exactly).
* full-sample BPTT (§5.7): one attached graph per micro-batch, segments under
  ``jax.checkpoint``, components aggregated with the chunk ratios and composed once;
  call :func:`apply_full_sample_implications` on the config and options first.
* ``remat_tokens``: per-token ``jax.checkpoint`` in the forward's scan (same numbers).
* ``compute_dtype="bfloat16"`` (``--amp``): bf16 matmuls with float32 accumulation and
  outputs; float32 master parameters, optimizer state, recurrent state and losses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hierarchos_jax.model import rosa as rosa_lib
from hierarchos_jax.model.hierarchos import forward, set_compute_dtype
from hierarchos_jax.model.losses import (
    IGNORE_INDEX,
    chunked_lm_loss,
    commitment_cost,
    ponder_cost,
)
from hierarchos_jax.model.ltm import WorkingMemory, inner_update
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.numerics import drift_clamp, finite_clamp
from hierarchos_jax.model.state import HierarchosState, zeros_state
from hierarchos_jax.train.optimizer import global_norm, make_ltm_schedule


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss-composition options (spec §5.5) and the TBPTT chunking (§5.3)."""

    chunk_size: int = 256                       # L_c (training_chunk_size); <= 0: one chunk
    ponder_loss_weight: float = 0.01
    commitment_loss_weight: float = 0.5
    max_commitment_cost_for_backward: float = 2.0
    max_ce_loss_for_backward: float = 0.0
    max_ponder_cost_for_backward: float = 0.0
    encourage_thinking: bool = False
    adaptive_ponder: bool = False
    ponder_target_scale: float = 0.5
    loss_rows_per_chunk: int = 0                # chunked CE: rows of [B*T] per logits block


LTM_TRAINING_MODES = ("read-only", "inner-update")
_INNER_ALIASES = frozenset({"inner-update", "inner", "gradient", "grad", "titans", "titans-inner-update"})
_READ_ONLY_ALIASES = frozenset({"read-only", "readonly", "inference", "inference-like", "off", "none"})
COMPUTE_DTYPES = ("float32", "bfloat16")


def normalize_ltm_training_mode(mode) -> str:
    """§5.8: case-insensitive, ``_`` -> ``-``; read-only aliases -> ``"read-only"``, every
    other value (the inner-update aliases included) -> ``"inner-update"``."""
    s = str(mode).strip().lower().replace("_", "-")
    return "read-only" if s in _READ_ONLY_ALIASES else "inner-update"


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Train-step options beyond the loss (spec §5.7, §5.8, §5.11, §6.3).

    ``min_ltm_lr=None`` means the LR floor of the optimizer (``--min-lr``); the caller
    resolves it (``min_ltm_lr = args.min_ltm_lr if given else args.min_lr``), else 1e-6
    (the reference CLI's ``--min-lr`` default) is used. ``ltm_total_steps`` is ``U`` of
    the LTM cosine (the same total update count as the LR schedule).
    """

    ltm_training_mode: str = "read-only"
    ltm_lr: float = 1e-3
    min_ltm_lr: float | None = None
    ltm_total_steps: int = 1
    disable_ltm_lr_schedule: bool = False
    grad_clip: float = 1.0                  # the inner update's clip value (§5.8 step 3)
    full_sample_bptt: bool = False
    full_sample_segment_size: int = 128
    full_sample_remat: bool = True
    remat_tokens: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "ltm_training_mode", normalize_ltm_training_mode(self.ltm_training_mode))
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.full_sample_segment_size <= 0:
            raise ValueError(f"full_sample_segment_size must be > 0, got {self.full_sample_segment_size}")

    @property
    def inner_update(self) -> bool:
        return self.ltm_training_mode == "inner-update"

    @property
    def jnp_compute_dtype(self):
        """``None`` for float32 (matmuls as stored), else the jnp dtype of the matmuls."""
        return None if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)

    def ltm_schedule(self):
        """``s -> eta(s)`` (§6.3)."""
        floor = 1e-6 if self.min_ltm_lr is None else self.min_ltm_lr
        return make_ltm_schedule(self.ltm_lr, floor, self.ltm_total_steps, disabled=self.disable_ltm_lr_schedule)


def apply_full_sample_implications(config, options: StepOptions):
    """§5.7: what ``--full-sample-bptt`` forces, as ``(config, options)``: no in-chunk detach,
    the parity refinement policy, read-only LTM (persisted in the config: ``full_sample_bptt``
    and ``inference_logit_parity``). Persistence off is the loop's business. Unchanged when
    full-sample BPTT is off."""
    if not options.full_sample_bptt:
        return config, options
    return config.replace(**FULL_SAMPLE_CONFIG), full_sample_options(options)


# The config keys that full-sample BPTT forces (persisted with the model).
FULL_SAMPLE_CONFIG = {"detach_every_n_steps": None, "inference_logit_parity": True, "full_sample_bptt": True}


def full_sample_options(options: StepOptions) -> StepOptions:
    """The step-option half of §5.7: read-only LTM, and no per-token remat inside segments
    that are themselves rematerialised. Unchanged when full-sample BPTT is off."""
    if not options.full_sample_bptt:
        return options
    return dataclasses.replace(options, ltm_training_mode="read-only",
                               remat_tokens=options.remat_tokens and not options.full_sample_remat)


class Batch(NamedTuple):
    """One accumulation window: every array is ``[A, B, T]`` (``warmup_step`` is ``[A]``)."""

    input_ids: jax.Array
    labels: jax.Array
    attention_mask: jax.Array
    rosa_ids: jax.Array
    loss_weights: jax.Array
    warmup_step: jax.Array


class Counters(NamedTuple):
    updates: jax.Array          # optimizer updates applied
    skipped: jax.Array          # updates skipped (non-finite loss or gradient)
    nonfinite_batches: jax.Array  # micro-batches whose loss was non-finite
    ltm_steps: jax.Array = 0    # position s of the LTM LR cosine (§6.3; advances in inner-update mode only)


def zero_counters() -> Counters:
    return Counters(jnp.int32(0), jnp.int32(0), jnp.int32(0), jnp.int32(0))


# ---------------------------------------------------------------- pieces (pure)

def _cap(x, c):
    return jnp.minimum(x, c) if c > 0 else x


def _cap_st(x, c):
    return x + jax.lax.stop_gradient(jnp.minimum(x, c) - x) if c > 0 else x


def compose_loss(lc: LossConfig, ce, ponder, has_ponder, commit, label_ratio, token_ratio, divisor,
                 max_h_steps: int):
    """§5.5: ``(CE'·label_ratio + aux·token_ratio) / divisor`` with the reference's caps."""
    ce_b = _cap(ce, lc.max_ce_loss_for_backward)
    p_b = _cap(ponder, lc.max_ponder_cost_for_backward)
    wp = lc.ponder_loss_weight
    if lc.encourage_thinking:
        p_term = -abs(wp) * p_b
    elif lc.adaptive_ponder:
        target = jnp.clip(jax.lax.stop_gradient(ce) * lc.ponder_target_scale, 1.0, float(max_h_steps))
        p_term = wp * jax.nn.relu(target - p_b)
    else:
        p_term = wp * p_b
    aux = jnp.where(has_ponder, p_term, 0.0)
    aux = aux + lc.commitment_loss_weight * _cap_st(commit, lc.max_commitment_cost_for_backward)
    return (ce_b * label_ratio + aux * token_ratio) / divisor


def carry_state(cfg, state: HierarchosState) -> HierarchosState:
    """§5.6: detach and finite-clamp the state passed to the next chunk."""
    state = jax.tree.map(jax.lax.stop_gradient, state)
    R, Cc = cfg.recurrent_state_clamp, cfg.context_state_clamp
    return state._replace(
        h_state=finite_clamp(state.h_state, R), l_state=finite_clamp(state.l_state, R),
        prev_context=finite_clamp(state.prev_context, Cc), target_context=finite_clamp(state.target_context, Cc),
        drift=drift_clamp(state.drift, cfg.drift_state_clamp, cfg.drift_norm_clamp))


def chunk_layout(T: int, L: int) -> tuple[int, int]:
    """``(n_chunks, chunk_len)`` for a (padded) length ``T``."""
    if L <= 0 or L >= T:
        return 1, T
    if T % L:
        raise ValueError(f"batch length {T} is not a multiple of the chunk size {L} (pad it: pad_batch)")
    return T // L, L


def chunk_ratios(labels, mask, weights, n: int, L: int):
    """§5.4 ``label_ratio [n]`` and ``token_ratio [n]`` of one micro-batch ``[B, T]``."""
    B, T = labels.shape
    sup = ((labels != IGNORE_INDEX).astype(jnp.float32) * weights.astype(jnp.float32))
    # target j is predicted by chunk (j-1)//L; position 0 is never a target
    sup_shift = jnp.concatenate([sup[:, 1:], jnp.zeros((B, 1), jnp.float32)], axis=1)
    m = jnp.sum(sup_shift.reshape(B, n, L), axis=(0, 2))
    r = jnp.sum(mask.astype(jnp.float32).reshape(B, n, L), axis=(0, 2))
    safe = lambda x: jnp.where(jnp.sum(x) > 0, x / jnp.where(jnp.sum(x) > 0, jnp.sum(x), 1.0), 0.0)  # noqa: E731
    return safe(m), safe(r)


def _chunked(x, n, L, look_ahead_fill=None):
    """``[B, T] -> [n, B, L]`` or, with ``look_ahead_fill``, ``[n, B, L+1]`` (one-token look-ahead)."""
    B, T = x.shape
    if look_ahead_fill is None:
        return jnp.swapaxes(x.reshape(B, n, L), 0, 1)
    ext = jnp.concatenate([x, jnp.full((B, 1), look_ahead_fill, x.dtype)], axis=1)
    idx = np.arange(n)[:, None] * L + np.arange(L + 1)[None, :]
    return jnp.transpose(ext[:, idx], (1, 0, 2))


class ChunkMetrics(NamedTuple):
    loss: jax.Array        # chunk_loss * divisor (the undivided contribution)
    ce: jax.Array          # CE weighted by label_ratio
    z_loss: jax.Array
    ponder: jax.Array      # weighted by token_ratio (full-sample: ponder_ratio)
    commitment: jax.Array
    finite: jax.Array


class MicroBatchResult(NamedTuple):
    grads: object              # like params
    metrics: ChunkMetrics      # summed over chunks
    finite: jax.Array          # every active chunk (and its LTM gradient) was finite
    active: jax.Array          # at least one chunk was run
    state: HierarchosState     # the carried state after the last chunk (TBPTT) / segment


class StepContext(NamedTuple):
    """What the per-micro-batch functions need besides the arrays (static, except ``ltm_lr``)."""

    graphdef: object
    rest: object
    cfg: object
    lc: LossConfig
    options: StepOptions
    ltm_lr: jax.Array | float = 0.0   # eta(s) for this update (inner-update mode)


def merged_model(ctx: StepContext, params):
    """The model for one forward under the step's config (e.g. after
    :func:`apply_full_sample_implications`) and compute dtype."""
    model = nnx.merge(ctx.graphdef, params, ctx.rest)
    model.config = ctx.cfg
    if ctx.options.compute_dtype != "float32":
        set_compute_dtype(model, ctx.options.jnp_compute_dtype)
    return model


def lm_terms(ctx: StepContext, model, out, labels, weights, mask):
    """Per-chunk components ``(lm: LMLoss, ponder, has_ponder, commit)`` [M§7]."""
    lm = chunked_lm_loss(out.hidden, model.tok_emb.embedding[...], labels, z_loss_weight=ctx.cfg.z_loss_weight,
                         loss_weights=weights, rows_per_chunk=ctx.lc.loss_rows_per_chunk,
                         compute_dtype=ctx.options.jnp_compute_dtype)
    ponder, has_ponder = ponder_cost(out, mask)
    return lm, ponder, has_ponder, commitment_cost(out, mask)


def prepare_ltm_grads(G: jax.Array, grad_clip: float) -> tuple[jax.Array, jax.Array]:
    """§5.8 steps 2-3: ``(G', finite)``: clip to ``[-g, g]`` elementwise, then scale by
    ``min(1, g / (||G||_2 + 1e-8))`` with ``g = grad_clip`` (<= 0 or invalid: 1)."""
    g = float(grad_clip) if (math.isfinite(grad_clip) and grad_clip > 0) else 1.0
    G = G.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(G))
    G = jnp.clip(G, -g, g)
    norm = jnp.sqrt(jnp.sum(jnp.square(G)))
    finite = finite & jnp.isfinite(norm)
    return G * jnp.minimum(1.0, g / (norm + 1e-8)), finite


def titans_write(cfg, memory: WorkingMemory, idx, G, lr, *, chunk_end, tokens_covered) -> WorkingMemory:
    """§5.8 step 4: the supervised write of a chunk's prepared LTM gradient."""
    return inner_update(memory, idx, G, lr, timestamp=jnp.asarray(chunk_end, jnp.float32), source=2,
                        tokens_covered=tokens_covered, reference_chunk_len=cfg.effective_reference_chunk_len,
                        momentum=cfg.ltm_momentum, weight_decay=cfg.ltm_weight_decay,
                        forget_rate=cfg.ltm_forget_rate)


def tbptt_grads(ctx: StepContext, params, ids, labels, mask, rosa, weights, warmup_step, divisor,
                state0: HierarchosState | None = None) -> MicroBatchResult:
    """TBPTT over one micro-batch ``[B, T]`` from a fresh state (or ``state0``).

    The gradient is that of ``Σ_c chunk_loss_c`` with a stop-gradient at chunk boundaries.
    Inner-update mode: after each chunk, the gradient of its loss w.r.t. the raw retrieved
    values is written into the carried working memory (§5.8).
    """
    cfg, lc, opts = ctx.cfg, ctx.lc, ctx.options
    B, T = ids.shape
    n, L = chunk_layout(T, lc.chunk_size)
    label_ratio, token_ratio = chunk_ratios(labels, mask, weights, n, L)
    xs = {"ids": _chunked(ids, n, L), "mask": _chunked(mask, n, L), "rosa": _chunked(rosa, n, L),
          "labels": _chunked(labels, n, L, IGNORE_INDEX), "weights": _chunked(weights.astype(jnp.float32), n, L, 0.0),
          "lr": label_ratio, "tr": token_ratio, "end": (jnp.arange(n, dtype=jnp.int32) + 1) * L}
    mode = RunMode.train()
    inner = opts.inner_update
    probe0 = jnp.zeros((B, L, cfg.ltm_topk, cfg.ltm_val_dim), jnp.float32) if inner else None

    def chunk_loss(p, probe, state, x):
        model = merged_model(ctx, p)
        out, new_state = forward(model, x["ids"], state, mode=mode, rosa_ids=x["rosa"], attention_mask=x["mask"],
                                 drift_seed=state.drift, warmup_step=warmup_step, retrieval_probe=probe,
                                 remat=opts.remat_tokens)
        lm, ponder, has_ponder, commit = lm_terms(ctx, model, out, x["labels"], x["weights"], x["mask"])
        loss = compose_loss(lc, lm.loss, ponder, has_ponder, commit, x["lr"], x["tr"], divisor, cfg.max_h_steps)
        finite = jnp.isfinite(lm.loss) & jnp.isfinite(ponder) & jnp.isfinite(commit) & jnp.isfinite(loss)
        m = ChunkMetrics(loss * divisor, lm.ce * x["lr"], lm.z_loss * x["lr"],
                         jnp.where(has_ponder, ponder, 0.0) * x["tr"], commit * x["tr"], finite)
        return loss, (m, new_state, out.topk_idx)

    grad_fn = jax.value_and_grad(chunk_loss, argnums=(0, 1) if inner else 0, has_aux=True)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    zero_m = ChunkMetrics(*(jnp.float32(0.0),) * 5, jnp.bool_(True))

    def body(carry, x):
        state, g_acc, m_acc, alive, any_active = carry
        active = ((x["lr"] > 0) | (x["tr"] > 0)) & alive

        def run(_):
            (_, (m, new_state, idx)), g = grad_fn(params, probe0, state, x)
            if inner:
                g, G = g
                G, ok = prepare_ltm_grads(G, opts.grad_clip)
                memory = titans_write(cfg, new_state.memory, idx, G, ctx.ltm_lr, chunk_end=x["end"],
                                      tokens_covered=jnp.float32(L))
                new_state = new_state._replace(memory=memory)
                m = m._replace(finite=m.finite & ok)
            return g, m, carry_state(cfg, new_state)

        def skip(_):
            return zero_grads, zero_m, state

        g, m, new_state = jax.lax.cond(active, run, skip, None)
        ok = m.finite
        g_acc = jax.tree.map(lambda a, b: a + b, g_acc, g)
        m_acc = ChunkMetrics(*(a + b for a, b in zip(m_acc[:5], m[:5])), m_acc.finite & ok)
        return (new_state, g_acc, m_acc, alive & ok, any_active | active), None

    state0 = zeros_state(cfg, B) if state0 is None else state0
    (state, grads, metrics, finite, any_active), _ = jax.lax.scan(
        body, (state0, zero_grads, zero_m, jnp.bool_(True), jnp.bool_(False)), xs)
    return MicroBatchResult(grads, metrics, finite, any_active, state)


def planning_ratios(mask, n: int, L: int, h_stride: int):
    """§5.4 ``ponder_ratio [n]``: the share of real planning-position tokens per segment."""
    B, T = mask.shape
    planned = (np.arange(T) % h_stride == 0).astype(np.float32)
    p = jnp.sum((mask.astype(jnp.float32) * planned).reshape(B, n, L), axis=(0, 2))
    total = jnp.sum(p)
    return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), 0.0)


def full_sample_grads(ctx: StepContext, params, ids, labels, mask, rosa, weights, warmup_step, divisor,
                      state0: HierarchosState | None = None) -> MicroBatchResult:
    """§5.7 full-sample BPTT over one micro-batch: segments of ``full_sample_segment_size``
    (each under ``jax.checkpoint``; one segment of ``T`` when ``full_sample_remat`` is off)
    carry their states attached, the components are aggregated with the chunk ratios and
    composed once with ratio 1; one gradient of the whole sample (read-only LTM).

    ``T`` need not be a multiple of the segment size: the tail is padded with masked tokens
    (numerically neutral: they come after every real token and carry no loss).
    """
    cfg, lc, opts = ctx.cfg, ctx.lc, ctx.options
    B, T = ids.shape
    S = opts.full_sample_segment_size if opts.full_sample_remat else T
    S = min(S, T)
    pad = (-T) % S
    if pad:
        padded = lambda x, fill: jnp.pad(x, ((0, 0), (0, pad)), constant_values=fill)  # noqa: E731
        ids, labels, mask = padded(ids, 0), padded(labels, IGNORE_INDEX), padded(mask, 0)
        rosa, weights = padded(rosa, cfg.vocab_size), padded(weights.astype(jnp.float32), 0.0)
    n, L = chunk_layout(T + pad, S)
    label_ratio, token_ratio = chunk_ratios(labels, mask, weights, n, L)
    ponder_ratio = planning_ratios(mask, n, L, cfg.h_stride)
    xs = {"ids": _chunked(ids, n, L), "mask": _chunked(mask, n, L), "rosa": _chunked(rosa, n, L),
          "labels": _chunked(labels, n, L, IGNORE_INDEX), "weights": _chunked(weights.astype(jnp.float32), n, L, 0.0),
          "lr": label_ratio, "tr": token_ratio, "pr": ponder_ratio}
    mode = RunMode.train()
    token_remat = opts.remat_tokens and not opts.full_sample_remat
    zero = jnp.float32(0.0)

    def segment(p, state, x):
        def run(state):
            model = merged_model(ctx, p)
            out, new_state = forward(model, x["ids"], state, mode=mode, rosa_ids=x["rosa"], attention_mask=x["mask"],
                                     drift_seed=None, warmup_step=warmup_step, remat=token_remat)
            lm, ponder, has_ponder, commit = lm_terms(ctx, model, out, x["labels"], x["weights"], x["mask"])
            return new_state, (lm.loss * x["lr"], lm.ce * x["lr"], lm.z_loss * x["lr"],
                               jnp.where(has_ponder, ponder * x["pr"], 0.0), commit * x["tr"], has_ponder)

        def skip(state):
            return state, (zero, zero, zero, zero, zero, jnp.bool_(False))

        return jax.lax.cond((x["lr"] > 0) | (x["tr"] > 0), run, skip, state)

    if opts.full_sample_remat:
        segment = jax.checkpoint(segment)

    def sample_loss(p):
        def body(state, x):
            return segment(p, state, x)

        start = zeros_state(cfg, B) if state0 is None else state0
        state, parts = jax.lax.scan(body, start, xs)
        ce_full, ce, z, ponder, commit, has_ponder = parts
        ce_full, ce, z, ponder, commit = (jnp.sum(a) for a in (ce_full, ce, z, ponder, commit))
        has_ponder = jnp.any(has_ponder)
        loss = compose_loss(lc, ce_full, ponder, has_ponder, commit, 1.0, 1.0, divisor, cfg.max_h_steps)
        finite = jnp.isfinite(ce_full) & jnp.isfinite(ponder) & jnp.isfinite(commit) & jnp.isfinite(loss)
        m = ChunkMetrics(loss * divisor, ce, z, ponder, commit, finite)
        return loss, (m, state)

    (_, (m, state)), grads = jax.value_and_grad(sample_loss, has_aux=True)(params)
    active = jnp.any((label_ratio > 0) | (token_ratio > 0))
    return MicroBatchResult(grads, m, m.finite, active, carry_state(cfg, state))


def micro_batch_grads(ctx: StepContext, params, ids, labels, mask, rosa, weights, warmup_step, divisor,
                      state0: HierarchosState | None = None) -> MicroBatchResult:
    """One micro-batch ``[B, T]``: TBPTT or full-sample BPTT per ``ctx.options``."""
    fn = full_sample_grads if ctx.options.full_sample_bptt else tbptt_grads
    return fn(ctx, params, ids, labels, mask, rosa, weights, warmup_step, divisor, state0)


# ---------------------------------------------------------------- the step

class StepMetrics(NamedTuple):
    loss: jax.Array
    ce: jax.Array
    z_loss: jax.Array
    ponder: jax.Array
    commitment: jax.Array
    grad_norm: jax.Array
    lr: jax.Array
    tokens: jax.Array
    applied: jax.Array
    ltm_lr: jax.Array    # the LTM inner-update LR used by this step's writes (0 in read-only mode)


def window_grads(ctx: StepContext, params, batch: Batch, divisor):
    """Accumulate over the ``A`` micro-batches of a window (§5.9). A micro-batch with a
    non-finite loss discards the window's gradients so far (as the reference)."""
    zero_grads = jax.tree.map(jnp.zeros_like, params)

    def body(carry, mb):
        g_acc, has, m_sum, n_real, n_bad = carry
        ids, labels, mask, rosa, weights, warm = mb
        r = micro_batch_grads(ctx, params, ids, labels, mask, rosa, weights, warm, divisor)
        bad = r.active & ~r.finite
        g_acc = jax.tree.map(lambda a, b: jnp.where(bad, jnp.zeros_like(a), a + jnp.where(r.active, b, 0.0)),
                             g_acc, r.grads)
        has = jnp.where(bad, False, has | r.active)
        good = r.active & r.finite
        m_sum = jax.tree.map(lambda s, v: s + jnp.where(good, v, 0.0), m_sum, tuple(r.metrics[:5]))
        return (g_acc, has, m_sum, n_real + good.astype(jnp.float32), n_bad + bad.astype(jnp.int32)), None

    m0 = (jnp.float32(0.0),) * 5
    (grads, has, m_sum, n_real, n_bad), _ = jax.lax.scan(
        body, (zero_grads, jnp.bool_(False), m0, jnp.float32(0.0), jnp.int32(0)), tuple(batch))
    m_mean = tuple(s / jnp.maximum(n_real, 1.0) for s in m_sum)
    return grads, has, m_mean, n_bad


class GuardedUpdate(NamedTuple):
    params: Any
    opt_state: Any
    ok: jax.Array          # the update was applied
    skipped: jax.Array     # an update was due but skipped (non-finite gradient or a non-finite batch)
    grad_norm: jax.Array


def guarded_update(tx, grads, has, n_bad, opt_state, params) -> GuardedUpdate:
    """Apply ``tx`` to ``params`` only when the window had gradients (``has``) and their global
    norm is finite (§5.10 step 2); otherwise params and optimizer state stay as they were."""
    gnorm = global_norm(grads)
    ok = has & jnp.isfinite(gnorm)
    safe_grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
    updates, new_opt = tx.update(safe_grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, params)
    opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_opt, opt_state)
    return GuardedUpdate(params, opt_state, ok, (has & ~ok) | (n_bad > 0), gnorm)


def train_step(graphdef, rest, cfg, lc: LossConfig, tx, schedule, options: StepOptions, params, opt_state,
               counters: Counters, batch: Batch, divisor):
    """One optimizer update over a window (pure; see :class:`TrainStep` for the jitted form)."""
    ltm_lr = options.ltm_schedule()(counters.ltm_steps) if options.inner_update else jnp.float32(0.0)
    ctx = StepContext(graphdef, rest, cfg, lc, options, ltm_lr)
    grads, has, (loss, ce, z, ponder, commit), n_bad = window_grads(ctx, params, batch, divisor)
    lr = schedule(counters.updates)
    params, opt_state, ok, skipped, gnorm = guarded_update(tx, grads, has, n_bad, opt_state, params)
    ltm_steps = counters.ltm_steps
    if options.inner_update and not options.disable_ltm_lr_schedule:
        ltm_steps = jnp.where(ok, jnp.minimum(ltm_steps + 1, max(1, options.ltm_total_steps)), ltm_steps)
    counters = Counters(counters.updates + ok.astype(jnp.int32), counters.skipped + skipped.astype(jnp.int32),
                        counters.nonfinite_batches + n_bad, ltm_steps)
    tokens = jnp.sum(batch.attention_mask.astype(jnp.float32))
    return params, opt_state, counters, StepMetrics(loss, ce, z, ponder, commit, gnorm, lr, tokens, ok, ltm_lr)


class TrainStep:
    """``params, opt_state, counters, metrics = step(params, opt_state, counters, batch, divisor)``
    under one ``jax.jit`` with ``params`` and ``opt_state`` donated."""

    def __init__(self, graphdef, rest, model_config, loss_config: LossConfig, tx, schedule,
                 options: StepOptions = StepOptions()):
        if options.full_sample_bptt and options.inner_update:
            raise ValueError("full-sample BPTT trains the LTM read-only: apply apply_full_sample_implications() "
                             "to the config and options first")
        fn = functools.partial(train_step, graphdef, rest, model_config, loss_config, tx, schedule, options)
        self.options = options
        self._jit = jax.jit(fn, donate_argnums=(0, 1))

    def __call__(self, params, opt_state, counters: Counters, batch: Batch, divisor=None):
        if divisor is None:
            divisor = batch.input_ids.shape[0]
        counters = Counters(*(jnp.asarray(c, jnp.int32) for c in counters))
        return self._jit(params, opt_state, counters, batch, jnp.float32(divisor))


# ---------------------------------------------------------------- host-side batch prep

def pad_to_chunks(x: np.ndarray, L: int, fill) -> np.ndarray:
    """Right-pad the time axis of ``[..., T]`` to a multiple of ``L`` (§5.3 step 2)."""
    T = x.shape[-1]
    if L <= 0 or T % L == 0:
        return x
    pad = L - T % L
    widths = [(0, 0)] * (x.ndim - 1) + [(0, pad)]
    return np.pad(x, widths, constant_values=fill)


def make_batch(input_ids, labels, attention_mask, vocab_size: int, *, chunk_size: int, warmup_step=0.0,
               loss_weights=None, use_rosa: bool = True, rosa_ids=None) -> Batch:
    """Stack host micro-batches ``[A, B, T]`` (or one ``[B, T]``) into a :class:`Batch`:
    padded to a multiple of the chunk size, ROSA ids computed per row on its real tokens
    (or taken from ``rosa_ids``, same shape as ``input_ids``, when the data pipeline
    precomputed them; padding gets the sentinel ``vocab_size``)."""
    ids = np.asarray(input_ids)
    if ids.ndim == 2:
        ids, labels, attention_mask = ids[None], np.asarray(labels)[None], np.asarray(attention_mask)[None]
        loss_weights = None if loss_weights is None else np.asarray(loss_weights)[None]
        rosa_ids = None if rosa_ids is None else np.asarray(rosa_ids)[None]
    if rosa_ids is not None and np.shape(rosa_ids) != ids.shape:
        raise ValueError(f"rosa_ids have shape {np.shape(rosa_ids)}, input_ids {ids.shape}")
    labels = np.asarray(labels)
    mask = np.asarray(attention_mask)
    weights = np.ones(ids.shape, np.float32) if loss_weights is None else np.asarray(loss_weights, np.float32)
    ids = pad_to_chunks(ids, chunk_size, 0)
    labels = pad_to_chunks(labels, chunk_size, IGNORE_INDEX)
    mask = pad_to_chunks(mask, chunk_size, 0)
    weights = pad_to_chunks(weights, chunk_size, 0.0)
    if rosa_ids is not None:
        rosa = pad_to_chunks(np.asarray(rosa_ids), chunk_size, vocab_size)
    elif use_rosa:
        rosa = np.stack([rosa_lib.rosa_ids_for_padded(ids[a], attention_mask=mask[a], vocab_size=vocab_size)
                         for a in range(ids.shape[0])])
    else:
        rosa = np.full(ids.shape, vocab_size, np.int64)
    warm = np.broadcast_to(np.asarray(warmup_step, np.float32), (ids.shape[0],))
    return Batch(jnp.asarray(ids, jnp.int32), jnp.asarray(labels, jnp.int32), jnp.asarray(mask, jnp.int32),
                 jnp.asarray(rosa, jnp.int32), jnp.asarray(weights, jnp.float32), jnp.asarray(warm))
