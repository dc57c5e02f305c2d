"""Long-term memory (spec §4): top-k retrieval, straight-through score gradient, timestamp
code and the Titans / Hebbian working-memory updates, each against a NumPy oracle written
from model.md §4.2–4.6."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import hebbian_write
from hierarchos_jax.model.ltm import (
    WorkingMemory,
    inner_update,
    retrieve_topk,
    timestamp_code,
)

S, K, D = 12, 8, 6


# ----------------------------------------------------------------------------- oracles
def retrieve_oracle(keys, vals, fast, ts, src, q, k, *, min_timestamp=0.0, source_filter=None):
    """§4.2 in float64. ``fast [Bm, S, D]``, ``ts/src [Bm, S]`` with Bm in {1, B}."""
    B = q.shape[0]
    S_, K_ = keys.shape
    sim = (q.astype(np.float64) @ keys.astype(np.float64).T) * K_ ** -0.5
    out_v = np.zeros((B, k, vals.shape[1]))
    out_i = np.full((B, k), -1, np.int64)
    out_t = np.zeros((B, k))
    for b in range(B):
        m = 0 if fast.shape[0] == 1 else b
        valid = np.isfinite(sim[b])
        if min_timestamp > 0:
            valid &= ts[m] >= min_timestamp
        if source_filter is not None:
            valid &= src[m] == source_filter
        cand = [s for s in np.argsort(-np.where(valid, sim[b], -np.inf), kind="stable") if valid[s]]
        for j, s in enumerate(cand[:min(k, S_)]):
            out_i[b, j] = s
            out_v[b, j] = vals[s].astype(np.float64) + fast[m, s]
            out_t[b, j] = ts[m, s]
    return out_v, out_i, out_t, sim


def inner_update_oracle(fast, mom, ts, src, idx, grads, lr, *, timestamp, source, tau, L_ref, mu, lam, forget):
    """§4.5 in float64; a 1-row memory pools every row's addresses, else per row."""
    fast, mom = fast.astype(np.float64).copy(), mom.astype(np.float64).copy()
    ts, src = ts.astype(np.float64).copy(), src.copy()
    Bm, S_, D_ = fast.shape
    idx = idx.reshape(Bm, -1)
    grads = grads.astype(np.float64).reshape(Bm, -1, D_)
    rho = (1.0 - forget) ** (tau / L_ref)
    for b in range(Bm):
        I, G = idx[b], grads[b]
        if not np.any(I >= 0):
            continue
        counts = np.zeros(S_)
        sums = np.zeros((S_, D_))
        for i, g in zip(I, G):
            if i >= 0:
                counts[i] += 1
                sums[i] += g
        touched = counts > 0
        gbar = sums / (counts[:, None] + 1e-8)
        new_mom = mu * mom[b]
        new_mom[touched] = np.clip(new_mom[touched] + gbar[touched], -50, 50)
        new_fast = rho * fast[b]
        new_fast[touched] = np.clip(rho * fast[b][touched] - lr * (new_mom[touched] + lam * fast[b][touched]),
                                    -50, 50)
        mom[b], fast[b] = new_mom, new_fast
        ts[b][touched] = timestamp
        src[b][touched] = source
    return fast, mom, ts, src


# ----------------------------------------------------------------------------- data
def memory_data(seed, B=3, Bm=3, S_=S):
    rng = np.random.default_rng(seed)
    keys = rng.normal(0, 1, (S_, K)).astype(np.float32)
    vals = rng.normal(0, 1, (S_, D)).astype(np.float32)
    fast = rng.normal(0, 0.5, (Bm, S_, D)).astype(np.float32)
    mom = rng.normal(0, 0.5, (Bm, S_, D)).astype(np.float32)
    ts = rng.integers(0, 6, (Bm, S_)).astype(np.float32)
    src = rng.integers(0, 3, (Bm, S_)).astype(np.int32)
    q = rng.normal(0, 1.5, (B, K)).astype(np.float32)
    return keys, vals, WorkingMemory(*(jnp.asarray(a) for a in (fast, mom, ts, src))), q


def np_mem(mem):
    return tuple(np.asarray(a) for a in mem)


_retrieve = jax.jit(retrieve_topk, static_argnames=("k", "min_timestamp", "source_filter", "score_grad_scale"))


def run_retrieve(keys, vals, mem, q, k, **kw):
    with jax.default_matmul_precision("highest"):
        r = _retrieve(jnp.asarray(keys), jnp.asarray(vals), mem, jnp.asarray(q), k=k, **kw)
    return np.asarray(r.vals), np.asarray(r.idx), np.asarray(r.ts)


def check_retrieve(keys, vals, mem, q, k, **kw):
    got_v, got_i, got_t = run_retrieve(keys, vals, mem, q, k, **kw)
    fast, _, ts, src = np_mem(mem)
    want_v, want_i, want_t, sim = retrieve_oracle(keys, vals, fast, ts, src, q, k, **kw)
    assert got_i.shape == (q.shape[0], k) and got_v.shape == (q.shape[0], k, vals.shape[1])
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got_t, want_t)
    # Descending similarity among the valid entries.
    for b in range(q.shape[0]):
        sel = got_i[b][got_i[b] >= 0]
        assert np.all(np.diff(sim[b][sel]) <= 0)
    return got_v, got_i, got_t


# ----------------------------------------------------------------------------- retrieval
@pytest.mark.parametrize("kw", [
    {},
    {"min_timestamp": 2.5},
    {"source_filter": 2},
    {"min_timestamp": 1.5, "source_filter": 1},
    {"min_timestamp": -3.0},  # not > 0: inactive
    {"source_filter": 0},
])
def test_retrieve_topk_matches_oracle(kw):
    keys, vals, mem, q = memory_data(0)
    _v, i, _t = check_retrieve(keys, vals, mem, q, 4, **kw)
    if kw.get("min_timestamp", 0) > 0 or "source_filter" in kw:
        assert np.any(i >= 0)  # the filter keeps some...
        _, i_all, _ = run_retrieve(keys, vals, mem, q, 4)
        assert not np.array_equal(i, i_all)  # ...and masks some


def test_retrieve_few_valid_rows_get_minus_one_and_zeros():
    keys, vals, mem, q = memory_data(1)
    _fast, _mom, ts, _src = np_mem(mem)
    ts = np.zeros_like(ts)
    ts[0, [3, 7]] = 9.0  # row 0: two valid slots
    ts[1, 5] = 9.0       # row 1: one valid slot
    mem = WorkingMemory(mem.fast, mem.mom, jnp.asarray(ts), mem.sources)  # row 2: none
    v, i, t = check_retrieve(keys, vals, mem, q, 4, min_timestamp=1.0)
    assert sorted(i[0, :2].tolist()) == [3, 7] and np.all(i[0, 2:] == -1)
    assert i[1, 0] == 5 and np.all(i[1, 1:] == -1)
    assert np.all(i[2] == -1)
    assert np.all(v[i < 0] == 0.0) and np.all(t[i < 0] == 0.0)
    assert np.all(t[i >= 0] == 9.0)


@pytest.mark.parametrize("kw", [{"min_timestamp": 100.0}, {"source_filter": 7}])
def test_retrieve_all_invalid(kw):
    keys, vals, mem, q = memory_data(2)
    v, i, t = run_retrieve(keys, vals, mem, q, 4, **kw)
    assert np.all(i == -1)
    assert np.all(v == 0.0) and np.all(t == 0.0)


def test_retrieve_nonfinite_key_is_invalid():
    keys, vals, mem, q = memory_data(3)
    _fast, _, _ts, _src = np_mem(mem)
    sim = q @ keys.T
    best = int(np.argmax(sim[0]))
    keys = keys.copy()
    keys[best, 0] = np.nan
    _, i, _ = check_retrieve(keys, vals, mem, q, 4)
    assert best not in i.tolist()[0] and best not in i.reshape(-1).tolist()


@pytest.mark.parametrize("kw", [{}, {"source_filter": 1}])
def test_retrieve_fewer_slots_than_k_pads(kw):
    keys, vals, mem, q = memory_data(4, S_=3)
    v, i, t = check_retrieve(keys, vals, mem, q, 5, **kw)
    assert np.all(i[:, 3:] == -1) and np.all(v[:, 3:] == 0.0) and np.all(t[:, 3:] == 0.0)
    if not kw:
        assert np.all(np.sort(i[:, :3], axis=1) == np.arange(3))


def test_retrieve_shared_memory_equals_broadcast_private_copy():
    keys, vals, mem1, q = memory_data(5, Bm=1)
    check_retrieve(keys, vals, mem1, q, 3, min_timestamp=1.0)
    per_row = WorkingMemory(*(jnp.broadcast_to(a, (3,) + a.shape[1:]) for a in mem1))
    a = run_retrieve(keys, vals, mem1, q, 3, min_timestamp=1.0)
    b = run_retrieve(keys, vals, per_row, q, 3, min_timestamp=1.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_retrieve_per_row_memory_is_private():
    keys, vals, mem, q = memory_data(6)
    q = np.repeat(q[:1], 3, axis=0)  # same query for every row
    v, i, _ = check_retrieve(keys, vals, mem, q, 3)
    assert np.all(i == i[:1])
    assert not np.allclose(v[0], v[1])  # different private fast values


# ----------------------------------------------------------------------------- score gradient
def _retrieval_loss(q, keys, vals, fast, mem, weight, scale, min_ts):
    m = WorkingMemory(fast, mem.mom, mem.timestamps, mem.sources)
    r = retrieve_topk(keys, vals, m, q, 4, min_timestamp=min_ts, score_grad_scale=scale)
    return jnp.sum(r.vals * weight)


_loss_grad = jax.jit(jax.value_and_grad(_retrieval_loss, argnums=(0, 1, 2, 3)), static_argnums=(6, 7))


@pytest.mark.parametrize("scale", [1.0, 2.5, 0.0])
@pytest.mark.parametrize("min_ts", [0.0, 3.5])
def test_straight_through_score_gradient(scale, min_ts):
    keys, vals, mem, q = memory_data(7)
    weight = np.random.default_rng(8).normal(0, 1, (3, 4, D)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        loss, (gq, gk, gv, gf) = _loss_grad(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(vals), mem.fast, mem,
                                            jnp.asarray(weight), scale, min_ts)
    fast, _, ts, src = np_mem(mem)
    got, idx, _, _ = retrieve_oracle(keys, vals, fast, ts, src, q, 4, min_timestamp=min_ts)
    if min_ts > 0:
        assert np.any(idx == -1) and np.any(idx >= 0)
    # forward value unchanged by the straight-through term
    np.testing.assert_allclose(float(loss), np.sum(got * weight), rtol=1e-5)
    want_q = np.zeros_like(q, dtype=np.float64)
    want_k = np.zeros_like(keys, dtype=np.float64)
    want_v = np.zeros_like(vals, dtype=np.float64)
    want_f = np.zeros_like(fast, dtype=np.float64)
    for b in range(3):
        for j in range(4):
            s = idx[b, j]
            if s < 0:
                continue
            ds = scale * np.dot(weight[b, j], got[b, j])  # dL/d score_j
            want_q[b] += ds * keys[s] / np.sqrt(K)
            want_k[s] += ds * q[b] / np.sqrt(K)
            want_v[s] += weight[b, j]
            want_f[b, s] += weight[b, j]
    for g, w in ((gq, want_q), (gk, want_k), (gv, want_v), (gf, want_f)):
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-5)
    if scale == 0.0:
        assert np.all(np.asarray(gq) == 0.0) and np.all(np.asarray(gk) == 0.0)
    else:
        assert np.max(np.abs(np.asarray(gq))) > 1e-2


# ----------------------------------------------------------------------------- timestamp code
def test_time_freqs_follow_the_spec():
    base = HierarchosConfig.from_preset("tiny")
    for d, want in ((1, []), (2, [1.0]), (3, [1.0]), (7, [1.0, 1e-2, 1e-4]), (16, None)):
        f = np.asarray(base.replace(ltm_val_dim=d).time_freqs())
        h = d // 2
        if want is None:
            want = np.exp(-np.arange(h) * np.log(10000.0) / (h - 1))
        np.testing.assert_allclose(f, want, rtol=1e-6)
        assert f.dtype == np.float32 and f.shape == (h,)


@pytest.mark.parametrize("d", [7, 6, 2, 1])
def test_timestamp_code(d):
    freqs = np.asarray(HierarchosConfig.from_preset("tiny").replace(ltm_val_dim=d).time_freqs())
    h = d // 2
    ts = np.array([[0.0, 1.0, 2.5], [17.0, 0.0, 300.0]], np.float32)
    code = np.asarray(timestamp_code(jnp.asarray(ts), jnp.asarray(freqs), d))
    assert code.shape == ts.shape + (d,)
    ang = ts[..., None].astype(np.float64) * freqs
    np.testing.assert_allclose(code[..., :h], np.sin(ang), atol=2e-5)
    np.testing.assert_allclose(code[..., h:2 * h], np.cos(ang), atol=2e-5)
    if d % 2:
        assert np.all(code[..., -1] == 0.0)
    zero = code[0, 0]  # ts = 0 -> [0...0, 1...1] (+ 0)
    np.testing.assert_array_equal(zero, [0.0] * h + [1.0] * h + [0.0] * (d % 2))


# ----------------------------------------------------------------------------- inner update
UPD = {"lr": 0.3, "timestamp": 11.0, "source": 3, "tau": 5.0, "L_ref": 8.0, "mu": 0.9, "lam": 0.05, "forget": 0.2}

_inner = jax.jit(inner_update, static_argnames=("source", "reference_chunk_len", "momentum", "weight_decay",
                                                "forget_rate"))


def run_inner(mem, idx, grads, u=UPD):
    with jax.default_matmul_precision("highest"):
        new = _inner(mem, jnp.asarray(idx), jnp.asarray(grads), u["lr"], timestamp=u["timestamp"], source=u["source"],
                     tokens_covered=u["tau"], reference_chunk_len=u["L_ref"], momentum=u["mu"],
                     weight_decay=u["lam"], forget_rate=u["forget"])
    return np_mem(new)


def check_inner(mem, idx, grads, u=UPD):
    got = run_inner(mem, idx, grads, u)
    fast, mom, ts, src = np_mem(mem)
    want = inner_update_oracle(fast, mom, ts, src, idx, grads, u["lr"], timestamp=u["timestamp"],
                               source=u["source"], tau=u["tau"], L_ref=u["L_ref"], mu=u["mu"], lam=u["lam"],
                               forget=u["forget"])
    for g, w in zip(got[:2], want[:2]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[2], want[2].astype(np.float32))
    np.testing.assert_array_equal(got[3], want[3])
    assert got[3].dtype == src.dtype
    return got


def update_data(seed, Bm):
    rng = np.random.default_rng(seed)
    fast = rng.normal(0, 2.0, (Bm, S, D)).astype(np.float32)
    fast[:, 0, :2] = [49.5, -49.5]  # the +-50 clip of fast values matters
    mom = rng.normal(0, 2.0, (Bm, S, D)).astype(np.float32)
    ts = rng.integers(0, 6, (Bm, S)).astype(np.float32)
    src = rng.integers(0, 3, (Bm, S)).astype(np.int32)
    mem = WorkingMemory(*(jnp.asarray(a) for a in (fast, mom, ts, src)))
    # idx [B=3, T=4, k=2] with repeats and ignored entries
    idx = np.array([[[0, 3], [3, 5], [-1, 3], [7, 0]],
                    [[1, 1], [2, -1], [9, 2], [-1, -1]],
                    [[-1, -1], [-1, -1], [-1, -1], [-1, -1]]], np.int32)
    grads = rng.normal(0, 20.0, idx.shape + (D,)).astype(np.float32)  # large: momentum clip
    grads[0, 0, 0] = 80.0
    return mem, idx, grads


def test_inner_update_per_row():
    mem, idx, grads = update_data(0, Bm=3)
    got = check_inner(mem, idx, grads)
    fast, mom, ts, src = np_mem(mem)
    # row 2 addressed nothing: untouched entirely (no decay either)
    for g, o in zip(got, (fast, mom, ts, src)):
        np.testing.assert_array_equal(g[2], o[2])
    # row 0: untouched slots only decay, touched slots get the new metadata
    touched0 = {0, 3, 5, 7}
    rho = (1 - UPD["forget"]) ** (UPD["tau"] / UPD["L_ref"])
    for s in range(S):
        if s in touched0:
            assert got[2][0, s] == 11.0 and got[3][0, s] == 3
        else:
            np.testing.assert_allclose(got[0][0, s], rho * fast[0, s], rtol=1e-6)
            np.testing.assert_allclose(got[1][0, s], UPD["mu"] * mom[0, s], rtol=1e-6)
            assert got[2][0, s] == ts[0, s] and got[3][0, s] == src[0, s]
    assert np.any(np.abs(got[1]) == 50.0)  # momentum clip reached


def test_inner_update_shared_memory_pools_rows():
    mem, idx, grads = update_data(1, Bm=1)
    got = check_inner(mem, idx, grads)
    # slot 3 is addressed by row 0 only, slot 2 by row 1 only, slot 1 twice by row 1.
    _fast, mom, _, _ = np_mem(mem)
    gbar1 = (grads[1, 0, 0] + grads[1, 0, 1]) / (2 + 1e-8)
    want_mom1 = np.clip(UPD["mu"] * mom[0, 1] + gbar1, -50, 50)
    np.testing.assert_allclose(got[1][0, 1], want_mom1, rtol=1e-5)
    # the pooled result differs from applying the rows one after another
    seq = mem
    for b in range(3):
        seq = WorkingMemory(*(jnp.asarray(a) for a in run_inner(seq, idx[b:b + 1], grads[b:b + 1])))
    assert not np.allclose(np.asarray(seq.fast), got[0])


def test_inner_update_nothing_valid_is_a_no_op():
    for Bm in (1, 3):
        mem, idx, grads = update_data(2, Bm=Bm)
        got = run_inner(mem, np.full_like(idx, -1), grads)
        for g, o in zip(got, np_mem(mem)):
            np.testing.assert_array_equal(g, o)


def test_hebbian_write_is_inner_update_with_negated_values():
    cfg = HierarchosConfig.from_preset("tiny").replace(ltm_lr=0.05, ltm_weight_decay=0.01, ltm_forget_rate=0.3,
                                                      reference_chunk_len=4)
    rng = np.random.default_rng(3)
    Bm, B, S_, D_ = 2, 2, cfg.ltm_slots, cfg.ltm_val_dim
    fast = rng.normal(0, 1, (Bm, S_, D_)).astype(np.float32)
    mom = rng.normal(0, 1, (Bm, S_, D_)).astype(np.float32)
    ts = np.full((Bm, S_), 4.0, np.float32)
    src = np.full((Bm, S_), 2, np.int32)
    mem = WorkingMemory(*(jnp.asarray(a) for a in (fast, mom, ts, src)))
    idx = np.array([[3, 9], [9, -1]], np.int32)
    value = rng.normal(0, 3, (B, D_)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        got = np_mem(hebbian_write(cfg, mem, jnp.asarray(idx), jnp.asarray(value)))
    want = inner_update_oracle(fast, mom, ts, src, idx, -np.repeat(value[:, None], 2, axis=1), 0.05,
                               timestamp=0.0, source=1, tau=1.0, L_ref=4.0, mu=cfg.ltm_momentum, lam=0.01,
                               forget=0.3)
    for g, w in zip(got[:2], want[:2]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    assert got[2][0, 3] == 0.0 and got[3][0, 3] == 1 and got[3][1, 9] == 1 and got[3][1, 3] == 2

    # Zero prior momentum and fast values: a written slot moves to +lr * mean written value.
    zero = WorkingMemory.zeros(1, S_, D_)
    with jax.default_matmul_precision("highest"):
        got = np_mem(hebbian_write(cfg, zero, jnp.asarray(idx), jnp.asarray(value)))
    np.testing.assert_allclose(got[0][0, 3], 0.05 * value[0], rtol=1e-5)
    np.testing.assert_allclose(got[0][0, 9], 0.05 * (value[0] + value[1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(got[1][0, 9], -(value[0] + value[1]) / 2, rtol=1e-5)


def test_inner_update_refuses_a_bad_learning_rate():
    from hierarchos_jax.model.ltm import WorkingMemory, inner_update

    mem = WorkingMemory.zeros(1, 4, 3)
    idx = np.array([[0, 1]])
    grads = np.ones((1, 2, 3), np.float32)
    for lr in (float("nan"), float("inf"), -1e-3):
        with pytest.raises(ValueError, match="learning rate"):
            inner_update(mem, idx, grads, lr, timestamp=0.0, tokens_covered=1.0, reference_chunk_len=256,
                         momentum=0.9, weight_decay=1e-4, forget_rate=0.01)
