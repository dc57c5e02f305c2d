"""HierarchosLM scoring against the plain model forward (spec evaluation.md §2, §9).

Oracle: one batch-1 forward of ``context + continuation[:-1]`` from fresh state (right
padding to a fixed length is harmless for a batch-1 row: causality), log-softmax, sum of
the continuation's log-probabilities. Legacy checkpoints: the forward runs in chunks with
the drift seed at chunk starts, as the reference wrapper does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lm_eval.api.instance import Instance

from hierarchos_jax.eval.encoding import (
    encode_pair,
    encode_plain,
    rolling_windows,
    truncate_pair,
)
from hierarchos_jax.eval.lm import HierarchosLM, cut_at_stop
from hierarchos_jax.eval.scorer import ContinuationScorer, plan_batches
from hierarchos_jax.io.model_dir import load_model_dir
from hierarchos_jax.io.tokenizer import Tokenizer
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner

ORACLE_WIDTH = 48


@pytest.fixture(scope="module")
def tiny(reference_case_dir):
    loaded = load_model_dir(reference_case_dir / "model")
    return loaded.model, Tokenizer(reference_case_dir / "model")


def _oracle_logits(model, seq, *, chunk: int = 0, seeded: bool = True):
    """Logits ``[len(seq), V]`` of one batch-1 forward from fresh state; ``chunk`` > 0: in
    chunks of ``chunk`` tokens, with the carried drift as seed at every chunk start
    (legacy prefill) when ``seeded``."""
    cfg = model.config
    runner = Runner(model)
    mode = RunMode.eval(logit_parity=bool(cfg.inference_logit_parity or cfg.full_sample_bptt))
    carry = runner.init_carry(1, shared_memory=True)
    if not chunk:
        ids = np.zeros((1, ORACLE_WIDTH), np.int32)
        ids[0, :len(seq)] = seq
        return runner(ids, carry, mode=mode)[0].logits[0, :len(seq)]
    parts = []
    for a in range(0, len(seq), chunk):
        piece = np.zeros((1, chunk), np.int32)
        piece[0, :len(seq[a:a + chunk])] = seq[a:a + chunk]
        res, carry = runner(piece, carry, mode=mode, drift_seed=carry.state.drift if a > 0 and seeded else None)
        parts.append(res.logits[0])
    return jnp.concatenate(parts)[:len(seq)]


def _oracle(model, ctx, cont, **kw):
    """(sum log p(cont | ctx), greedy) from the plain forward of ``ctx + cont[:-1]``."""
    logits = _oracle_logits(model, list(ctx) + list(cont[:-1]), **kw)
    c, n = len(ctx), len(cont)
    sel = logits[c - 1:c - 1 + n]
    lp = jax.nn.log_softmax(sel, axis=-1)[jnp.arange(n), np.asarray(cont)]
    return float(jnp.sum(lp)), bool(jnp.all(jnp.argmax(sel, -1) == np.asarray(cont)))


def _ll(lm, pairs):
    return lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)


# ---------------------------------------------------------------- tokenization (pure)

def test_encode_pair_edge_cases(tiny):
    _, tok = tiny
    enc = lambda s: encode_plain(tok, s)
    eot = tok.eos_id
    # A BPE merge across the boundary: context "he|l", joint "he|ll|o" -> only "o" is scored.
    assert enc("hel") == [260, 76] and enc("hello") == [260, 308, 79]
    assert encode_pair(enc, eot, "hel", "lo") == ([260, 76], [79])
    # Empty context: [eot] + continuation; an eos-prefixed continuation supplies the context.
    assert encode_pair(enc, eot, "", "hello") == ([eot], enc("hello"))
    assert encode_pair(enc, eot, "", "<|endoftext|>hello") == ([eot], enc("hello"))
    assert encode_pair(enc, eot, "", "") == ([eot], [])
    # Trailing whitespace moves to the continuation; whitespace-only context becomes empty.
    assert encode_pair(enc, eot, "User: hi\n", " x") == (enc("User: hi"), enc("User: hi\n x")[len(enc("User: hi")):])
    assert encode_pair(enc, eot, "   ", "abc") == ([], enc("   abc"))
    assert truncate_pair([], enc("   abc"), 1024, eot) == ([eot], enc("   abc"))


def test_truncate_pair_rules():
    ctx, cont = list(range(1, 21)), [30, 31, 32]
    # input context + cont[:-1] fits max_length: keep the last L - |cont| + 1 context ids
    assert truncate_pair(ctx, cont, 10, 0) == (ctx[-8:], cont)
    assert truncate_pair(ctx, list(range(40, 55)), 10, 0) == ([20], list(range(45, 55)))
    assert truncate_pair([], cont, 10, 0) == ([0], cont)
    assert truncate_pair(ctx, [], 5, 0) == (ctx[-5:], [])
    c, y = truncate_pair(ctx, cont, 10, 0)
    assert len(c) + len(y) - 1 == 10


def test_rolling_windows_geometry():
    tokens = list(range(100, 146))  # n = 46, L = 10: (1,10) x4, then (5,6)
    windows = rolling_windows(tokens, 10, 0)
    assert [(len(c), len(p)) for c, p in windows] == [(1, 10)] * 4 + [(5, 6)]
    assert windows[0][0] == [0]
    predicted = [t for _, p in windows for t in p]
    assert predicted == tokens  # every token scored exactly once, in order
    for c, p in windows[1:]:
        start = tokens.index(p[0])
        assert c == tokens[start - len(c):start]  # context = the ids right before
    assert rolling_windows([], 10, 0) == []


def test_plan_batches_groups_contexts_by_phase():
    pairs = [([1, 2, 3], [4]), ([1, 2, 3], [5]), ([7, 8], [9]), ([1, 2, 3], [6]), ([7, 8], [1])]
    batches = plan_batches(pairs, 2, 2)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) <= 2 and len({len(pairs[i][0]) % 2 for i in b}) == 1


def test_cut_at_stop_uses_list_order():
    assert cut_at_stop("a. b\n c", ["\n", "."]) == "a. b"
    assert cut_at_stop("abc", ["x"]) == "abc"


# ------------------------------------------------------------ scoring vs the forward

HAND_PAIRS = [
    ("User: What is the capital of France?\n\nAssistant:", " The capital of France is Paris."),
    ("User: What is the capital of France?\n\nAssistant:", " Berlin."),
    ("hel", "lo"),                       # merge across the boundary
    ("", "hello world"),                 # empty context -> [eot]
    ("", "<|endoftext|>hello"),          # eos-prefixed continuation
    ("   ", "abc"),                      # whitespace-only context
    ("Assistant: yes\n", "no"),          # trailing newline moves
    ("hello", ""),                       # empty continuation -> (0.0, True)
]


def test_loglikelihood_equals_forward(tiny):
    model, tok = tiny
    with jax.default_matmul_precision("highest"):
        lm = HierarchosLM(model=model, tokenizer=tok, batch_size=1, show_progress=False)
        got = _ll(lm, HAND_PAIRS)
        for (ctx, cont), (lp, greedy) in zip(HAND_PAIRS, got):
            c, y = lm.encode_request(ctx, cont)
            if not y:
                assert (lp, greedy) == (0.0, True)
                continue
            want = _oracle(model, c, y)
            assert abs(lp - want[0]) < 2e-5 * max(1.0, abs(want[0])), (ctx, cont, lp, want)
            assert greedy == want[1]
            assert isinstance(lp, float) and isinstance(greedy, bool)
        # A one-token continuation chosen as the model's argmax is greedy.
        c, _ = lm.encode_request("User: hi", " x")
        best = int(np.argmax(np.asarray(_oracle_logits(model, c)[-1])))
        (lp, greedy), = lm.scorer.score([(c, [best])])
        assert greedy and lp < 0


def test_loglikelihood_truncates_to_max_length(tiny):
    model, tok = tiny
    with jax.default_matmul_precision("highest"):
        lm = HierarchosLM(model=model, tokenizer=tok, batch_size=1, max_length=16, show_progress=False)
        ctx = "User: What is the capital of France?\n\nAssistant: The capital of France is Paris. And Spain?"
        cont = " Madrid, of course."
        c, y = lm.encode_request(ctx, cont)
        full_c, _ = encode_pair(lambda s: encode_plain(tok, s), tok.eos_id, ctx, cont)
        assert len(full_c) > len(c) and len(c) + len(y) - 1 == 16 and c == full_c[-len(c):]
        ((lp, _),) = _ll(lm, [(ctx, cont)])
        want = _oracle(model, c, y)
        assert abs(lp - want[0]) < 2e-5 * max(1.0, abs(want[0]))


def test_loglikelihood_rolling_windows_from_fresh_state(tiny):
    model, tok = tiny
    text = "User: What is the capital of France?\n\nAssistant: The capital of France is Paris."
    ids = encode_plain(tok, text)
    with jax.default_matmul_precision("highest"):
        lm = HierarchosLM(model=model, tokenizer=tok, batch_size=1, max_length=10, show_progress=False)
        (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
        windows = rolling_windows(ids, 10, tok.eos_id)
        assert len(windows) >= 4 and len(windows[-1][0]) > 1  # ends in a partial window
        want = sum(_oracle(model, c, y)[0] for c, y in windows)
        assert abs(total - want) < 2e-5 * abs(want)
        # A document within max_length is one window: loglikelihood("", text).
        short = "User: hi\nAssistant: yes"
        assert len(encode_plain(tok, short)) <= 10
        (single,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0)], disable_tqdm=True)
        ((lp, _),) = _ll(lm, [("", short)])
        assert abs(single - lp) < 1e-6 * abs(lp)


def test_batched_scores_equal_batch_one(tiny):
    """Rows never interact: any batch size gives the batch-1 numbers (the reference's
    batch-global early exits make its rows depend on each other, spec §2.5)."""
    model, tok = tiny
    docs = [("User: What is the capital of France?\n\nAssistant:", [" Paris.", " Berlin, I think.", " Rome", " no"]),
            ("Question: two plus two?\nAnswer:", [" four", " five", " twenty-two", " 4"]),
            ("Hi", [" there", "!"]), ("", ["hello"]), ("The opposite of hot is", [" cold", " warm", " loud"])]
    pairs = [(c, y) for c, ys in docs for y in ys]
    with jax.default_matmul_precision("highest"):
        one = _ll(HierarchosLM(model=model, tokenizer=tok, batch_size=1, show_progress=False), pairs)
        four = _ll(HierarchosLM(model=model, tokenizer=tok, batch_size=4, show_progress=False), pairs)
    for (a, ga), (b, gb) in zip(one, four):
        assert abs(a - b) < 1e-5 * max(1.0, abs(a)) and ga == gb


def test_legacy_checkpoint_drift_seeds_at_chunk_starts(tiny):
    """Legacy (non-exact) checkpoint with a small training_chunk_size: contexts and
    continuations cross several chunk starts, each seeded with the carried drift."""
    model, _ = tiny
    cfg = model.config.replace(inference_logit_parity=False, full_sample_bptt=False, training_chunk_size=4)
    legacy = Hierarchos(cfg, rngs=nnx.Rngs(0))
    nnx.update(legacy, nnx.state(model))
    rng = np.random.default_rng(3)
    ctx_a, ctx_b = rng.integers(1, 512, 7).tolist(), rng.integers(1, 512, 9).tolist()
    pairs = [(ctx_a, rng.integers(1, 512, 6).tolist()), (ctx_a, rng.integers(1, 512, 2).tolist()),
             (ctx_b, rng.integers(1, 512, 5).tolist())]
    with jax.default_matmul_precision("highest"):
        # One batch: rows at different positions, seeded at different steps.
        got = ContinuationScorer(legacy, batch_size=4).score(pairs)
        for (c, y), (lp, greedy) in zip(pairs, got):
            want = _oracle(legacy, c, y, chunk=4)
            assert abs(lp - want[0]) < 2e-5 * max(1.0, abs(want[0])) and greedy == want[1]
            unseeded = _oracle(legacy, c, y, chunk=4, seeded=False)
            assert not math.isclose(lp, unseeded[0], rel_tol=1e-6)  # the seeds matter here


def test_generate_until_greedy_with_stop_strings(tiny):
    model, tok = tiny
    lm = HierarchosLM(model=model, tokenizer=tok, batch_size=1, show_progress=False)
    prompt = "User: What is the capital of France?\n\nAssistant:"
    reqs = [Instance("generate_until", {}, (prompt, {"until": ["zzzz"], "max_gen_toks": 8}), 0),
            Instance("generate_until", {}, (prompt, {"until": "zzzz", "max_gen_toks": 0}), 1)]
    with jax.default_matmul_precision("highest"):
        free, empty = lm.generate_until(reqs, disable_tqdm=True)
        assert empty == "" and free
        # Greedy: every generated token is the argmax after the prompt and the tokens before it.
        ids = encode_plain(tok, free)
        assert tok.decode(ids, skip_special_tokens=True) == free
        ((_, greedy),) = lm.scorer.score([(encode_plain(tok, prompt), ids)])
        assert greedy
        # A stop string cuts the text before its first occurrence.
        stop = free[1:3]
        cut = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 8}), 0)],
                                disable_tqdm=True)
        assert cut[0] == free.split(stop, 1)[0]
