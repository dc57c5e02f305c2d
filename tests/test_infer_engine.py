"""The generation engine on the reference ``tiny`` model: the golden greedy run, equality with
the whole-sequence forward (exact checkpoint) and with the reference's call-per-token loop
(legacy checkpoint: chunked prefill and drift seeds), continuation, batches, stop rules."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.infer import GenerationEngine, SamplingParams, StopConditions
from hierarchos_jax.io.model_dir import load_model_dir
from hierarchos_jax.io.tokenizer import Tokenizer
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner

GREEDY = SamplingParams(temperature=0.0)
ATOL, RTOL = 2e-4, 1e-4  # the fixture README's logits tolerance


@pytest.fixture(scope="module")
def tiny(reference_case_dir):
    loaded = load_model_dir(reference_case_dir / "model")
    golden = dict(np.load(reference_case_dir / "golden.npz"))
    memory = WorkingMemory(golden["gen_in_ltm_fast_vals"][None], golden["gen_in_ltm_mom_vals"][None],
                           golden["gen_in_ltm_timestamps"][None], np.zeros((1, loaded.config.ltm_slots), np.int32))
    tok = Tokenizer(reference_case_dir / "model")
    return loaded, golden, memory, tok


@pytest.fixture(scope="module")
def engine(tiny):
    loaded, _, _, tok = tiny
    return GenerationEngine(loaded.model, loaded.config, tok)


@pytest.fixture(scope="module")
def legacy(tiny):
    """The tiny model as a legacy checkpoint with 8-token training chunks (so prompts and
    generations cross chunk starts, where drift seeds are given), prefilled in 4-token
    pieces (so pieces, seeded chunk starts and single tokens alternate in one prompt)."""
    loaded, _, _, tok = tiny
    cfg = loaded.config.replace(inference_logit_parity=False, full_sample_bptt=False, training_chunk_size=8)
    model = Hierarchos(cfg, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(loaded.model))
    return GenerationEngine(model, cfg, tok, prefill_piece=4), model


def prompt_of(golden, n=None):
    ids = [int(t) for t in golden["gen_prompt_ids"]]
    return ids if n is None else ids[:n]


def reference_loop(model, prompt, max_new, *, legacy_chunk, memory, carry=None, eos=None):
    """The reference's greedy loop (generate_sample) through :class:`Runner`: prefill split at
    absolute multiples of the chunk, then one call per token; drift seeds at chunk starts for
    legacy checkpoints. Returns (ids, per-call last logits, carry)."""
    cfg = model.config
    exact = bool(cfg.inference_logit_parity or cfg.full_sample_bptt)
    runner = Runner(model)
    mode = RunMode.eval(logit_parity=exact)
    carry = carry if carry is not None else runner.init_carry(1, memory=memory)
    pos = int(carry.state.position)
    L = 0 if exact else legacy_chunk

    def seed(p, c):
        return c.state.drift if (L and p > 0 and p % L == 0) else None

    ranges, s, P = [], 0, len(prompt)
    while s < P:
        e = min(P, s + (L - (pos + s) % L)) if L else P
        ranges.append((s, e))
        s = e
    for s, e in ranges:
        res, carry = runner(np.asarray([prompt[s:e]]), carry, mode=mode, drift_seed=seed(pos + s, carry),
                            position=pos + s)
    pos += P
    logits = [np.asarray(res.logits)[0, -1]]
    ids = []
    for _ in range(max_new):
        t = int(np.argmax(logits[-1]))
        if t == eos:
            break
        ids.append(t)
        res, carry = runner(np.asarray([[t]]), carry, mode=mode, drift_seed=seed(pos, carry), position=pos)
        pos += 1
        logits.append(np.asarray(res.logits)[0, -1])
    return ids, np.stack(logits), carry


def gen(engine, prompt, sampling=GREEDY, *, memory=None, state=None, **stop):
    """One generation recording every call's logits; EOS off unless ``eos_ids`` is given.
    (All tests record logits, so they share compiled programs.)"""
    stop.setdefault("eos_ids", ())
    start = {"state": state} if state is not None else {"memory": memory}
    return engine.generate(prompt, sampling, StopConditions(**stop), record_logits=True, **start)


def gen_batch(engine, prompts, sampling=GREEDY, *, memory=None, state=None, batch_mode="independent", **stop):
    stop.setdefault("eos_ids", ())
    start = {"state": state} if state is not None else {"memory": memory}
    return engine.generate_batch(prompts, sampling, StopConditions(**stop), record_logits=True,
                                 batch_mode=batch_mode, **start)


# ----------------------------------------------------------------------------- parity

def test_greedy_reproduces_the_reference_golden_run(tiny, engine):
    """generate_sample on the fixture: 24 greedy tokens, 25 per-call logits, final state."""
    _, g, memory, _ = tiny
    r = gen(engine, prompt_of(g), memory=memory, max_new_tokens=24, eos_ids=(0,))
    np.testing.assert_array_equal(r.token_ids, g["gen_generated_ids"])
    np.testing.assert_allclose(r.step_logits, g["gen_step_logits"], atol=ATOL, rtol=RTOL)
    assert r.stop_reason == "max_new_tokens" and len(r.step_s) == 24
    st = r.state.state
    for name, ours in (("h_state", st.h_state), ("l_state", st.l_state), ("prev_context", st.prev_context),
                       ("target_context", st.target_context), ("drift_state", st.drift)):
        np.testing.assert_allclose(np.asarray(ours), g["gen_final_" + name], atol=ATOL, rtol=RTOL, err_msg=name)
    assert int(st.position) == 46
    np.testing.assert_array_equal(r.state.rosa[0].tokens, g["gen_final_rosa_past_tokens"][0])


def test_exact_checkpoint_equals_the_whole_sequence_forward(tiny, engine):
    """Every step's logits equal the parity-eval forward over prompt + generated tokens, and
    the greedy token is that forward's argmax — also when a second prompt continues the
    first generation's state (prefill starting at the carried position)."""
    loaded, g, memory, _ = tiny
    p1, p2 = prompt_of(g, 13), prompt_of(g)[5:20]
    r1 = gen(engine, p1, memory=memory, max_new_tokens=9)
    r2 = gen(engine, p2, state=r1.state, max_new_tokens=7)
    seq = p1 + r1.token_ids + p2 + r2.token_ids
    runner = Runner(loaded.model)
    res, _ = runner(np.asarray([seq]), runner.init_carry(1, memory=memory), mode=RunMode.eval(logit_parity=True))
    full = np.asarray(res.logits)[0]
    a, b = len(p1), len(p1) + len(r1.token_ids) + len(p2)
    expected1, expected2 = full[a - 1:a + len(r1.token_ids)], full[b - 1:b + len(r2.token_ids)]
    np.testing.assert_allclose(r1.step_logits, expected1, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(r2.step_logits, expected2, atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(r1.token_ids, np.argmax(expected1, -1)[:len(r1.token_ids)])
    np.testing.assert_array_equal(r2.token_ids, np.argmax(expected2, -1)[:len(r2.token_ids)])
    assert int(r2.state.state.position) == len(seq)
    np.testing.assert_array_equal(r2.state.rosa[0].tokens, seq)
    # the first result's state was not consumed by the continuation
    assert int(r1.state.state.position) == len(p1) + 9 and len(r1.state.rosa[0]) == len(p1) + 9


def test_legacy_checkpoint_equals_the_reference_loop_with_chunks_and_seeds(tiny, legacy):
    """Legacy eval (early exits), 8-token chunks: prefill ranges at absolute multiples of 8 and
    drift seeds at chunk starts, in the prompt and while decoding, and across a continued
    turn that starts mid-chunk."""
    _, g, memory, _ = tiny
    eng, model = legacy
    # chunks [0,8) [8,16), seeds at 16, 24, 32; turn 2 starts at 36: [36,40) [40,48) seeded, ...
    p1, p2 = prompt_of(g, 16), prompt_of(g)[5:17]
    r1 = gen(eng, p1, memory=memory, max_new_tokens=20)
    ids1, logits1, carry = reference_loop(model, p1, 20, legacy_chunk=8, memory=memory)
    assert r1.token_ids == ids1
    np.testing.assert_allclose(r1.step_logits, logits1, atol=ATOL, rtol=RTOL)
    r2 = gen(eng, p2, state=r1.state, max_new_tokens=12)
    ids2, logits2, _ = reference_loop(model, p2, 12, legacy_chunk=8, memory=memory, carry=carry)
    assert int(r1.state.state.position) % 8 != 0  # the second prompt starts mid-chunk
    assert r2.token_ids == ids2
    np.testing.assert_allclose(r2.step_logits, logits2, atol=ATOL, rtol=RTOL)
    # the seeds matter: without chunking (L_chunk = 0) the run differs
    plain = gen(GenerationEngine(model, model.config, prefill_chunk_size=0), p1, memory=memory, max_new_tokens=20)
    assert np.abs(plain.step_logits - r1.step_logits).max() > 1e-4


# ------------------------------------------------------------------------------ batches

def test_independent_batch_rows_equal_their_single_runs(tiny, engine, legacy):
    """Rows of different lengths (out of phase: 13 and 20 tokens, h_stride 2) produce what
    they produce alone, for exact and legacy (seeded) checkpoints, and when a batch is
    continued with rows starting their prompts at different positions."""
    _, g, memory, _ = tiny
    prompts = [prompt_of(g, 13), prompt_of(g)[2:22]]
    for eng in (engine, legacy[0]):
        batch = gen_batch(eng, prompts, memory=memory, max_new_tokens=10)
        for p, r in zip(prompts, batch):
            single = gen(eng, p, memory=memory, max_new_tokens=10)
            assert r.token_ids == single.token_ids
            np.testing.assert_allclose(r.step_logits, single.step_logits, atol=1e-5, rtol=1e-5)
        st = batch[0].state
        assert st.layout == "rows" and np.asarray(st.state.position).tolist() == [23, 30]
    more = [prompt_of(g)[4:15], prompt_of(g)[1:7]]
    cont = gen_batch(legacy[0], more, state=batch[0].state, max_new_tokens=10)
    for p, q, r in zip(prompts, more, cont):
        single = gen(legacy[0], p, memory=memory, max_new_tokens=10)
        single = gen(legacy[0], q, state=single.state, max_new_tokens=10)
        assert r.token_ids == single.token_ids
        np.testing.assert_allclose(r.step_logits, single.step_logits, atol=1e-5, rtol=1e-5)


def test_independent_batch_sampling_and_early_finish(tiny, engine):
    """A sampled row 0 equals its single run with the same seed; a row that stops early
    keeps its state while the other goes on."""
    _, g, memory, _ = tiny
    sampling = SamplingParams(temperature=1.3, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=5)
    p0, p1 = prompt_of(g, 9), prompt_of(g, 17)
    single = gen(engine, p0, sampling, memory=memory, max_new_tokens=12)
    eos = single.token_ids[4]
    batch = gen_batch(engine, [p0, p1], sampling, memory=memory, max_new_tokens=12, eos_ids=(eos,))
    first = single.token_ids.index(eos)
    assert batch[0].token_ids == single.token_ids[:first] and batch[0].stop_reason == "eos"
    assert np.asarray(batch[0].state.state.position).tolist()[0] == len(p0) + first


def test_joint_batch_of_equal_prompts_equals_the_single_run(tiny, engine):
    """A joint batch shares one position; identical rows make the batch-mean early exits
    equal to the single row's."""
    _, g, memory, _ = tiny
    p = prompt_of(g, 15)
    single = gen(engine, p, memory=memory, max_new_tokens=8)
    for r in gen_batch(engine, [p, p], memory=memory, max_new_tokens=8, batch_mode="joint"):
        assert r.token_ids == single.token_ids
        np.testing.assert_allclose(r.step_logits, single.step_logits, atol=1e-5, rtol=1e-5)


def test_joint_batch_of_different_lengths_with_per_row_positions_and_seeds(tiny):
    """Joint rows of different lengths (13 and 10 tokens: out of phase, h_stride 2) on a legacy
    checkpoint with 8-token chunks, so rows start chunks at different calls and only those
    rows get drift seeds. With one refinement and no pondering step nothing is batch-global,
    so every row must equal its single run; positions are carried per row."""
    loaded, g, memory, tok = tiny
    cfg = loaded.config.replace(inference_logit_parity=False, full_sample_bptt=False, training_chunk_size=8,
                                max_l_steps=1, max_h_steps=1)
    model = Hierarchos(cfg, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(loaded.model))
    eng = GenerationEngine(model, cfg, tok, prefill_piece=4)
    prompts = [prompt_of(g, 13), prompt_of(g)[3:13]]
    joint = gen_batch(eng, prompts, memory=memory, max_new_tokens=12, batch_mode="joint")
    for p, r in zip(prompts, joint):
        single = gen(eng, p, memory=memory, max_new_tokens=12)
        assert r.token_ids == single.token_ids
        np.testing.assert_allclose(r.step_logits, single.step_logits, atol=2e-5, rtol=1e-5)
    st = joint[0].state
    assert st.layout == "batch" and np.asarray(st.state.position).tolist() == [25, 22]
    with pytest.raises(ValueError, match="same position"):
        gen_batch(eng, prompts, state=st, max_new_tokens=2, batch_mode="joint")


# --------------------------------------------------------------------------- sampling

def test_sampling_is_reproducible_and_seeds_differ(tiny, engine):
    _, g, memory, _ = tiny

    def run(**kw):
        return gen(engine, prompt_of(g), SamplingParams(**kw), memory=memory, max_new_tokens=16).token_ids

    assert run(temperature=1.5, seed=1) == run(temperature=1.5, seed=1)
    assert run(temperature=1.5, seed=1) != run(temperature=1.5, seed=2)
    greedy = run(temperature=0.0)
    assert run(temperature=0.9, top_k=1, seed=3) == greedy
    assert run(temperature=0.9, top_p=1e-7, seed=3) == greedy


def test_repetition_penalty_uses_the_generated_tokens_only(tiny, engine):
    """Greedy with a penalty: every token is the argmax of that step's logits penalised over
    the tokens generated before it (the prompt is not history)."""
    _, g, memory, _ = tiny
    rho = 1.3
    r = gen(engine, prompt_of(g), SamplingParams(temperature=0.0, repetition_penalty=rho), memory=memory,
            max_new_tokens=16)
    for i, token in enumerate(r.token_ids):
        z = r.step_logits[i].copy()
        for t in set(r.token_ids[:i]):
            z[t] = z[t] / rho if z[t] > 0 else z[t] * rho
        assert token == int(np.argmax(z)), i
    assert r.token_ids != gen(engine, prompt_of(g), memory=memory, max_new_tokens=16).token_ids


# ------------------------------------------------------------------------------- stops

def test_eos_stop_is_neither_appended_nor_fed(tiny, engine):
    _, g, memory, _ = tiny
    P = len(g["gen_prompt_ids"])
    r = gen(engine, prompt_of(g), memory=memory, max_new_tokens=24, eos_ids=(154,))
    assert r.token_ids == [103, 307] and r.stop_reason == "eos"
    assert int(r.state.state.position) == P + 2 and len(r.state.rosa[0]) == P + 2


def test_max_new_tokens_zero_and_one(tiny, engine):
    _, g, memory, _ = tiny
    P = len(g["gen_prompt_ids"])
    r0 = gen(engine, prompt_of(g), memory=memory, max_new_tokens=0)
    assert r0.token_ids == [] and r0.stop_reason == "max_new_tokens" and int(r0.state.state.position) == P
    r1 = gen(engine, prompt_of(g), memory=memory, max_new_tokens=1)
    assert r1.token_ids == [103] and int(r1.state.state.position) == P + 1  # the end-of-turn flush


def test_stop_string_cuts_the_text_and_is_not_fed(tiny, engine):
    _, g, memory, tok = tiny
    P = len(g["gen_prompt_ids"])
    full = gen(engine, prompt_of(g), memory=memory, max_new_tokens=24)
    assert full.text == tok.decode(full.token_ids, skip_special_tokens=True)
    stop_at = " h h h"
    cut = full.text.index(stop_at)
    stream = engine.generate_stream(prompt_of(g), GREEDY, StopConditions(
        max_new_tokens=24, eos_ids=(), stop_strings=(stop_at,)), memory=memory, record_logits=True)
    shown = "".join(e.text for e in stream)
    r = stream.result
    assert r.stop_reason == "stop_string" and r.text == full.text[:cut] and shown == r.text
    assert r.token_ids == full.token_ids[:len(r.token_ids)]
    assert int(r.state.state.position) == P + len(r.token_ids) - 1  # the completing token is not fed


def test_uncertainty_stop_after_the_first_fed_token(tiny, engine):
    _, g, memory, _ = tiny
    P = len(g["gen_prompt_ids"])
    r = gen(engine, prompt_of(g), memory=memory, max_new_tokens=24, eos_ids=(0,), eos_stop_prob=1e-9)
    assert r.token_ids == [103] and r.stop_reason == "uncertainty" and int(r.state.state.position) == P + 1
    r = gen(engine, prompt_of(g), memory=memory, max_new_tokens=24, eos_ids=(0,), entropy_stop_threshold=1e-3,
            entropy_stop_min_tokens=3, entropy_stop_top_prob=0.0)
    assert len(r.token_ids) == 3 and r.stop_reason == "uncertainty"


def test_marker_stop_and_interrupt(tiny, engine):
    """The chat's "###" rule (not for the first token; the token is kept, not fed, not
    shown) through a tokenizer whose token 307 reads "###"; and stop() mid-stream."""
    loaded, g, memory, _ = tiny

    class MarkerTokenizer:
        eos_id = 0

        def decode(self, ids, skip_special_tokens=False):
            return "".join("###" if i == 307 else "a" for i in ids)

    eng = GenerationEngine(loaded.model, loaded.config)
    eng.tokenizer = MarkerTokenizer()  # (no check_vocab: set after construction)
    r = gen(eng, prompt_of(g), memory=memory, max_new_tokens=24, stop_marker="###")
    assert r.token_ids == [103, 307] and r.stop_reason == "stop_marker" and r.text == "a"
    stream = engine.generate_stream(prompt_of(g), GREEDY, StopConditions(max_new_tokens=24, eos_ids=()),
                                    memory=memory, record_logits=True)
    events = [next(stream) for _ in range(3)]
    stream.stop()
    r = stream.result
    assert [e.token_id for e in events] == r.token_ids[:3] and r.stop_reason == "interrupted"
    assert int(r.state.state.position) == len(g["gen_prompt_ids"]) + len(r.token_ids)


def test_bad_requests_are_clear_errors(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([], GREEDY)
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        engine.generate([1, 512], GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([1, 2], SamplingParams(temperature=1.0, top_p=0.0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([1, 2], GREEDY, StopConditions(max_new_tokens=-1))
    with pytest.raises(ValueError, match="joint|independent"):
        engine.generate_batch([[1, 2]], GREEDY, batch_mode="sideways")
