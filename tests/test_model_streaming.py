"""Streaming / chunking equivalences of the whole model (spec §6.9, §10 items 3–5).

A call over T tokens must equal any chunking of it when every call gets the previous
call's state (incl. ROSA history, carried by :class:`Runner`), the right position and no
drift seed; a seed at a chunk start changes the result; the stride phase follows the
absolute position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner

# tiny preset with stride 4 (shared by test_model_loops.py so compiled programs are reused)
CFG = HierarchosConfig.from_preset("tiny").replace(h_stride=4)
B, T = 2, 11
C, V = CFG.context_dim, CFG.vocab_size
CHUNKS = [(0, 3), (3, 4), (4, 11)]
EVAL = RunMode.eval(logit_parity=False)
TRAIN = RunMode.train()


def perturbed_model(seed: int = 0) -> Hierarchos:
    """Init model with the zero-initialised pieces made non-trivial (ROSA table, routers,
    low-rank first matrices, channel-mix shift, DeepEmbed tables)."""
    model = Hierarchos(CFG, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 1000)

    def setp(var, arr):
        var.set_value(jnp.asarray(np.asarray(arr, np.float32)))

    setp(model.rosa_emb.embedding, rng.normal(0, 0.5, (V + 1, C)))
    setp(model.rosa_router.kernel, rng.normal(0, 0.2, (C, 1)))
    setp(model.ltm_router.kernel, rng.normal(0, 0.2, (C, 1)))
    for cell in (model.h_rnn, model.l_rnn):
        for name in ("w1", "a1", "g1"):
            var = getattr(cell, name)
            setp(var, rng.normal(0, 0.2, var[...].shape))
        setp(cell.x_k_cm, rng.uniform(0, 0.8, cell.width))
    setp(model.h_deepemb.embedding, rng.normal(1, 0.3, model.h_deepemb.embedding[...].shape))
    setp(model.l_deepemb.embedding, rng.normal(1, 0.3, model.l_deepemb.embedding[...].shape))
    return model


def initial_memory(seed: int = 0) -> WorkingMemory:
    rng = np.random.default_rng(seed + 2000)
    S, D = CFG.ltm_slots, CFG.ltm_val_dim
    return WorkingMemory(jnp.asarray(rng.normal(0, 0.05, (B, S, D)).astype(np.float32)),
                         jnp.asarray(rng.normal(0, 0.05, (B, S, D)).astype(np.float32)),
                         jnp.asarray(rng.integers(0, 4, (B, S)).astype(np.float32)),
                         jnp.asarray(rng.integers(0, 3, (B, S)).astype(np.int32)))


def token_ids(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 3000)
    return rng.choice([3, 7, 11, 42, 99], size=(B, T)).astype(np.int64)  # repeats: ROSA predicts


def run_chunks(runner, ids, carry, mode, chunks, seeds=None):
    parts, logits, rosa = [], [], []
    for i, (s, e) in enumerate(chunks):
        seed = None if seeds is None else seeds(i, carry)
        res, carry = runner(ids[:, s:e], carry, mode=mode, drift_seed=seed, position=s)
        parts.append(res.outputs)
        logits.append(np.asarray(res.logits))
        rosa.append(np.asarray(res.rosa_ids))
    outs = {}
    for name in parts[0]._fields:
        axis = 0 if np.asarray(getattr(parts[0], name)).ndim == 1 else 1
        outs[name] = np.concatenate([np.asarray(getattr(p, name)) for p in parts], axis=axis)
    return outs, np.concatenate(logits, 1), np.concatenate(rosa, 1), carry


def state_arrays(carry):
    st = carry.state
    return {"h": st.h_state, "l": st.l_state, "prev": st.prev_context, "target": st.target_context, "drift": st.drift,
                "fast": st.memory.fast, "mom": st.memory.mom, "ts": st.memory.timestamps, "src": st.memory.sources,
                "pos": st.position}


def assert_runs_equal(a, b, tol=2e-5):
    outs_a, logits_a, rosa_a, carry_a = a
    outs_b, logits_b, rosa_b, carry_b = b
    np.testing.assert_array_equal(rosa_a, rosa_b)
    for name in ("topk_idx", "planned", "ponder_steps", "worker_steps"):
        np.testing.assert_array_equal(outs_a[name], outs_b[name], err_msg=name)
    for name in ("hidden", "topk_vals", "ponder_cost", "commitment"):
        np.testing.assert_allclose(outs_a[name], outs_b[name], rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(logits_a, logits_b, rtol=tol, atol=tol)
    sa, sb = state_arrays(carry_a), state_arrays(carry_b)
    for name in sa:
        np.testing.assert_allclose(np.asarray(sa[name]), np.asarray(sb[name]), rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_array_equal(carry_a.rosa.past_tokens, carry_b.rosa.past_tokens)


@pytest.fixture(scope="module")
def runner():
    return Runner(perturbed_model(0))


@pytest.fixture(scope="module")
def ids():
    return token_ids(0)


def fresh(runner):
    return runner.init_carry(B, memory=initial_memory(0))


@pytest.fixture(scope="module")
def eval_runs(runner, ids):
    with jax.default_matmul_precision("highest"):
        full = run_chunks(runner, ids, fresh(runner), EVAL, [(0, T)])
        chunked = run_chunks(runner, ids, fresh(runner), EVAL, CHUNKS)
        single = run_chunks(runner, ids, fresh(runner), EVAL, [(t, t + 1) for t in range(T)])
    return full, chunked, single


@pytest.mark.parametrize("which", ["chunked", "single"])
def test_eval_chunking_equivalence(eval_runs, which):
    full, chunked, single = eval_runs
    other = chunked if which == "chunked" else single
    assert_runs_equal(full, other)


def test_full_run_sanity(eval_runs, ids):
    outs, logits, rosa, carry = eval_runs[0]
    assert logits.shape == (B, T, V) and np.all(np.isfinite(logits))
    np.testing.assert_array_equal(outs["planned"], [(t % 4) == 0 for t in range(T)])
    assert outs["worker_steps"].shape == (T,) and outs["ponder_steps"].shape == (T,)
    assert np.all(outs["ponder_steps"][~outs["planned"]] == -1)
    assert np.all(outs["ponder_cost"][:, ~outs["planned"]] == 0.0)
    assert np.all(outs["ponder_cost"][:, outs["planned"]] >= 1.0)
    assert np.all(outs["commitment"] == 0.0)  # legacy eval (mode E) has no commitment cost
    assert int(carry.state.position) == T
    assert np.any(rosa != V)  # the repeated tokens give real ROSA predictions
    np.testing.assert_array_equal(carry.rosa.past_tokens, ids)


def test_train_chunking_equivalence(runner, ids):
    with jax.default_matmul_precision("highest"):
        full = run_chunks(runner, ids, fresh(runner), TRAIN, [(0, T)])
        chunked = run_chunks(runner, ids, fresh(runner), TRAIN, CHUNKS)
        single = run_chunks(runner, ids, fresh(runner), TRAIN, [(t, t + 1) for t in range(T)])
    assert np.any(full[0]["commitment"] > 0.0)
    assert_runs_equal(full, chunked)
    assert_runs_equal(full, single)


# ----------------------------------------------------------------------------- drift seed
@pytest.fixture(scope="module")
def at3(runner, ids):
    """Carry after the first chunk [0, 3) and the unseeded result of token 3."""
    with jax.default_matmul_precision("highest"):
        _, _, _, carry3 = run_chunks(runner, ids, fresh(runner), EVAL, [(0, 3)])
        res, carry4 = runner(ids[:, 3:4], carry3, mode=EVAL, position=3)
    return carry3, res, carry4


def seeded(runner, ids, carry3, seed):
    with jax.default_matmul_precision("highest"):
        return runner(ids[:, 3:4], carry3, mode=EVAL, position=3, drift_seed=seed)


def test_carried_drift_seed_changes_the_result(runner, ids, at3):
    carry3, res, _ = at3
    drift = np.asarray(carry3.state.drift)
    assert np.max(np.abs(drift)) > 1e-3
    res_s, _carry_s = seeded(runner, ids, carry3, drift)
    assert np.max(np.abs(np.asarray(res_s.logits) - np.asarray(res.logits))) > 1e-4
    # ... and so does a zero seed (a real seed, not "None")
    res_0, _ = seeded(runner, ids, carry3, np.zeros((B, C), np.float32))
    assert np.max(np.abs(np.asarray(res_0.logits) - np.asarray(res.logits))) > 1e-4
    assert np.max(np.abs(np.asarray(res_0.logits) - np.asarray(res_s.logits))) > 1e-4


def test_seed_replaces_the_derived_initial_drift(runner, ids, at3):
    """Seeding with exactly the drift the model would derive (dc(tanh(drift_proj(slot 0))))
    reproduces the unseeded call: the seed replaces d0, it is not added to it."""
    carry3, res, carry4 = at3
    l0 = np.asarray(carry3.state.l_state)[:, :, 0].astype(np.float64)
    kernel = np.asarray(runner.model.context_drift_proj.kernel[...], np.float64)
    derived = np.clip(np.tanh(l0 @ kernel), -CFG.drift_state_clamp, CFG.drift_state_clamp).astype(np.float32)
    res_d, carry_d = seeded(runner, ids, carry3, derived)
    np.testing.assert_allclose(np.asarray(res_d.logits), np.asarray(res.logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(carry_d.state.l_state), np.asarray(carry4.state.l_state),
                               rtol=1e-5, atol=1e-5)


def test_seed_of_wrong_shape_is_ignored(runner, ids, at3):
    carry3, res, _ = at3
    wrong = np.full((B + 1, C), 0.7, np.float32)  # [3, C] with B = 2
    res_w, _carry_w = seeded(runner, ids, carry3, wrong)
    np.testing.assert_allclose(np.asarray(res_w.logits), np.asarray(res.logits), rtol=1e-6, atol=1e-6)


def test_broadcast_seed_shape_1C(runner, ids, at3):
    """A [1, C] seed is broadcast to every row (a [C] seed too; one shape is checked here
    to keep the compile count down -- both take the same code path)."""
    carry3, res, _ = at3
    row = np.asarray(carry3.state.drift)[0]
    res_b, _ = seeded(runner, ids, carry3, np.broadcast_to(row, (B, C)).copy())
    assert np.max(np.abs(np.asarray(res_b.logits) - np.asarray(res.logits))) > 1e-4
    res_s, _ = seeded(runner, ids, carry3, row[None, :])
    np.testing.assert_allclose(np.asarray(res_s.logits), np.asarray(res_b.logits), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- stride phase
@pytest.fixture(scope="module")
def stride_setup(ids):
    """A model whose LTM query ignores prev_context (qproj's context half zeroed), so the
    contexts reach a token only through the interpolated worker context."""
    model = perturbed_model(0)
    q = np.asarray(model.qproj.kernel[...]).copy()
    q[C:] = 0.0
    model.qproj.kernel.set_value(jnp.asarray(q))
    runner = Runner(model)
    with jax.default_matmul_precision("highest"):
        _, _, _, carry3 = run_chunks(runner, ids, fresh(runner), EVAL, [(0, 3)])
        _, _, _, carry4 = run_chunks(runner, ids, carry3, EVAL, [(3, 4)])
    return runner, carry3, carry4


def _with_contexts(carry, prev, target):
    st = carry.state._replace(prev_context=jnp.asarray(prev, jnp.float32),
                              target_context=jnp.asarray(target, jnp.float32))
    return carry._replace(state=st)


def _call(runner, ids, carry, pos):
    with jax.default_matmul_precision("highest"):
        res, new = runner(ids[:, pos:pos + 1], carry, mode=EVAL, position=pos)
    return np.asarray(res.logits), res.outputs, new


def test_stride_phase_offset_3_uses_carried_contexts_with_alpha_three_quarters(stride_setup, ids):
    runner, carry3, _ = stride_setup
    prev = np.asarray(carry3.state.prev_context, np.float64)
    target = np.asarray(carry3.state.target_context, np.float64)
    assert np.max(np.abs(target - prev)) > 1e-2
    base, outs, new = _call(runner, ids, carry3, 3)
    assert not bool(outs.planned[0]) and int(outs.ponder_steps[0]) == -1
    np.testing.assert_array_equal(np.asarray(outs.ponder_cost), 0.0)
    # contexts carried through unchanged (no plan at position 3)
    np.testing.assert_allclose(np.asarray(new.state.prev_context), prev, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new.state.target_context), target, rtol=1e-6, atol=1e-6)
    delta = np.random.default_rng(5).normal(0, 0.5, prev.shape)
    # (prev + d, target - d/3) keeps prev + 3/4 (target - prev): same token output
    same, _, _ = _call(runner, ids, _with_contexts(carry3, prev + delta, target - delta / 3), 3)
    np.testing.assert_allclose(same, base, rtol=2e-5, atol=2e-5)
    # a shift that keeps the alpha = 1/2 interpolant does not
    half, _, _ = _call(runner, ids, _with_contexts(carry3, prev + delta, target - delta), 3)
    assert np.max(np.abs(half - base)) > 1e-4
    moved, _, _ = _call(runner, ids, _with_contexts(carry3, prev + delta, target), 3)
    assert np.max(np.abs(moved - base)) > 1e-4


def test_stride_phase_planning_token_uses_old_target(stride_setup, ids):
    runner, _, carry4 = stride_setup
    prev = np.asarray(carry4.state.prev_context, np.float64)
    target = np.asarray(carry4.state.target_context, np.float64)
    base, outs, new = _call(runner, ids, carry4, 4)
    assert bool(outs.planned[0]) and int(outs.ponder_steps[0]) >= 0
    assert np.all(np.asarray(outs.ponder_cost) >= 1.0)
    # the plan moves the old target into prev_context and makes a new target
    np.testing.assert_allclose(np.asarray(new.state.prev_context), target, rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(new.state.target_context) - target)) > 1e-3
    delta = np.random.default_rng(6).normal(0, 0.5, prev.shape)
    same, _, _ = _call(runner, ids, _with_contexts(carry4, prev + delta, target), 4)
    np.testing.assert_allclose(same, base, rtol=2e-5, atol=2e-5)  # old prev is not used
    moved, _, _ = _call(runner, ids, _with_contexts(carry4, prev, target + delta), 4)
    assert np.max(np.abs(moved - base)) > 1e-4
