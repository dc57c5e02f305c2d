"""The on-device sampler against a NumPy transcription of spec inference.md §7."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax.infer.sampling import (SamplingArrays, SamplingParams, apply_repetition_penalty,
                                           filtered_logits, row_keys, sample_tokens, step_keys,
                                           uncertainty_stats)


def reference_filter(z, history, T, K, p, rho):
    """Spec §7 steps 2 and 4-6 in NumPy (stable sort for top-p, as the port documents)."""
    z = np.asarray(z, np.float32).copy()
    V = z.shape[0]
    if rho != 1.0 and history:
        for t in set(history):
            if 0 <= t < V:
                z[t] = z[t] / np.float32(rho) if z[t] > 0 else z[t] * np.float32(rho)
    z = z / np.float32(max(T, 1e-6))
    K = int(K or 0)
    if 0 < K < V:
        thr = np.sort(z)[::-1][K - 1]
        z[z < thr] = -np.inf
    if p < 1.0:
        order = np.argsort(-z, kind="stable")
        s = z[order]
        e = np.exp(s - s.max())
        cum = np.cumsum((e / e.sum()).astype(np.float32), dtype=np.float32)
        remove = cum > np.float32(p)
        remove[1:] = remove[:-1].copy()
        remove[0] = False
        z[order[remove]] = -np.inf
    return z


_filtered = jax.jit(filtered_logits, static_argnames="candidates")


def arrays(B, T=1.0, K=0, p=1.0, rho=1.0):
    return SamplingArrays.build(SamplingParams(temperature=T, top_k=K, top_p=p, repetition_penalty=rho), B)


def seen_mask(B, V, histories):
    m = np.zeros((B, V), bool)
    for b, h in enumerate(histories):
        m[b, [t for t in h if 0 <= t < V]] = True
    return jnp.asarray(m)


def _cases():
    rng = np.random.default_rng(0)
    kinds = ("normal", "integer", "peaked", "flat", "negative")
    for i in range(60):
        V = (7, 50, 512)[i % 3]
        kind = kinds[i % len(kinds)]
        if kind == "normal":
            z = rng.normal(0, 2, V)
        elif kind == "integer":  # many exact ties
            z = rng.integers(-3, 4, V).astype(float)
        elif kind == "peaked":
            z = rng.normal(0, 1, V)
            z[rng.integers(V)] += 12
        elif kind == "flat":
            z = np.zeros(V)
        else:
            z = -np.abs(rng.normal(0, 3, V))
        T = [0.05, 0.7, 1.0, 1e-9, 3.0][i % 5]
        K = [0, 1, 2, 5, V - 1, V, V + 10, -3][i % 8]
        p = [1.0, 0.1, 0.5, 0.9, 1e-9, 0.95][i % 6]
        rho = [1.0, 1.2, 0.5, 1.15][i % 4]
        history = list(rng.integers(-2, V + 2, rng.integers(0, 6)))
        yield z.astype(np.float32), T, K, p, rho, history


@pytest.mark.parametrize("candidates", [4, 256])
def test_filter_matches_the_spec_transcription(candidates):
    """Kept set and scores equal the spec's on normal, tied, peaked, flat and all-negative
    logits; ``candidates=4`` forces the full-sort fallback on most rows."""
    for z, T, K, p, rho, history in _cases():
        want = reference_filter(z, history, T, K, p, rho)
        got = np.asarray(_filtered(jnp.asarray(z[None]), seen_mask(1, z.shape[0], [history]),
                                         arrays(1, T, K, p, rho), candidates=candidates))[0]
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"{T} {K} {p} {rho}")
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)


def test_top_k_keeps_ties_at_the_threshold():
    got = np.asarray(filtered_logits(jnp.asarray([[3.0, 3.0, 3.0, 1.0]]), seen_mask(1, 4, [[]]), arrays(1, K=2)))
    assert np.isfinite(got[0]).tolist() == [True, True, True, False]


def test_top_p_ties_at_the_cut_keep_lower_ids():
    got = np.asarray(filtered_logits(jnp.zeros((1, 4)), seen_mask(1, 4, [[]]), arrays(1, p=0.3)))
    assert np.isfinite(got[0]).tolist() == [True, True, False, False]


def test_repetition_penalty_on_a_hand_made_vector():
    logits = jnp.asarray([[2.0, -2.0, 0.0, 3.0, -1.0]])
    seen = seen_mask(1, 5, [[0, 1, 2, 0]])  # duplicates count once
    out = np.asarray(apply_repetition_penalty(logits, seen, jnp.asarray([2.0])))
    np.testing.assert_array_equal(out[0], [1.0, -4.0, 0.0, 3.0, -1.0])
    # greedy reads the penalised scores
    keys = step_keys(row_keys(0, 1), jnp.int32(0))
    assert int(sample_tokens(logits, seen, arrays(1, T=0.0, rho=2.0), keys)[0]) == 3
    seen2 = seen_mask(1, 5, [[3]])
    assert int(sample_tokens(logits, seen2, arrays(1, T=0.0, rho=4.0), keys)[0]) == 0  # 3/4 = 0.75 < 2
    assert int(sample_tokens(logits, seen2, arrays(1, T=0.0, rho=1.0), keys)[0]) == 3  # 1.0 = off


def test_greedy_ties_go_to_the_lowest_index():
    logits = jnp.asarray([[0.0, 5.0, 1.0, 5.0]])
    keys = step_keys(row_keys(0, 1), jnp.int32(0))
    assert int(sample_tokens(logits, seen_mask(1, 4, [[]]), arrays(1, T=0.0), keys)[0]) == 1
    assert int(sample_tokens(logits, seen_mask(1, 4, [[]]), arrays(1, T=-1.0), keys, greedy_only=True)[0]) == 1


def test_top_k_1_and_tiny_top_p_equal_greedy():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(0, 2, (16, 300)).astype(np.float32))
    seen = seen_mask(16, 300, [[]] * 16)
    greedy = np.argmax(np.asarray(logits), axis=-1)
    for seed in range(3):
        keys = step_keys(row_keys(seed, 16), jnp.int32(seed))
        np.testing.assert_array_equal(sample_tokens(logits, seen, arrays(16, T=1.5, K=1), keys), greedy)
        np.testing.assert_array_equal(sample_tokens(logits, seen, arrays(16, T=1.5, p=1e-6), keys), greedy)


def test_draws_are_reproducible_per_row_and_follow_the_distribution():
    V, B = 6, 4000
    z = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05, 1e-9], np.float32))
    logits = jnp.asarray(np.tile(z, (B, 1)))
    seen = jnp.zeros((B, V), bool)
    a = np.asarray(sample_tokens(logits, seen, arrays(B), step_keys(row_keys(7, B), jnp.int32(3))))
    b = np.asarray(sample_tokens(logits, seen, arrays(B), step_keys(row_keys(7, B), jnp.int32(3))))
    c = np.asarray(sample_tokens(logits, seen, arrays(B), step_keys(row_keys(8, B), jnp.int32(3))))
    d = np.asarray(sample_tokens(logits, seen, arrays(B), step_keys(row_keys(7, B), jnp.int32(4))))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.4 and (a != d).mean() > 0.4
    freq = np.bincount(a, minlength=V) / B
    np.testing.assert_allclose(freq, np.exp(z), atol=0.03)
    # a row's draws do not depend on the batch size
    small = np.asarray(sample_tokens(logits[:3], seen[:3], arrays(3), step_keys(row_keys(7, 3), jnp.int32(3))))
    np.testing.assert_array_equal(small, a[:3])
    # top-k 2 / top-p 0.5: only the two best tokens ever come out
    e = np.asarray(sample_tokens(logits, seen, arrays(B, K=2), step_keys(row_keys(1, B), jnp.int32(0))))
    f = np.asarray(sample_tokens(logits, seen, arrays(B, p=0.5), step_keys(row_keys(1, B), jnp.int32(0))))
    assert set(e) == {0, 1} and set(f) == {0, 1}


@pytest.mark.parametrize("bad, match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=math.nan), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(temperature=math.nan), "temperature"), (dict(temperature=math.inf), "temperature"),
    (dict(top_k=2.5), "top_k"), (dict(seed=1.0), "seed"),
])
def test_bad_settings_are_rejected_up_front(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**bad).validated()


def test_uncertainty_stats():
    logits = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]])
    s = uncertainty_stats(logits, eos_id=1)
    np.testing.assert_allclose(np.asarray(s.entropy), [math.log(4), 0.0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.eos_prob), [0.25, math.exp(-20)], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s.max_prob), [0.25, 1.0], atol=1e-6)
    assert not np.asarray(s.nonfinite).any()
    assert jax.numpy.asarray(s.nonfinite).shape == (2,)
