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

Options (:class:`StepOptions`): LTM training mode (read-only or the Titans inner update,
§5.8), full-sample BPTT (§5.7), per-token rematerialisation, bf16 compute (§5.11).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hierarchos_jax.model import rosa as rosa_lib
from hierarchos_jax.model.hierarchos import forward
from hierarchos_jax.model.losses import IGNORE_INDEX, chunked_lm_loss, commitment_cost, ponder_cost
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.numerics import drift_clamp, finite_clamp
from hierarchos_jax.model.state import HierarchosState, zeros_state
from hierarchos_jax.train.optimizer import global_norm


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
    ponder: jax.Array      # weighted by token_ratio
    commitment: jax.Array
    finite: jax.Array


def micro_batch_grads(graphdef, params, rest, cfg, lc: LossConfig, ids, labels, mask, rosa, weights,
                      warmup_step, divisor):
    """TBPTT over one micro-batch ``[B, T]`` from a fresh state.

    Returns ``(grads, metrics: ChunkMetrics summed over chunks, finite, any_active)``;
    the gradient is that of ``Σ_c chunk_loss_c`` with a stop-gradient at chunk boundaries.
    """
    B, T = ids.shape
    n, L = chunk_layout(T, lc.chunk_size)
    label_ratio, token_ratio = chunk_ratios(labels, mask, weights, n, L)
    xs = dict(ids=_chunked(ids, n, L), mask=_chunked(mask, n, L), rosa=_chunked(rosa, n, L),
              labels=_chunked(labels, n, L, IGNORE_INDEX), weights=_chunked(weights.astype(jnp.float32), n, L, 0.0),
              lr=label_ratio, tr=token_ratio)
    mode = RunMode.train()

    def chunk_loss(p, state, x):
        model = nnx.merge(graphdef, p, rest)
        out, new_state = forward(model, x["ids"], state, mode=mode, rosa_ids=x["rosa"], attention_mask=x["mask"],
                                 drift_seed=state.drift, warmup_step=warmup_step)
        lm = chunked_lm_loss(out.hidden, model.tok_emb.embedding[...], x["labels"], z_loss_weight=cfg.z_loss_weight,
                             loss_weights=x["weights"], rows_per_chunk=lc.loss_rows_per_chunk)
        ponder, has_ponder = ponder_cost(out, x["mask"])
        commit = commitment_cost(out, x["mask"])
        loss = compose_loss(lc, lm.loss, ponder, has_ponder, commit, x["lr"], x["tr"], divisor, cfg.max_h_steps)
        finite = jnp.isfinite(lm.loss) & jnp.isfinite(ponder) & jnp.isfinite(commit) & jnp.isfinite(loss)
        m = ChunkMetrics(loss * divisor, lm.ce * x["lr"], lm.z_loss * x["lr"],
                         jnp.where(has_ponder, ponder, 0.0) * x["tr"], commit * x["tr"], finite)
        return loss, (m, new_state)

    grad_fn = jax.value_and_grad(chunk_loss, has_aux=True)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    zero_m = ChunkMetrics(*(jnp.float32(0.0),) * 5, jnp.bool_(True))

    def body(carry, x):
        state, g_acc, m_acc, alive, any_active = carry
        active = ((x["lr"] > 0) | (x["tr"] > 0)) & alive

        def run(_):
            (_, (m, new_state)), g = grad_fn(params, state, x)
            return g, m, carry_state(cfg, new_state)

        def skip(_):
            return zero_grads, zero_m, state

        g, m, new_state = jax.lax.cond(active, run, skip, None)
        ok = m.finite
        g_acc = jax.tree.map(lambda a, b: a + b, g_acc, g)
        m_acc = ChunkMetrics(*(a + b for a, b in zip(m_acc[:5], m[:5])), m_acc.finite & ok)
        return (new_state, g_acc, m_acc, alive & ok, any_active | active), None

    state0 = zeros_state(cfg, B)
    (_, grads, metrics, finite, any_active), _ = jax.lax.scan(
        body, (state0, zero_grads, zero_m, jnp.bool_(True), jnp.bool_(False)), xs)
    return grads, metrics, finite, any_active


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


def window_grads(graphdef, params, rest, cfg, lc: LossConfig, batch: Batch, divisor):
    """Accumulate over the ``A`` micro-batches of a window (§5.9). A micro-batch with a
    non-finite loss discards the window's gradients so far (as the reference)."""
    zero_grads = jax.tree.map(jnp.zeros_like, params)

    def body(carry, mb):
        g_acc, has, m_sum, n_real, n_bad = carry
        ids, labels, mask, rosa, weights, warm = mb
        g, m, finite, active = micro_batch_grads(graphdef, params, rest, cfg, lc, ids, labels, mask, rosa, weights,
                                                 warm, divisor)
        bad = active & ~finite
        g_acc = jax.tree.map(lambda a, b: jnp.where(bad, jnp.zeros_like(a), a + jnp.where(active, b, 0.0)), g_acc, g)
        has = jnp.where(bad, False, has | active)
        good = active & finite
        m_sum = jax.tree.map(lambda s, v: s + jnp.where(good, v, 0.0), m_sum, tuple(m[:5]))
        return (g_acc, has, m_sum, n_real + good.astype(jnp.float32), n_bad + bad.astype(jnp.int32)), None

    m0 = (jnp.float32(0.0),) * 5
    (grads, has, m_sum, n_real, n_bad), _ = jax.lax.scan(
        body, (zero_grads, jnp.bool_(False), m0, jnp.float32(0.0), jnp.int32(0)), tuple(batch))
    m_mean = tuple(s / jnp.maximum(n_real, 1.0) for s in m_sum)
    return grads, has, m_mean, n_bad


def train_step(graphdef, rest, cfg, lc: LossConfig, tx, schedule, params, opt_state, counters: Counters,
               batch: Batch, divisor):
    """One optimizer update over a window (pure; see :class:`TrainStep` for the jitted form)."""
    grads, has, (loss, ce, z, ponder, commit), n_bad = window_grads(graphdef, params, rest, cfg, lc, batch, divisor)
    gnorm = global_norm(grads)
    ok = has & jnp.isfinite(gnorm)
    lr = schedule(counters.updates)
    safe_grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
    updates, new_opt = tx.update(safe_grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, params)
    opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_opt, opt_state)
    skipped = (has & ~ok) | (n_bad > 0)
    counters = Counters(counters.updates + ok.astype(jnp.int32), counters.skipped + skipped.astype(jnp.int32),
                        counters.nonfinite_batches + n_bad, counters.ltm_steps)
    tokens = jnp.sum(batch.attention_mask.astype(jnp.float32))
    return params, opt_state, counters, StepMetrics(loss, ce, z, ponder, commit, gnorm, lr, tokens, ok)


class TrainStep:
    """``params, opt_state, counters, metrics = step(params, opt_state, counters, batch, divisor)``
    under one ``jax.jit`` with ``params`` and ``opt_state`` donated."""

    def __init__(self, graphdef, rest, model_config, loss_config: LossConfig, tx, schedule,
                 options: StepOptions = StepOptions()):
        if (options.inner_update or options.full_sample_bptt or not options.remat_tokens
                or options.compute_dtype != "float32"):
            raise NotImplementedError("train-step options other than read-only fp32 TBPTT are not implemented yet")
        fn = functools.partial(train_step, graphdef, rest, model_config, loss_config, tx, schedule)
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
