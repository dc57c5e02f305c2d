"""Train-step options (spec training.md §5.7, §5.8, §5.11, §6.3): the Titans inner update
against a NumPy oracle, read-only memory, remat on/off, full-sample BPTT against the
unsegmented gradient, bf16 compute, the LTM LR schedule and the option plumbing.

Compilation dominates the runtime, so the model is small (no ROSA/DeepEmbed, 2 ponder
steps, 1 worker step) and one direct (unsegmented, no-remat) loss function serves as the
oracle of several tests: its probe gradient is the inner update's signal, its parameter
gradient is the remat-off / unsegmented reference. The ponder weight is 0.5 (not 0.01) so
that a wrong ponder aggregation would show in the losses compared.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos, forward
from hierarchos_jax.model.losses import chunked_lm_loss, commitment_cost, ponder_cost
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.state import zeros_state
from hierarchos_jax.train.optimizer import OptimConfig, make_ltm_schedule, make_optimizer
from hierarchos_jax.train.step import (
    LossConfig,
    StepContext,
    StepOptions,
    TrainStep,
    apply_full_sample_implications,
    compose_loss,
    full_sample_grads,
    make_batch,
    normalize_ltm_training_mode,
    prepare_ltm_grads,
    tbptt_grads,
    train_step,
    zero_counters,
)

V, B, T, L = 16, 2, 12, 6
LTM_LR, CLIP = 50.0, 0.005
# Test-only: cheaper XLA codegen (same HLO, same float semantics); compile time dominates.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn):
    return jax.jit(fn, compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def setup():
    cfg = HierarchosConfig.from_preset("tiny").replace(vocab_size=V, use_rosa=False, use_deepembed=False,
                                                        max_h_steps=2, max_l_steps=1)
    graphdef, params, rest = nnx.split(Hierarchos(cfg, rngs=nnx.Rngs(5)), nnx.Param, ...)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, V, (B, T)).astype(np.int32)
    labels = ids.copy()
    labels[0, :2] = -100
    mask = np.ones((B, T), np.int32)
    mask[1, 10:] = 0
    labels[1, 10:] = -100
    real = make_batch(ids, labels, mask, V, chunk_size=L, use_rosa=False)
    # the same rows with the second chunk all padding: TBPTT runs (and writes) chunk 1 only
    pad_mask = mask.copy()
    pad_mask[:, L:] = 0
    pad_labels = np.where(pad_mask > 0, labels, -100)
    padded = make_batch(ids, pad_labels, pad_mask, V, chunk_size=L, use_rosa=False)
    return dict(cfg=cfg, graphdef=graphdef, params=params, rest=rest, lc=LossConfig(chunk_size=L, ponder_loss_weight=0.5),
                real=real, padded=padded)


def _row(batch):
    return (batch.input_ids[0], batch.labels[0], batch.attention_mask[0], batch.rosa_ids[0],
            batch.loss_weights[0], batch.warmup_step[0])


@pytest.fixture(scope="module")
def direct(setup):
    """The unsegmented objective of one micro-batch (ratio 1, divisor 1) without remat:
    ``(loss, d/dparams, d/dprobe = G, d/dfast, topk_idx)``."""
    s = setup
    cfg = s["cfg"]

    def loss_fn(params, probe, fast, ids, labels, mask, rosa, weights, warm):
        model = nnx.merge(s["graphdef"], params, s["rest"])
        state = zeros_state(cfg, B)
        state = state._replace(memory=state.memory._replace(fast=fast))
        out, _ = forward(model, ids, state, mode=RunMode.train(), rosa_ids=rosa, attention_mask=mask,
                         warmup_step=warm, retrieval_probe=probe, remat=False)
        lm = chunked_lm_loss(out.hidden, model.tok_emb.embedding[...], labels, z_loss_weight=cfg.z_loss_weight,
                             loss_weights=weights)
        ponder, has_ponder = ponder_cost(out, mask)
        loss = compose_loss(s["lc"], lm.loss, ponder, has_ponder, commitment_cost(out, mask), 1.0, 1.0, 1.0,
                            cfg.max_h_steps)
        return loss, out.topk_idx

    probe = jnp.zeros((B, T, cfg.ltm_topk, cfg.ltm_val_dim), jnp.float32)
    fast = jnp.zeros((B, cfg.ltm_slots, cfg.ltm_val_dim), jnp.float32)
    grad = _jit(lambda p, *xs: jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(p, probe, fast, *xs))

    def run(batch):
        with jax.default_matmul_precision("highest"):
            (loss, idx), (gp, gprobe, gfast) = grad(s["params"], *_row(batch))
        return dict(loss=loss, grads=gp, G=np.asarray(gprobe), gfast=np.asarray(gfast), idx=np.asarray(idx))

    return run


def _ctx(s, **opts):
    options = StepOptions(**opts)
    lr = options.ltm_schedule()(0) if options.inner_update else 0.0
    return StepContext(s["graphdef"], s["rest"], s["cfg"], s["lc"], options, lr)


def _close_trees(a, b, rtol, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def inner(setup):
    ctx = _ctx(setup, ltm_training_mode="inner-update", ltm_lr=LTM_LR, min_ltm_lr=0.0, ltm_total_steps=4,
               grad_clip=CLIP)
    fn = _jit(lambda p, *xs: tbptt_grads(ctx, p, *xs, 1.0))

    def run(batch):
        with jax.default_matmul_precision("highest"):
            return fn(setup["params"], *_row(batch))

    return run


@pytest.fixture(scope="module")
def read_only(setup):
    """Read-only TBPTT without per-token remat (``remat_tokens=False``)."""
    fn = _jit(lambda p, *xs: tbptt_grads(_ctx(setup, remat_tokens=False), p, *xs, 1.0))

    def run(batch):
        with jax.default_matmul_precision("highest"):
            return fn(setup["params"], *_row(batch))

    return run


def _oracle_update(cfg, G, idx, *, clip, lr, timestamp, tokens):
    """NumPy §5.8 steps 3-4 on a fresh per-row memory."""
    G = np.clip(G.astype(np.float64), -clip, clip)
    G = G * min(1.0, clip / (np.sqrt(np.sum(G * G)) + 1e-8))
    S, D = cfg.ltm_slots, cfg.ltm_val_dim
    fast, mom = np.zeros((B, S, D)), np.zeros((B, S, D))
    ts, src = np.zeros((B, S)), np.zeros((B, S), np.int64)
    retention = (1.0 - cfg.ltm_forget_rate) ** (tokens / cfg.effective_reference_chunk_len)
    for b in range(B):
        sums, counts = np.zeros((S, D)), np.zeros(S)
        for i, g in zip(idx[b].reshape(-1), G[b].reshape(-1, D)):
            if i >= 0:
                sums[i] += g
                counts[i] += 1
        for slot in range(S):
            if counts[slot]:
                mom[b, slot] = np.clip(cfg.ltm_momentum * mom[b, slot] + sums[slot] / counts[slot], -50, 50)
                fast[b, slot] = np.clip(retention * fast[b, slot]
                                        - lr * (mom[b, slot] + cfg.ltm_weight_decay * fast[b, slot]), -50, 50)
                ts[b, slot], src[b, slot] = timestamp, 2
            else:
                fast[b, slot] *= retention
    return fast, mom, ts, src


# ---------------------------------------------------------------- inner update (§5.8)

def test_inner_update_matches_numpy_oracle(setup, direct, inner):
    cfg = setup["cfg"]
    ref = direct(setup["padded"])
    G, idx = ref["G"][:, :L], ref["idx"][:, :L]
    assert np.all(ref["G"][:, L:] == 0)  # padding after the chunk gets no signal
    # G is the gradient w.r.t. the retrieved values: scattered to slots it is d/dfast
    scattered = np.zeros_like(ref["gfast"])
    for b in range(B):
        np.add.at(scattered[b], idx[b].reshape(-1), G[b].reshape(-1, cfg.ltm_val_dim))
    np.testing.assert_allclose(scattered, ref["gfast"], rtol=1e-5, atol=1e-9)
    assert np.abs(G).max() > CLIP  # the elementwise clip and the norm scale are both exercised

    r = inner(setup["padded"])
    fast, mom, ts, src = _oracle_update(cfg, G, idx, clip=CLIP, lr=LTM_LR, timestamp=L, tokens=L)
    mem = r.state.memory
    np.testing.assert_allclose(np.asarray(mem.fast), fast, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(mem.mom), mom, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(mem.timestamps), ts)
    np.testing.assert_array_equal(np.asarray(mem.sources), src)
    assert np.abs(fast).max() > 1e-3
    # the write follows the chunk's backward: its parameter gradient is unchanged
    assert bool(r.finite) and bool(r.active)
    np.testing.assert_allclose(float(r.metrics.loss), float(ref["loss"]), rtol=1e-6)
    _close_trees(r.grads, ref["grads"], rtol=2e-4, atol=1e-7)


def test_inner_update_memory_reaches_later_chunks_only(setup, inner, read_only):
    r, ro = inner(setup["real"]), read_only(setup["real"])
    ts = np.asarray(r.state.memory.timestamps)
    assert set(np.unique(ts)) <= {0.0, float(L), float(T)} and float(T) in ts
    assert np.all(np.asarray(r.state.memory.sources)[ts > 0] == 2)
    # read-only: the working memory is never written
    assert bool(ro.finite) and bool(ro.active)
    for a in ro.state.memory:
        assert not np.any(np.asarray(a))
    # chunk 1 is identical in both modes (below); chunk 2 reads chunk 1's write
    assert abs(float(r.metrics.loss) - float(ro.metrics.loss)) > 1e-5
    one, ro_one = inner(setup["padded"]), read_only(setup["padded"])
    assert float(one.metrics.loss) == pytest.approx(float(ro_one.metrics.loss), rel=1e-6)


def test_prepare_ltm_grads_clips_then_scales_and_flags_nonfinite():
    G = jnp.asarray([[3.0, -0.5], [0.2, -4.0]])
    out, ok = prepare_ltm_grads(G, 1.0)
    clipped = np.asarray([[1.0, -0.5], [0.2, -1.0]])
    np.testing.assert_allclose(np.asarray(out), clipped / (np.linalg.norm(clipped) + 1e-8), rtol=1e-6)
    assert bool(ok)
    small = jnp.asarray([0.1, -0.2])
    out, _ = prepare_ltm_grads(small, 0.0)  # <= 0 -> 1.0: nothing to clip
    np.testing.assert_allclose(np.asarray(out), np.asarray(small))
    _, ok = prepare_ltm_grads(jnp.asarray([1.0, jnp.nan]), 1.0)
    assert not bool(ok)


# ---------------------------------------------------------------- remat / full sample

def test_remat_off_gives_the_same_gradients(setup, direct, inner, read_only):
    """Per-token remat on (inner fixture) and off (read-only fixture, ``remat_tokens=False``)
    over two chunks: equal gradients; chunk 1 equals the direct oracle (no remat)."""
    with_remat, without = inner(setup["padded"]), read_only(setup["padded"])
    _close_trees(without.grads, with_remat.grads, rtol=1e-5, atol=1e-8)
    _close_trees(without.grads, direct(setup["padded"])["grads"], rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("segment", [4, 5])
def test_full_sample_gradients_equal_unsegmented(setup, direct, segment):
    s = setup
    cfg, opts = apply_full_sample_implications(s["cfg"], StepOptions(full_sample_bptt=True,
                                                                     full_sample_segment_size=segment))
    ctx = StepContext(s["graphdef"], s["rest"], cfg, s["lc"], opts)
    fn = _jit(lambda p, *xs: full_sample_grads(ctx, p, *xs, 1.0))
    with jax.default_matmul_precision("highest"):
        r = fn(s["params"], *_row(s["real"]))
    ref = direct(s["real"])
    assert bool(r.finite)
    np.testing.assert_allclose(float(r.metrics.loss), float(ref["loss"]), rtol=1e-6)
    _close_trees(r.grads, ref["grads"], rtol=2e-4, atol=1e-7)
    for a in r.state.memory:  # read-only
        assert not np.any(np.asarray(a))


# ---------------------------------------------------------------- bf16 + the jitted step

def test_bf16_step_close_to_fp32_with_fp32_masters(setup, direct):
    s = setup
    opts = StepOptions(compute_dtype="bfloat16", ltm_training_mode="inner-update", ltm_lr=1e-3, min_ltm_lr=1e-5,
                       ltm_total_steps=3)
    tx, schedule = make_optimizer(OptimConfig(starting_lr=1e-3, total_updates=3), s["params"], s["cfg"])
    # TrainStep's function, jitted here with the cheaper codegen
    step = _jit(functools.partial(train_step, s["graphdef"], s["rest"], s["cfg"], s["lc"], tx, schedule, opts))
    new_params, opt_state, counters, m = step(s["params"], tx.init(s["params"]), zero_counters(), s["padded"],
                                              jnp.float32(1.0))
    fp32 = float(direct(s["padded"])["loss"])
    assert abs(float(m.loss) - fp32) < 2e-2 * fp32, (float(m.loss), fp32)
    assert bool(m.applied) and math.isfinite(float(m.grad_norm)) and float(m.grad_norm) > 0
    for leaf in jax.tree.leaves(new_params) + [x for x in jax.tree.leaves(opt_state) if x.ndim > 0]:
        assert leaf.dtype == jnp.float32
    assert int(counters.updates) == 1 and int(counters.ltm_steps) == 1
    assert float(m.ltm_lr) == pytest.approx(1e-3)


# ---------------------------------------------------------------- plumbing

def test_ltm_schedule_cosine_saturates_and_disables():
    f = make_ltm_schedule(1e-3, 1e-5, 4)
    got = [float(f(i)) for i in range(7)]
    want = [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * min(i, 4) / 4)) for i in range(7)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(make_ltm_schedule(-1.0, 0.0, 4)(0)) == pytest.approx(1e-3)  # invalid peak -> 1e-3
    assert float(make_ltm_schedule(1e-3, 5.0, 4)(2)) == pytest.approx(1e-3)  # floor clipped to the peak
    assert float(make_ltm_schedule(1e-3, 1e-5, 4, disabled=True)(3)) == pytest.approx(1e-3)


def test_ltm_training_mode_aliases():
    for s in ("inner-update", "Inner", "gradient", "GRAD", "titans", "titans_inner_update", "whatever"):
        assert normalize_ltm_training_mode(s) == "inner-update"
    for s in ("read-only", "READ_ONLY", "readonly", "inference", "inference_like", "off", "None"):
        assert normalize_ltm_training_mode(s) == "read-only"
    assert StepOptions(ltm_training_mode="Titans").ltm_training_mode == "inner-update"
    with pytest.raises(ValueError, match="compute_dtype"):
        StepOptions(compute_dtype="float16")
    with pytest.raises(ValueError, match="segment"):
        StepOptions(full_sample_segment_size=0)


def test_full_sample_implications(setup):
    cfg, opts = apply_full_sample_implications(setup["cfg"], StepOptions(full_sample_bptt=True,
                                                                         ltm_training_mode="inner-update"))
    assert cfg.detach_every_n_steps is None and cfg.inference_logit_parity and cfg.full_sample_bptt
    assert opts.ltm_training_mode == "read-only" and opts.full_sample_bptt
    assert not opts.remat_tokens  # segments are rematerialised, so tokens inside them are not
    _, plain = apply_full_sample_implications(setup["cfg"], StepOptions(full_sample_bptt=True, full_sample_remat=False))
    assert plain.remat_tokens
    same = apply_full_sample_implications(setup["cfg"], StepOptions(ltm_training_mode="inner-update"))
    assert same[0] is setup["cfg"] and same[1].inner_update
    with pytest.raises(ValueError, match="apply_full_sample_implications"):
        TrainStep(setup["graphdef"], setup["rest"], setup["cfg"], setup["lc"], optax.sgd(1.0), lambda u: 1.0,
                  StepOptions(full_sample_bptt=True, ltm_training_mode="inner-update"))


def test_make_batch_uses_precomputed_rosa_ids():
    ids = np.asarray([[3, 4, 5, 6, 7]], np.int32)
    rosa = np.asarray([[9, 2, 1, 0, 9]], np.int32)
    b = make_batch(ids, ids, np.ones_like(ids), 10, chunk_size=4, rosa_ids=rosa)
    np.testing.assert_array_equal(np.asarray(b.rosa_ids), [[[9, 2, 1, 0, 9, 10, 10, 10]]])
    with pytest.raises(ValueError, match="rosa_ids"):
        make_batch(ids, ids, np.ones_like(ids), 10, chunk_size=4, rosa_ids=rosa[:, :3])
