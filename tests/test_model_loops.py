"""Inner loops and mode switches of the whole model (spec §6.2–6.7, §9.1, §10 items 7, 8, 12).

* parity eval (``inference_logit_parity``) = the training-mode forward (gate warm-up off);
* legacy eval early exits are decided on batch means: constructed cases where one row's
  token flips the other row's worker / ACT step count and hence its values;
* a huge halt bias stops pondering at once in legacy eval, never in parity eval;
* the memory-gate warm-up floor applies in training only;
* ``detach_every_n_steps`` changes derivatives, not values;
* eval Hebbian writes change the next token's retrieval.

The weight surgery below makes the exit decisions exactly predictable from a few
parameters (see ``_enc0_model``): the encoder's channel 0 at the first token of a fresh
state is ``gelu(E[id] . w)``, computed here in NumPy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos, forward
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner
from hierarchos_jax.model.state import zeros_state

# Same config as test_model_streaming.py (compiled programs are shared within a session).
CFG = HierarchosConfig.from_preset("tiny").replace(h_stride=4)
B, T = 2, 11
C, V, P = CFG.context_dim, CFG.vocab_size, CFG.persistent_dim
EPS = CFG.l_conv_atol
LEGACY = RunMode.eval(logit_parity=False)
PARITY = RunMode.eval(logit_parity=True)
TRAIN = RunMode.train()
NO_FLOOR = float(CFG.memory_gate_warmup_steps)  # warm-up finished: floor 0


def _set(var, arr):
    var.set_value(jnp.asarray(np.asarray(arr, np.float32)))


def perturbed_model(seed: int = 0) -> Hierarchos:
    """Same construction as in test_model_streaming.py."""
    model = Hierarchos(CFG, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 1000)
    _set(model.rosa_emb.embedding, rng.normal(0, 0.5, (V + 1, C)))
    _set(model.rosa_router.kernel, rng.normal(0, 0.2, (C, 1)))
    _set(model.ltm_router.kernel, rng.normal(0, 0.2, (C, 1)))
    for cell in (model.h_rnn, model.l_rnn):
        for name in ("w1", "a1", "g1"):
            var = getattr(cell, name)
            _set(var, rng.normal(0, 0.2, var[...].shape))
        _set(cell.x_k_cm, rng.uniform(0, 0.8, cell.width))
    _set(model.h_deepemb.embedding, rng.normal(1, 0.3, model.h_deepemb.embedding[...].shape))
    _set(model.l_deepemb.embedding, rng.normal(1, 0.3, model.l_deepemb.embedding[...].shape))
    return model


def initial_memory(seed: int = 0, ts=None, src=None) -> WorkingMemory:
    rng = np.random.default_rng(seed + 2000)
    S, D = CFG.ltm_slots, CFG.ltm_val_dim
    ts = rng.integers(0, 4, (B, S)) if ts is None else np.full((B, S), ts)
    src = rng.integers(0, 3, (B, S)) if src is None else np.full((B, S), src)
    return WorkingMemory(jnp.asarray(rng.normal(0, 0.05, (B, S, D)).astype(np.float32)),
                         jnp.asarray(rng.normal(0, 0.05, (B, S, D)).astype(np.float32)),
                         jnp.asarray(np.asarray(ts, np.float32)), jnp.asarray(np.asarray(src, np.int32)))


def token_ids(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 3000)
    return rng.choice([3, 7, 11, 42, 99], size=(B, T)).astype(np.int64)


def run(runner, ids, mode, *, memory=None, carry=None, position=0, warmup_step=0.0):
    carry = runner.init_carry(B, memory=memory) if carry is None else carry
    with jax.default_matmul_precision("highest"):
        res, carry = runner(ids, carry, mode=mode, position=position, warmup_step=warmup_step)
    outs = {k: np.asarray(v) for k, v in res.outputs._asdict().items()}
    return outs, np.asarray(res.logits), carry


def assert_same(a, b, tol=2e-5):
    outs_a, logits_a, carry_a = a
    outs_b, logits_b, carry_b = b
    for name in ("topk_idx", "planned", "ponder_steps", "worker_steps"):
        np.testing.assert_array_equal(outs_a[name], outs_b[name], err_msg=name)
    for name in ("hidden", "topk_vals", "ponder_cost", "commitment"):
        np.testing.assert_allclose(outs_a[name], outs_b[name], rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(logits_a, logits_b, rtol=tol, atol=tol)
    for x, y in zip(jax.tree.leaves(carry_a.state), jax.tree.leaves(carry_b.state)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def base():
    return perturbed_model(0)


@pytest.fixture(scope="module")
def ids():
    return token_ids(0)


# ----------------------------------------------------------------------------- parity
def test_parity_eval_equals_training_forward(base, ids):
    runner = Runner(base)
    mem = initial_memory(0)
    parity = run(runner, ids, PARITY, memory=mem)
    train = run(runner, ids, TRAIN, memory=mem, warmup_step=NO_FLOOR)
    assert np.any(parity[0]["commitment"] > 0)
    assert_same(parity, train)
    # with the warm-up floor active the training forward differs
    floored = run(runner, ids, TRAIN, memory=mem, warmup_step=0.0)
    assert max_diff(floored[1], parity[1]) > 1e-4
    # legacy eval has no commitment cost (mode E)
    legacy = run(runner, ids, LEGACY, memory=mem)
    assert np.all(legacy[0]["commitment"] == 0.0)


# ----------------------------------------------------------------------------- surgery helpers
def _gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _enc0_model(seed=0, gain=80.0):
    """Perturbed model where, at the first token of a fresh state, the encoder's channel 0
    is ``gelu(E[id] . w)`` exactly (no bias, persistent, memory or ROSA contribution)."""
    model = perturbed_model(seed)
    rng = np.random.default_rng(seed + 4000)
    k = np.asarray(model.in_proj.kernel[...]).copy()
    k[:, 0] = 0.0
    k[:C, 0] = gain * rng.normal(0, 1, C) / np.sqrt(C)
    b = np.asarray(model.in_proj.bias[...]).copy()
    b[0] = 0.0
    _set(model.in_proj.kernel, k)
    _set(model.in_proj.bias, b)
    emb = np.asarray(model.rosa_emb.embedding[...]).copy()
    emb[V] = 0.0  # "no prediction" row: the first token's ROSA hint is zero
    _set(model.rosa_emb.embedding, emb)
    E = np.asarray(model.tok_emb.embedding[...], np.float64)
    pre = E @ k[:C, 0].astype(np.float64)
    return model, pre


def _pick_tokens(pre):
    """row-0 token with moderate positive pre-activation, a 'loud' one (>= 2.5x) and quiet ones."""
    order = np.argsort(pre)
    row0 = next(t for t in order if 3.0 <= pre[t] <= 6.0)
    loud = [t for t in order if 2.5 * pre[row0] <= pre[t] <= 28.0]
    quiet = [t for t in order if pre[t] <= -12.0]
    assert len(loud) >= 2 and len(quiet) >= 2, (pre.min(), pre.max())
    return int(row0), [int(t) for t in loud[:2]], [int(t) for t in quiet[:2]]


# ----------------------------------------------------------------------------- worker exit
@pytest.fixture(scope="module")
def worker_exit_model():
    """Worker surgery: u = [e_0, 0.., (c + d)[0:16]], the worker cell returns its input, and
    delta = tanh(a * y_0) on channel 0 only. So mean|delta| over the batch is
    (|tanh(a e0_row0)| + |tanh(a e0_row1)|) / (2 C), constant across refinement steps."""
    model, pre = _enc0_model(0)
    row0, loud, quiet = _pick_tokens(pre)
    Wl = CFG.l_hidden
    kin = np.zeros((2 * C, Wl), np.float32)
    kin[0, 0] = 1.0
    for j in range(Wl // 2):
        kin[C + j, Wl // 2 + j] = 1.0
    _set(model.l_input_proj.kernel, kin)
    _set(model.l_input_proj.bias, np.zeros(Wl))
    _set(model.l_rnn.output.kernel, np.zeros((Wl, Wl)))
    _set(model.l_rnn.value_cm.kernel, np.zeros((4 * Wl, Wl)))
    a = math.atanh(0.8 * C * EPS) / _gelu(pre[row0])  # row 0 alone: mean|delta| = 0.8 eps
    kd = np.zeros((Wl, C), np.float32)
    kd[0, 0] = a
    _set(model.context_drift_proj.kernel, kd)
    return Runner(model), row0, loud, quiet


def test_worker_exit_is_batch_global(worker_exit_model):
    runner, row0, loud, quiet = worker_exit_model

    def go(tok1):
        return run(runner, np.array([[row0], [tok1]]), LEGACY)

    q0, q1, l0, l1, same = go(quiet[0]), go(quiet[1]), go(loud[0]), go(loud[1]), go(row0)
    assert q0[0]["worker_steps"].shape == (1,)
    # quiet partner: batch mean 0.4 eps -> stop after the first step; loud partner: > eps -> all steps
    assert int(q0[0]["worker_steps"][0]) == 1 and int(q1[0]["worker_steps"][0]) == 1
    assert int(same[0]["worker_steps"][0]) == 1  # row 0 twice: mean 0.8 eps
    assert int(l0[0]["worker_steps"][0]) == CFG.max_l_steps and int(l1[0]["worker_steps"][0]) == CFG.max_l_steps
    # row 0's output depends on the partner only through the shared decision
    np.testing.assert_allclose(q0[1][0], q1[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q0[1][0], same[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(l0[1][0], l1[1][0], rtol=1e-6, atol=1e-6)
    assert max_diff(q0[1][0], l0[1][0]) > 1e-4
    # the accumulated drift of row 0: 1 step vs max_l_steps steps of the same delta
    d_q = np.asarray(q0[2].state.drift)[0, 0]
    d_l = np.asarray(l0[2].state.drift)[0, 0]
    np.testing.assert_allclose(d_l / d_q, CFG.max_l_steps, rtol=1e-3)
    np.testing.assert_allclose(abs(d_q), 0.8 * C * EPS, rtol=1e-3)


def test_parity_eval_equals_training_with_worker_exits(worker_exit_model, ids):
    """Parity eval's while loop and training's fixed masked loop take the same steps when
    drift exits actually happen."""
    runner = worker_exit_model[0]
    parity = run(runner, ids, PARITY)
    train = run(runner, ids, TRAIN, warmup_step=NO_FLOOR)
    steps = set(parity[0]["worker_steps"].tolist())
    assert 1 in steps and CFG.max_l_steps in steps, steps  # some tokens exit early, some do not
    assert_same(parity, train)


def test_worker_state_closeness_exit_legacy_only():
    """Legacy eval also stops when slots 0..2 of the shadow state stop moving, comparing the
    first step against the real (clamped) worker state. Surgery: the worker input is
    u = [e_0, 0, ...] (no drift or context part), the cell returns its input, x_v = 0, and
    the drift steps are large (no drift exit). Then step 2 repeats step 1's slots 0..2
    (exit after 2 steps at a fresh state), and at the next token with the same input the
    first shadow step already equals the real state (exit after 1 step)."""
    model, pre = _enc0_model(2)
    row0, loud, _ = _pick_tokens(pre)
    Wl = CFG.l_hidden
    _set(model.rosa_emb.embedding, np.zeros((V + 1, C)))  # token 1's encoder input equals token 0's
    kin = np.zeros((2 * C, Wl), np.float32)
    kin[0, 0] = 1.0
    _set(model.l_input_proj.kernel, kin)
    _set(model.l_input_proj.bias, np.zeros(Wl))
    _set(model.l_rnn.output.kernel, np.zeros((Wl, Wl)))
    _set(model.l_rnn.value_cm.kernel, np.zeros((4 * Wl, Wl)))
    _set(model.l_rnn.x_v, np.zeros(Wl))
    kd = np.zeros((Wl, C), np.float32)
    kd[0, 0] = 1.0 / _gelu(pre[row0])  # |delta_0| ~ tanh(1): mean|delta| >> eps
    _set(model.context_drift_proj.kernel, kd)
    runner = Runner(model)
    tok = np.array([[row0], [loud[0]]])
    legacy0 = run(runner, tok, LEGACY)
    legacy1 = run(runner, tok, LEGACY, carry=legacy0[2], position=1)
    train0 = run(runner, tok, TRAIN)
    train1 = run(runner, tok, TRAIN, carry=train0[2], position=1)
    assert int(legacy0[0]["worker_steps"][0]) == 2
    assert int(legacy1[0]["worker_steps"][0]) == 1
    assert int(train0[0]["worker_steps"][0]) == CFG.max_l_steps
    assert int(train1[0]["worker_steps"][0]) == CFG.max_l_steps
    assert np.all(np.abs(np.asarray(legacy0[2].state.drift)[:, 0]) > 0.5)


# ----------------------------------------------------------------------------- ACT exit
P_ROW0 = 0.95
HALT_BIAS = -4.0


@pytest.fixture(scope="module")
def act_exit_model():
    """Manager surgery: the cell's time-mix output and channel-0 of its channel mix are zero,
    so h[0] = e_fb[0] = enc_0 at every ponder step, while the other channels still change
    between ponder steps (channel-mix token shift, amplified). The halt logit reads h[0] only."""
    model, pre = _enc0_model(1)
    row0, loud, quiet = _pick_tokens(pre)
    Wh = CFG.h_hidden
    _set(model.h_rnn.output.kernel, np.zeros((Wh, Wh)))
    vcm = 30.0 * np.asarray(model.h_rnn.value_cm.kernel[...])  # larger differences between ponder outputs
    vcm[:, 0] = 0.0
    _set(model.h_rnn.value_cm.kernel, vcm)
    beta = (math.log(P_ROW0 / (1 - P_ROW0)) - HALT_BIAS) / _gelu(pre[row0])
    kh = np.zeros((Wh, 1), np.float32)
    kh[0, 0] = beta
    _set(model.h_halt_proj.kernel, kh)
    _set(model.h_halt_proj.bias, [HALT_BIAS])
    return Runner(model), row0, loud, quiet


def test_act_exit_is_batch_global(act_exit_model):
    runner, row0, loud, quiet = act_exit_model

    def go(tok1):
        return run(runner, np.array([[row0], [tok1]]), LEGACY)

    q0, q1, l0, l1, same = go(quiet[0]), go(quiet[1]), go(loud[0]), go(loud[1]), go(row0)
    M = CFG.max_h_steps
    assert q0[0]["ponder_steps"].shape == (1,) and bool(q0[0]["planned"][0])
    # quiet partner (p ~ 0.018): batch mean < 0.9 -> all ponder steps; loud partner: exit at once
    assert int(q0[0]["ponder_steps"][0]) == M - 1 and int(q1[0]["ponder_steps"][0]) == M - 1
    assert int(l0[0]["ponder_steps"][0]) == 0 and int(l1[0]["ponder_steps"][0]) == 0
    assert int(same[0]["ponder_steps"][0]) == 0  # mean 0.95 > 0.9
    # per-row ponder cost: sum of the running masses c_s with p_s = P_ROW0 at every step
    want_q = sum((1 - P_ROW0) ** s for s in range(M))
    np.testing.assert_allclose(q0[0]["ponder_cost"][0, 0], want_q, rtol=1e-4)
    np.testing.assert_allclose(l0[0]["ponder_cost"][0, 0], 1.0, rtol=1e-6)
    p_quiet = 1 / (1 + math.exp(-HALT_BIAS))
    np.testing.assert_allclose(q0[0]["ponder_cost"][1, 0], sum((1 - p_quiet) ** s for s in range(M)), rtol=1e-4)
    # row 0's new target context depends on the partner only through the shared decision
    tgt = lambda r: np.asarray(r[2].state.target_context)[0]
    np.testing.assert_allclose(tgt(q0), tgt(q1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tgt(l0), tgt(same), rtol=1e-6, atol=1e-6)
    assert max_diff(tgt(q0), tgt(l0)) > 2e-3
    # ... and so does row 0's next token (position 1 interpolates towards that target)
    nxt = np.array([[row0], [quiet[1]]])
    after_q = run(runner, nxt, LEGACY, carry=q0[2], position=1)
    after_l = run(runner, nxt, LEGACY, carry=l0[2], position=1)
    assert max_diff(after_q[1][0], after_l[1][0]) > 1e-4


def test_large_halt_bias_stops_pondering_in_legacy_eval_only(base, ids):
    model = nnx.clone(base)
    _set(model.h_halt_proj.bias, [30.0])
    runner = Runner(model)
    mem = initial_memory(0)
    legacy = run(runner, ids, LEGACY, memory=mem)
    parity = run(runner, ids, PARITY, memory=mem)
    planned = legacy[0]["planned"]
    np.testing.assert_array_equal(planned, [(t % 4) == 0 for t in range(T)])
    np.testing.assert_array_equal(legacy[0]["ponder_steps"], np.where(planned, 0, -1))
    np.testing.assert_array_equal(parity[0]["ponder_steps"], np.where(planned, CFG.max_h_steps - 1, -1))
    np.testing.assert_array_equal(legacy[0]["ponder_cost"][:, planned], 1.0)
    np.testing.assert_allclose(parity[0]["ponder_cost"][:, planned], 1.0, atol=1e-5)
    assert np.all(parity[0]["ponder_cost"][:, planned] > 1.0)
    # the default bias (p ~ 1/3) never exits early
    plain = run(Runner(base), ids, LEGACY, memory=mem)
    np.testing.assert_array_equal(plain[0]["ponder_steps"], np.where(planned, CFG.max_h_steps - 1, -1))


# ----------------------------------------------------------------------------- gate warm-up
def _gate_model(base, ltm_logit, rosa_logit):
    model = nnx.clone(base)
    _set(model.ltm_gate_logit, ltm_logit)
    _set(model.rosa_gate_logit, rosa_logit)
    for router in (model.ltm_router, model.rosa_router):
        _set(router.kernel, np.zeros((C, 1)))
        _set(router.bias, np.zeros(1))
    return Runner(model)


def _logit(p):
    return math.log(p / (1 - p))


def _sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("ltm_logit,rosa_logit,step", [(-60.0, -60.0, 0.0), (0.3, -0.5, 500.0)])
def test_memory_gate_warmup_floor_training_only(base, ids, ltm_logit, rosa_logit, step):
    """gate = f + (1 - f) sigmoid(logit), f = 0.1 (1 - step / 2000), in training only.
    A model with the floored gates baked into its logits (floor off) gives the same values."""
    mem = initial_memory(0)
    f = CFG.memory_gate_warmup_floor * (1 - step / CFG.memory_gate_warmup_steps)
    runner = _gate_model(base, ltm_logit, rosa_logit)
    g_ltm = f + (1 - f) * _sig(max(ltm_logit, -50.0))
    g_rosa = f + (1 - f) * _sig(max(rosa_logit, -50.0))
    baked = _gate_model(base, _logit(g_ltm), _logit(g_rosa))
    got = run(runner, ids, TRAIN, memory=mem, warmup_step=step)
    want = run(baked, ids, TRAIN, memory=mem, warmup_step=NO_FLOOR)
    assert_same(got, want, tol=3e-5)
    # eval never applies the floor, whatever the warm-up step
    ev0 = run(runner, ids, PARITY, memory=mem, warmup_step=0.0)
    ev1 = run(runner, ids, PARITY, memory=mem, warmup_step=NO_FLOOR)
    np.testing.assert_array_equal(ev0[1], ev1[1])
    unfloored = run(runner, ids, TRAIN, memory=mem, warmup_step=NO_FLOOR)
    assert_same(ev0, unfloored)
    assert max_diff(ev0[1], got[1]) > 1e-4


# ----------------------------------------------------------------------------- detach
def _logits_jvp(cfg, params, ids, tangent):
    """Training-mode logits and their derivative along ``tangent`` (a retrieval-probe direction)."""
    graphdef = nnx.graphdef(Hierarchos(cfg, rngs=nnx.Rngs(0)))
    Bn = ids.shape[0]

    @jax.jit
    def run_jvp(params, tangent):
        def logits(probe):
            model = nnx.merge(graphdef, params)
            outs, _ = forward(model, ids, zeros_state(cfg, Bn), mode=TRAIN, rosa_ids=jnp.full_like(ids, V),
                              retrieval_probe=probe)
            return model.logits(outs.hidden)

        return jax.jvp(logits, (jnp.zeros_like(tangent),), (tangent,))

    with jax.default_matmul_precision("highest"):
        value, deriv = run_jvp(params, tangent)
    return np.asarray(value, np.float64), np.asarray(deriv, np.float64)


def test_detach_every_n_changes_gradients_not_values(base):
    """Perturb the values retrieved at token 0: with detach_every_n_steps = 2 the derivative
    of tokens 0, 1 is unchanged, the path into tokens >= 2 loses its state part; the
    forward values are identical."""
    Tn = 5
    rng = np.random.default_rng(7)
    ids = jnp.asarray(rng.integers(0, V, (B, Tn)), jnp.int32)
    tangent = np.zeros((B, Tn, CFG.ltm_topk, CFG.ltm_val_dim), np.float32)
    tangent[:, 0] = rng.normal(0, 1, tangent[:, 0].shape)
    params = nnx.state(base)
    cfg = CFG.replace(max_h_steps=1, max_l_steps=1)  # shorter inner loops: cheaper to compile
    v_full, d_full = _logits_jvp(cfg, params, ids, jnp.asarray(tangent))  # T = 5 < 32: no cut
    v_cut, d_cut = _logits_jvp(cfg.replace(detach_every_n_steps=2), params, ids, jnp.asarray(tangent))
    np.testing.assert_array_equal(v_cut, v_full)
    np.testing.assert_allclose(d_cut[:, :2], d_full[:, :2], rtol=1e-5, atol=1e-7)
    for t in range(2, Tn):
        scale = np.max(np.abs(d_full[:, t]))
        assert scale > 1e-5
        assert np.max(np.abs(d_cut[:, t] - d_full[:, t])) > (5e-2 if t == 2 else 1e-4) * scale, t


# ----------------------------------------------------------------------------- Hebbian
@pytest.fixture(scope="module")
def hebbian_runner(base):
    model = nnx.clone(base)
    _set(model.rosa_emb.embedding, np.zeros((V + 1, C)))  # token 1 repeats token 0's query exactly
    return Runner(model)


def test_hebbian_write_changes_next_retrieval(hebbian_runner):
    runner = hebbian_runner
    cfg = runner.config
    mem0 = initial_memory(3, ts=5.0, src=2)
    tok = np.array([[42], [7]])
    heb = RunMode.eval(logit_parity=False, hebbian=True)
    o1, _, c1 = run(runner, tok, heb, memory=mem0)
    o2, _, _c2 = run(runner, tok, heb, carry=c1, position=1)
    n1, _, d1 = run(runner, tok, LEGACY, memory=mem0)
    n2, _, _ = run(runner, tok, LEGACY, carry=d1, position=1)

    idx = o1["topk_idx"][:, 0]  # [B, k]
    np.testing.assert_array_equal(o2["topk_idx"][:, 0], idx)  # same query at the next token
    np.testing.assert_array_equal(n1["topk_idx"][:, 0], idx)
    assert np.all(idx >= 0)
    slow = np.asarray(runner.model.ltm.vals[...])
    f0, m0, ts0, src0 = (np.asarray(a) for a in mem0)
    f1, m1, ts1, src1 = (np.asarray(a) for a in c1.state.memory)

    # without writes the memory is unchanged and retrieval reads vals + fast
    for x, y in zip(d1.state.memory, mem0):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for b in range(B):
        np.testing.assert_allclose(n2["topk_vals"][b, 0], slow[idx[b]] + f0[b, idx[b]], rtol=1e-6, atol=1e-6)
        # with writes the next token reads the written fast values
        np.testing.assert_allclose(o2["topk_vals"][b, 0], slow[idx[b]] + f1[b, idx[b]], rtol=1e-6, atol=1e-6)
        assert max_diff(o2["topk_vals"][b, 0], n2["topk_vals"][b, 0]) > 1e-4
    np.testing.assert_array_equal(o1["topk_vals"], n1["topk_vals"])  # the write comes after the read

    rho = (1 - cfg.ltm_forget_rate) ** (1.0 / cfg.effective_reference_chunk_len)
    mu, lr, lam = cfg.ltm_momentum, cfg.ltm_lr, cfg.ltm_weight_decay
    for b in range(B):
        touched = np.zeros(cfg.ltm_slots, bool)
        touched[idx[b]] = True
        assert np.all(ts1[b, touched] == 0.0) and np.all(src1[b, touched] == 1)
        np.testing.assert_array_equal(ts1[b, ~touched], ts0[b, ~touched])
        np.testing.assert_array_equal(src1[b, ~touched], src0[b, ~touched])
        np.testing.assert_allclose(f1[b, ~touched], rho * f0[b, ~touched], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(m1[b, ~touched], mu * m0[b, ~touched], rtol=1e-6, atol=1e-7)
        # every retrieved slot received the same written value psi (|psi| <= 20)
        psi = mu * m0[b, idx[b]] - m1[b, idx[b]]  # [k, D]
        np.testing.assert_allclose(psi, np.broadcast_to(psi[0], psi.shape), rtol=1e-4, atol=1e-5)
        assert np.max(np.abs(psi)) <= 20.0 and np.max(np.abs(psi)) > 1e-2
        want_fast = rho * f0[b, idx[b]] - lr * (m1[b, idx[b]] + lam * f0[b, idx[b]])
        np.testing.assert_allclose(f1[b, idx[b]], want_fast, rtol=1e-5, atol=1e-7)
