"""Tests for the host-side ROSA hint (hierarchos_jax.model.rosa, spec §5.1–5.2)."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hierarchos_jax.model.rosa import (
    RosaAutomaton,
    RosaBatch,
    rosa_ids,
    rosa_ids_for_padded,
    rosa_ids_reference,
    rosa_step,
)

V = 97  # any vocab size above the tokens used below
N = V  # the "no prediction" id

SPEC_EXAMPLES = [
    ([1, 2, 1, 2, 3, 1, 2], [N, N, 2, 1, N, 2, 3]),
    ([4, 4, 4], [N, 4, 4]),
    ([4, 4, 4, 5, 4, 4, 6], [N, 4, 4, N, 5, 5, N]),
    ([0, 1, 0, 1, 0, 2, 0, 1, 0], [N, N, 1, 0, 1, N, 2, 0, 2]),
]


def _random_seq(rng: random.Random, max_len: int, max_alpha: int = 4):
    k = rng.randint(1, max_alpha)
    n = rng.randint(0, max_len)
    return [rng.randrange(k) for _ in range(n)]


def _random_split(rng: random.Random, n: int):
    """Random chunk boundaries covering range(n), with some empty chunks."""
    cuts = sorted(rng.randint(0, n) for _ in range(rng.randint(0, 6)))
    bounds = [0] + cuts + [n]
    return [(bounds[a], bounds[a + 1]) for a in range(len(bounds) - 1)]


# --------------------------------------------------------------------- rule
@pytest.mark.parametrize("seq,expected", SPEC_EXAMPLES)
def test_spec_examples(seq, expected):
    assert rosa_ids(seq, V).tolist() == expected
    assert rosa_ids_reference(seq, V).tolist() == expected


def test_oracle_literal_cross_check():
    """Check the oracle against a second, even more literal reading of the rule."""

    def literal(x):
        out = []
        for i in range(len(x)):
            pred = N
            for L in range(i, 0, -1):
                js = [j for j in range(L - 1, i) if x[j - L + 1 : j + 1] == x[i - L + 1 : i + 1]]
                if js:
                    pred = x[max(js) + 1]
                    break
            out.append(pred)
        return out

    rng = random.Random(1234)
    for _ in range(200):
        x = _random_seq(rng, 40)
        assert rosa_ids_reference(x, V).tolist() == literal(x)


def test_random_vs_oracle_short_many_seeds():
    for seed in range(2000):
        rng = random.Random(seed)
        x = _random_seq(rng, 60)
        np.testing.assert_array_equal(rosa_ids(x, V), rosa_ids_reference(x, V), err_msg=f"seed {seed}: {x}")


def test_random_vs_oracle_long():
    for seed in range(200):
        rng = random.Random(10_000 + seed)
        k = rng.randint(1, 4)
        x = [rng.randrange(k) for _ in range(rng.randint(100, 200))]
        np.testing.assert_array_equal(rosa_ids(x, V), rosa_ids_reference(x, V), err_msg=f"seed {seed}")


def test_structured_sequences_vs_oracle():
    seqs = [
        [7] * 150,
        [1, 2, 3] * 50,
        [1, 2] * 40 + [3] + [1, 2] * 40,
        ([0, 0, 1] * 20 + [0, 1, 1] * 20) * 2,
        [i % 5 for i in range(60)] + [i % 3 for i in range(60)],
    ]
    # a Fibonacci word, full of nested repeats
    a, b = [0], [0, 1]
    while len(b) < 180:
        a, b = b, b + a
    seqs.append(b[:180])
    # a Thue-Morse prefix, which avoids overlapping repeats
    seqs.append([bin(i).count("1") % 2 for i in range(180)])
    for x in seqs:
        np.testing.assert_array_equal(rosa_ids(x, V), rosa_ids_reference(x, V))


def test_large_token_ids():
    rng = random.Random(5)
    pool = [0, 50_000, 2**40, 123_456_789]
    for _ in range(200):
        x = [rng.choice(pool) for _ in range(rng.randint(0, 40))]
        vs = 2**41
        np.testing.assert_array_equal(rosa_ids(x, vs), rosa_ids_reference(x, vs))


# ---------------------------------------------------------------- automaton
def test_chunking_invariance():
    for seed in range(400):
        rng = random.Random(seed)
        x = _random_seq(rng, 200)
        full = rosa_ids(x, V)
        for _ in range(3):
            a = RosaAutomaton(V)
            parts = [a.extend(x[s:e]) for s, e in _random_split(rng, len(x))]
            got = np.concatenate(parts) if parts else np.empty(0, np.int64)
            np.testing.assert_array_equal(got, full)
            np.testing.assert_array_equal(a.tokens, np.asarray(x, dtype=np.int64))
        one = RosaAutomaton(V)
        by_one = [int(one.extend([t])[0]) for t in x]
        assert by_one == full.tolist()
        three = RosaAutomaton(V)
        by_three = np.concatenate([three.extend(x[s : s + 3]) for s in range(0, len(x), 3)] + [np.empty(0, np.int64)])
        np.testing.assert_array_equal(by_three, full)


def test_extend_accepts_arrays_and_lists():
    x = [3, 1, 3, 1, 3]
    exp = rosa_ids_reference(x, V)
    for inp in (x, tuple(x), np.asarray(x, np.int32), np.asarray(x, np.int64), np.asarray(x, np.uint16)):
        np.testing.assert_array_equal(RosaAutomaton(V).extend(inp), exp)
    with pytest.raises(TypeError):
        RosaAutomaton(V).extend(np.asarray([1.0, 2.0]))
    with pytest.raises(ValueError):
        RosaAutomaton(V).extend(np.zeros((2, 2), np.int64))


def test_empty_and_single_token():
    a = RosaAutomaton(V)
    out = a.extend([])
    assert out.dtype == np.int64 and out.shape == (0,)
    assert a.tokens.dtype == np.int64 and a.tokens.shape == (0,)
    assert len(a) == 0
    out = a.extend([5])
    assert out.tolist() == [N]
    assert a.tokens.tolist() == [5]
    assert a.extend(np.empty(0, np.int64)).shape == (0,)
    assert a.extend([5]).tolist() == [5]
    assert rosa_ids([], V).shape == (0,)
    assert rosa_ids_reference([], V).shape == (0,)


def test_dtype_and_range():
    rng = np.random.default_rng(0)
    for vs in (1, 2, 5, 50):
        x = rng.integers(0, vs, size=300)
        ids = rosa_ids(x, vs)
        assert ids.dtype == np.int64
        assert ids.shape == (300,)
        assert ids.min() >= 0 and ids.max() <= vs
        # every prediction is a token that occurred earlier in the history
        for i, v in enumerate(ids.tolist()):
            assert v == vs or v in set(x[:i].tolist())


def test_tokens_property_is_readonly_view():
    a = RosaAutomaton(V)
    a.extend([1, 2, 3])
    t = a.tokens
    with pytest.raises(ValueError):
        t[0] = 9
    a.extend(list(range(100)))  # growth must not corrupt earlier history
    assert a.tokens.tolist() == [1, 2, 3] + list(range(100))


def test_copy_branches_independently():
    rng = random.Random(7)
    for _ in range(50):
        x = _random_seq(rng, 120, 3)
        cut = rng.randint(0, len(x))
        tail_a = _random_seq(rng, 40, 3)
        tail_b = _random_seq(rng, 40, 3)
        a = RosaAutomaton(V)
        a.extend(x[:cut])
        b = a.copy()
        got_a = a.extend(tail_a)
        got_b = b.extend(tail_b)
        np.testing.assert_array_equal(got_a, rosa_ids(x[:cut] + tail_a, V)[cut:])
        np.testing.assert_array_equal(got_b, rosa_ids(x[:cut] + tail_b, V)[cut:])
        assert a.tokens.tolist() == x[:cut] + tail_a
        assert b.tokens.tolist() == x[:cut] + tail_b


def test_num_states_bound():
    rng = np.random.default_rng(3)
    for k in (1, 2, 10):
        x = rng.integers(0, k, 2000)
        a = RosaAutomaton(V)
        a.extend(x)
        assert a.num_states <= max(2 * len(x) - 1, 2)


@pytest.mark.parametrize(
    "name",
    ["constant", "period3", "period7", "binary", "wide"],
)
def test_performance_100k(name):
    n = 100_000
    rng = np.random.default_rng(0)
    x = {
        "constant": np.zeros(n, np.int64),
        "period3": np.tile([1, 2, 3], n // 3 + 1)[:n],
        "period7": np.tile(np.arange(7), n // 7 + 1)[:n],
        "binary": rng.integers(0, 2, n),
        "wide": rng.integers(0, 50_000, n),
    }[name]
    a = RosaAutomaton(50_001)
    t0 = time.perf_counter()
    ids = a.extend(x)
    dt = time.perf_counter() - t0
    assert ids.shape == (n,)
    # about 0.1-1 s on a normal CPU; the reference's quadratic walk takes minutes on the periodic inputs
    assert dt < 20.0, f"{name}: {dt:.1f}s"
    if name == "constant":
        assert ids[0] == 50_001 and (ids[1:] == 0).all()
    if name == "period3":
        assert ids[:3].tolist() == [50_001] * 3
        np.testing.assert_array_equal(ids[3:], x[1:-2])  # x[i-2]: what followed the last period


def test_long_random_vs_chunked_and_by_one():
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.integers(0, 3, 3000), np.zeros(500, np.int64), np.tile([1, 2], 500)])
    full = rosa_ids(x, V)
    a = RosaAutomaton(V)
    by_one = np.array([a.extend(x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_array_equal(by_one, full)


# -------------------------------------------------------------------- batch
def _whole_history_ids(hist_rows, T):
    return np.stack([rosa_ids(r, V)[len(r) - T :] for r in hist_rows]) if T else np.zeros((len(hist_rows), 0), np.int64)


def test_rosa_step_matches_whole_history():
    rng = np.random.default_rng(0)
    for trial in range(30):
        B = int(rng.integers(1, 5))
        P = int(rng.integers(0, 40))
        T = int(rng.integers(0, 30))
        past = rng.integers(0, 3, size=(B, P))
        inp = rng.integers(0, 3, size=(B, T))
        ids, new_past, autos = rosa_step(past if P or trial % 2 else None, inp, V, None)
        hist = np.concatenate([past, inp], axis=1)
        assert ids.dtype == np.int64 and ids.shape == (B, T)
        assert new_past.dtype == np.int64 and new_past.shape == (B, P + T)
        np.testing.assert_array_equal(new_past, hist)
        np.testing.assert_array_equal(ids, _whole_history_ids(hist, T))
        assert len(autos) == B
        for b in range(B):
            np.testing.assert_array_equal(autos[b].tokens, hist[b])


def test_rosa_step_none_past_is_empty_history():
    inp = np.array([[1, 2, 1, 2, 3, 1, 2], [4, 4, 4, 5, 4, 4, 6]])
    ids, new_past, _ = rosa_step(None, inp, V)
    assert ids.tolist() == [SPEC_EXAMPLES[0][1], SPEC_EXAMPLES[2][1]]
    np.testing.assert_array_equal(new_past, inp)


def test_rosa_step_cache_reuse_equals_rebuild():
    rng = np.random.default_rng(1)
    B = 3
    chunks = [rng.integers(0, 3, size=(B, int(rng.integers(1, 25)))) for _ in range(8)]
    past_c, autos = None, None  # carried with the cache
    past_r = None  # carried without the cache (rebuilds every call)
    for ch in chunks:
        ids_c, past_c, autos_new = rosa_step(past_c, ch, V, autos)
        if autos is not None:
            # cache hit: the same objects, extended in place
            assert all(x is y for x, y in zip(autos, autos_new))
        autos = autos_new
        ids_r, past_r, _ = rosa_step(past_r, ch, V, None)
        np.testing.assert_array_equal(ids_c, ids_r)
        np.testing.assert_array_equal(past_c, past_r)
    hist = np.concatenate(chunks, axis=1)
    np.testing.assert_array_equal(past_c, hist)
    np.testing.assert_array_equal(
        np.concatenate([rosa_step(None, hist, V)[0]], axis=1), np.stack([rosa_ids(r, V) for r in hist])
    )


def test_rosa_step_stale_cache_is_rebuilt():
    rng = np.random.default_rng(2)
    past = rng.integers(0, 3, size=(2, 20))
    inp = rng.integers(0, 3, size=(2, 10))
    stale = RosaAutomaton(V)
    stale.extend(past[0, :-1])  # one token short
    wrong_v = RosaAutomaton(V + 1)
    wrong_v.extend(past[1])
    ids, _, autos = rosa_step(past, inp, V, [stale, wrong_v])
    np.testing.assert_array_equal(ids, _whole_history_ids(np.concatenate([past, inp], 1), 10))
    assert autos[0] is not stale and autos[1] is not wrong_v
    assert stale.tokens.tolist() == past[0, :-1].tolist()  # untouched
    # a list that is too short, or None entries, also fall back to rebuild
    ids2, _, autos2 = rosa_step(past, inp, V, [None])
    np.testing.assert_array_equal(ids2, ids)
    ids3, _, _ = rosa_step(past, inp, V, [])
    np.testing.assert_array_equal(ids3, ids)


def test_rosa_step_broadcast_past():
    rng = np.random.default_rng(3)
    past1 = rng.integers(0, 3, size=(1, 25))
    inp = rng.integers(0, 3, size=(4, 12))
    ids, new_past, autos = rosa_step(past1, inp, V)
    assert new_past.shape == (4, 37)
    hist = np.concatenate([np.repeat(past1, 4, 0), inp], 1)
    np.testing.assert_array_equal(new_past, hist)
    np.testing.assert_array_equal(ids, _whole_history_ids(hist, 12))
    # a 1-D past is treated as [1, P]
    ids1d, _, _ = rosa_step(past1[0], inp, V)
    np.testing.assert_array_equal(ids1d, ids)
    # one shared cached automaton broadcast to all rows: each row must get
    # its own pre-call copy, whichever row is processed first
    shared = RosaAutomaton(V)
    shared.extend(past1[0])
    ids_s, _, autos_s = rosa_step(past1, inp, V, [shared])
    np.testing.assert_array_equal(ids_s, ids)
    assert len({id(a) for a in autos_s}) == 4
    for b in range(4):
        np.testing.assert_array_equal(autos_s[b].tokens, hist[b])
    # the same object repeated in a B-long list behaves the same
    shared2 = RosaAutomaton(V)
    shared2.extend(past1[0])
    ids_s2, _, _ = rosa_step(past1, inp, V, [shared2] * 4)
    np.testing.assert_array_equal(ids_s2, ids)


def test_rosa_step_batch_mismatch_raises():
    with pytest.raises(ValueError):
        rosa_step(np.zeros((2, 3), np.int64), np.zeros((3, 4), np.int64), V)
    with pytest.raises(ValueError):
        rosa_step(None, np.zeros(4, np.int64), V)


def test_rosa_step_empty_shapes():
    ids, new_past, autos = rosa_step(None, np.zeros((2, 0), np.int64), V)
    assert ids.shape == (2, 0) and ids.dtype == np.int64
    assert new_past.shape == (2, 0) and new_past.dtype == np.int64
    ids, new_past, autos = rosa_step(new_past, np.array([[5], [6]]), V, autos)
    assert ids.tolist() == [[N], [N]]
    ids, new_past, autos = rosa_step(new_past, np.array([[5], [7]]), V, autos)
    assert ids.tolist() == [[5], [N]]
    assert new_past.tolist() == [[5, 5], [6, 7]]
    # T = 0 with a non-empty past
    ids, new_past2, _ = rosa_step(new_past, np.zeros((2, 0), np.int64), V, None)
    assert ids.shape == (2, 0)
    np.testing.assert_array_equal(new_past2, new_past)


def test_rosa_step_padding_is_included():
    pad = 0
    inp = np.array([[3, 4, 3, pad, pad, pad]])
    ids, _, _ = rosa_step(None, inp, V)
    np.testing.assert_array_equal(ids[0], rosa_ids(inp[0], V))
    assert ids[0].tolist() == [N, N, 4, N, pad, pad]


def test_rosa_batch_wrapper_and_copy():
    rng = np.random.default_rng(4)
    chunks = [rng.integers(0, 3, size=(2, 7)) for _ in range(5)]
    rb = RosaBatch(V)
    outs = [rb.step(c) for c in chunks[:3]]
    branch = rb.copy()
    outs += [rb.step(c) for c in chunks[3:]]
    hist = np.concatenate(chunks, 1)
    np.testing.assert_array_equal(np.concatenate(outs, 1), np.stack([rosa_ids(r, V) for r in hist]))
    alt = rng.integers(0, 3, size=(2, 9))
    out_alt = branch.step(alt)
    hist_alt = np.concatenate(chunks[:3] + [alt], 1)
    np.testing.assert_array_equal(out_alt, _whole_history_ids(hist_alt, 9))
    np.testing.assert_array_equal(rb.past_tokens, hist)


# ------------------------------------------------------------ padded helper
def test_rosa_ids_for_padded_lengths_and_masks():
    rng = np.random.default_rng(5)
    B, T = 5, 30
    inp = rng.integers(0, 3, size=(B, T))
    lengths = np.array([30, 0, 1, 17, 29])
    exp = np.full((B, T), V, np.int64)
    for b in range(B):
        exp[b, : lengths[b]] = rosa_ids(inp[b, : lengths[b]], V)
    got = rosa_ids_for_padded(inp, lengths, V)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(rosa_ids_for_padded(inp, lengths=lengths, vocab_size=V), exp)
    # right-padding mask == lengths
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    np.testing.assert_array_equal(rosa_ids_for_padded(inp, mask, V), exp)
    np.testing.assert_array_equal(rosa_ids_for_padded(inp, attention_mask=mask.astype(bool), vocab_size=V), exp)
    # left padding: the ids of the real tokens are unaffected by where they sit
    left_inp = np.zeros_like(inp)
    left_mask = np.zeros_like(mask)
    for b in range(B):
        n = lengths[b]
        left_inp[b, T - n :] = inp[b, :n]
        left_mask[b, T - n :] = 1
    left = rosa_ids_for_padded(left_inp, left_mask, V)
    for b in range(B):
        n = lengths[b]
        assert (left[b, : T - n] == V).all()
        np.testing.assert_array_equal(left[b, T - n :], exp[b, :n])
    # no padding at all
    np.testing.assert_array_equal(
        rosa_ids_for_padded(inp, None, V), np.stack([rosa_ids(r, V) for r in inp])
    )
    with pytest.raises(ValueError):
        rosa_ids_for_padded(inp, np.array([31, 0, 0, 0, 0]), V)


# ----------------------------------------------- the PyTorch reference code
_REF_ROSA = Path("/work/ref/hierarchos/utils/rosa.py")


@pytest.fixture(scope="module")
def ref_rosa():
    if not _REF_ROSA.is_file():
        pytest.skip(f"reference implementation not found at {_REF_ROSA}")
    pytest.importorskip("torch")
    name = "_hierarchos_ref_rosa_for_tests"
    try:
        spec = importlib.util.spec_from_file_location(name, _REF_ROSA)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look the module up by name
        spec.loader.exec_module(mod)
    except Exception as exc:  # pragma: no cover - depends on the environment
        sys.modules.pop(name, None)
        pytest.skip(f"reference ROSA does not import here: {exc!r}")
    return mod


def test_matches_reference_implementation(ref_rosa):
    for seed in range(300):
        rng = random.Random(seed)
        x = _random_seq(rng, 600, rng.choice([2, 4, 8]))
        expected = [V if v == -1 else v for v in ref_rosa.ROSA(x)]
        assert rosa_ids(x, V).tolist() == expected, f"seed {seed}"


def test_matches_reference_chunked_pipeline(ref_rosa):
    for seed in range(100):
        rng = random.Random(50_000 + seed)
        x = _random_seq(rng, 400, 3)
        chunk = rng.randint(1, 64)
        expected = ref_rosa.precompute_rosa_ids_for_chunks(x, V, chunk)
        assert rosa_ids(x, V).tolist() == expected
