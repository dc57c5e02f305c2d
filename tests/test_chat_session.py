"""ChatSession on the reference ``tiny`` model, driven directly: turns and positions, carry,
interrupt, seeds, feedback flows and their memory writes (against a Titans oracle), the
replay's value and gradient (against the eval forward), persistence and recall, filters."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hierarchos_jax.infer.chat import ChatOptions, ChatSession
from hierarchos_jax.infer.engine import GenerationEngine, StopConditions
from hierarchos_jax.infer.memory import MemoryBank, MemoryFilter
from hierarchos_jax.infer.online import prepare_gradients
from hierarchos_jax.infer.prompt import format_prompt
from hierarchos_jax.infer.sampling import SamplingParams
from hierarchos_jax.io.model_dir import load_model_dir
from hierarchos_jax.io.tokenizer import Tokenizer
from hierarchos_jax.model.hierarchos import forward
from hierarchos_jax.model.ltm import SLOT_CLIP
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.rosa import RosaAutomaton
from hierarchos_jax.model.state import zeros_state

OPTS = ChatOptions(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=7, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(reference_case_dir):
    loaded = load_model_dir(reference_case_dir / "model")
    return loaded, Tokenizer(reference_case_dir / "model")


def s_params(seed=7):
    return SamplingParams(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=seed)


def session(tiny, **kw):
    loaded, tok = tiny
    return ChatSession(loaded.model, loaded.config, tok, dataclasses.replace(OPTS, **kw))


def answered(s, line):
    """A turn with a non-empty answer (each turn draws with the next seed)."""
    for _ in range(6):
        turn(s, line)
        if s.pending is not None:
            return
    raise AssertionError("no non-empty answer in 6 turns")


def turn(s, line):
    reply = s.handle(line)
    assert reply.kind == "turn"
    text = "".join(reply)
    return reply, text


def test_turns_reset_or_carry_the_state_and_match_the_engine(tiny):
    loaded, tok = tiny
    s = session(tiny)
    reply, text = turn(s, "Hello")
    prompt = tok.encode(format_prompt("Hello", alpaca=False))
    engine = GenerationEngine(loaded.model, loaded.config, tok)
    view, flt = s.bank.retrieval_view(s.filter)
    want = engine.generate(prompt, s_params(), StopConditions(max_new_tokens=6, stop_marker="###"), memory=view,
                           source_filter=flt)
    assert reply.result.token_ids == want.token_ids and text == want.text
    fed = len(want.token_ids) - (want.stop_reason == "stop_marker")
    assert s.position == len(prompt) + fed
    reply2, _ = turn(s, "Hi")  # carry off: starts again at 0
    p2 = tok.encode(format_prompt("Hi", alpaca=False))
    assert s.position == len(p2) + len(reply2.result.token_ids) - (reply2.result.stop_reason == "stop_marker")

    c = session(tiny, carry_state=True)
    r1, _ = turn(c, "Hello")
    after1 = c.position
    r2, _ = turn(c, "Hi")
    assert c.position == after1 + len(p2) + len(r2.result.token_ids) - (r2.result.stop_reason == "stop_marker")
    assert len(c.state.rosa[0]) == c.position  # the ROSA history holds every fed token


def test_interrupt_stops_the_answer_and_feeds_what_was_shown(tiny):
    s = session(tiny, max_new_tokens=200, repetition_penalty=1.0)
    reply = s.handle("Tell me a story")
    next(iter(reply))
    reply.interrupt()
    reply.finish()
    res = reply.result
    assert res.stop_reason == "interrupted" and 1 <= len(res.token_ids) < 200
    assert s.position == len(res.prompt_ids) + len(res.token_ids)
    assert s.handle("/status").lines[0].startswith(f"position {s.position}")


def test_sampling_with_a_seed_is_reproducible(tiny):
    a = [turn(session(tiny, seed=3), "Hello")[0].result.token_ids for _ in range(2)]
    b = turn(session(tiny, seed=4), "Hello")[0].result.token_ids
    assert a[0] == a[1] and len(a[0]) > 0
    assert b != a[0]


def titans_oracle(cfg, memory, grads, idx, lr, source):
    """spec model.md §4.5 in numpy, for a shared batch-1 memory."""
    fast, mom, ts, src = (np.asarray(a)[0].astype(np.float64) for a in memory)
    S, D = fast.shape
    idx = idx.reshape(-1)
    g = grads.reshape(-1, D).astype(np.float64)
    sums, counts = np.zeros((S, D)), np.zeros(S)
    for i, gi in zip(idx, g):
        if i >= 0:
            sums[i] += gi
            counts[i] += 1
    touched = counts > 0
    mean = sums / (counts[:, None] + 1e-8)
    T = grads.shape[1]
    retention = (1 - cfg.ltm_forget_rate) ** (T / cfg.effective_reference_chunk_len)
    new_mom = cfg.ltm_momentum * mom
    new_mom[touched] = np.clip(new_mom[touched] + mean[touched], -SLOT_CLIP, SLOT_CLIP)
    new_fast = retention * fast
    new_fast[touched] = np.clip(retention * fast[touched] - lr * (new_mom[touched] + cfg.ltm_weight_decay
                                                                  * fast[touched]), -SLOT_CLIP, SLOT_CLIP)
    src = np.where(touched, source, src)
    return new_fast, new_mom, src, touched


def test_feedback_flows_write_the_memory_as_the_titans_rule(tiny):
    loaded, tok = tiny
    cfg = loaded.config
    s = session(tiny)
    assert s.handle("yes").finish().kind == "turn"  # nothing pending: an ordinary prompt
    answered(s, "Hello")
    pend = s.pending
    assert s.bank.summary()["written_slots"] == 0
    before = s.bank.memory
    loss, grads, idx = s.learner.replay(before, pend.prompt_ids, pend.response_ids)
    out = s.handle("good")
    assert out.kind == "message" and out.lines[0].startswith("Reinforced") and s.pending is None
    fast, mom, src, touched = titans_oracle(cfg, before, prepare_gradients(grads, 0.75), idx, 1e-3, 1)
    np.testing.assert_allclose(s.bank.fast, fast, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(s.bank.memory.mom)[0], mom, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(s.bank.sources, src)
    assert s.bank.summary()["by_source"]["user"] == touched.sum() > 0
    assert f"loss {loss:.4f}" in out.lines[0]

    answered(s, "What is 2+2?")  # momentum is zero again after a turn
    assert not np.any(np.asarray(s.bank.memory.mom))
    fast_before = s.bank.fast.copy()
    no = s.handle("no")
    assert no.kind == "message" and no.lines[0].startswith("Discouraged") and s.pending is not None
    after_no = s.bank.fast.copy()
    assert not np.array_equal(after_no, fast_before)
    again = s.handle("no")  # the same answer is not penalised twice, nor answered
    assert again.kind == "message" and again.lines[0].startswith("Already noted")
    np.testing.assert_array_equal(s.bank.fast, after_no)
    corr = s.handle("it's 4")
    assert corr.kind == "message" and "correction '4'" in corr.lines[-1] and s.pending is None
    assert s.bank.summary()["by_source"]["correction"] > 0
    assert [r.source for r in s.bank.query(source=3)] and all(r.source == 3 for r in s.bank.query(source=3))
    assert s.handle("/learn").lines == ["Nothing pending to learn."]


def test_replay_equals_the_eval_forward_and_its_gradient(tiny):
    """The differentiable replay (training loop structure) gives the eval forward's loss on
    the exact tiny checkpoint, and its gradient is the derivative w.r.t. the retrieved values."""
    loaded, tok = tiny
    model, cfg = loaded.model, loaded.config
    s = session(tiny)
    prompt = tok.encode(format_prompt("What is 2+2?", alpaca=False))
    labels = tok.encode("4") + [tok.eos_id]
    memory = s.bank.memory
    loss, grads, idx = s.learner.replay(memory, prompt, labels)
    seq = prompt + labels
    T = len(seq)
    rosa = jnp.asarray(RosaAutomaton(cfg.vocab_size).extend(seq)[None], jnp.int32)
    ids = jnp.asarray([seq], jnp.int32)
    state = zeros_state(cfg, 1, shared_memory=True)

    @jax.jit
    def eval_loss(probe):
        out, _ = forward(model, ids, state, mode=RunMode.eval(logit_parity=True), rosa_ids=rosa,
                         retrieval_probe=probe)
        logp = jax.nn.log_softmax(model.logits(out.hidden), axis=-1)[0]
        tgt = jnp.take_along_axis(logp[:-1], ids[0, 1:, None], axis=-1)[:, 0]
        return -jnp.mean(tgt[len(prompt) - 1:]), out.topk_idx

    with jax.default_matmul_precision("highest"):
        zero = jnp.zeros((1, T, cfg.ltm_topk, cfg.ltm_val_dim), jnp.float32)
        ref_loss, ref_idx = eval_loss(zero)
        np.testing.assert_allclose(loss, float(ref_loss), rtol=1e-5)
        np.testing.assert_array_equal(idx, np.asarray(ref_idx))
        v = np.asarray(grads) / np.linalg.norm(grads)
        eps = 1e-2
        fd = (float(eval_loss(zero + eps * v)[0]) - float(eval_loss(zero - eps * v)[0])) / (2 * eps)
        assert fd == pytest.approx(float(np.sum(grads * v)), rel=2e-2)


def test_learned_memory_is_saved_reloaded_and_recalled(tiny, tmp_path):
    loaded, tok = tiny
    path = tmp_path / "mem" / "tiny.safetensors"
    a = session(tiny, memory_path=str(path))
    answered(a, "Hello")
    a.handle("it's fine")
    answered(a, "Paris?")
    a.handle("thanks")
    assert a.close() == [f"Learned memory saved to {path}."]
    assert path.is_file() and path.with_name(path.name + ".json").is_file()

    b = session(tiny, memory_path=str(path))
    assert b.start_lines and "Loaded learned memory" in b.start_lines[0]
    for name in ("fast", "timestamps", "sources"):
        np.testing.assert_array_equal(np.asarray(getattr(b.bank.memory, name)),
                                      np.asarray(getattr(a.bank.memory, name)))
    np.testing.assert_array_equal(b.bank.written_at, a.bank.written_at)
    for src in (1, 3):
        got = b.bank.query(source=src)
        assert got and got == a.bank.query(source=src)
    # recalled: the new session's generation reads the loaded memory (same logits as the
    # learning session; not those of an empty memory)
    engine = GenerationEngine(loaded.model, loaded.config, tok)
    prompt = tok.encode(format_prompt("Hello", alpaca=False))
    sampled, stop = s_params(), StopConditions(max_new_tokens=2, stop_marker="###")

    def logits(bank):
        view, flt = bank.retrieval_view(MemoryFilter())
        return engine.generate(prompt, sampled, stop, memory=view, source_filter=flt, record_logits=True).step_logits

    np.testing.assert_array_equal(logits(b.bank), logits(a.bank))
    assert not np.array_equal(logits(b.bank), logits(MemoryBank.for_model(loaded.model)))
    assert b.close() == []  # unchanged: not rewritten

    out = tmp_path / "folded"
    assert b.handle(f"/save_model {out}").lines[0].startswith("Wrote")
    folded = load_model_dir(out)
    np.testing.assert_allclose(np.asarray(folded.model.ltm.vals[...]),
                               np.asarray(loaded.model.ltm.vals[...]) + b.bank.fast, rtol=0, atol=1e-7)


def test_filters_change_retrieval_and_clear(tiny):
    s = session(tiny)
    answered(s, "Hello")
    s.handle("good")  # some slots now have source 1, none source 3
    s.handle("/seed 11")
    base = turn(s, "Hello")[0].result.token_ids
    assert s.handle("/filter source=correction").lines == ["retrieval filter: source correction (3)"]
    engine, tok = s.engine, s.tokenizer
    prompt = tok.encode(format_prompt("Hello", alpaca=False))
    sampled, stop = s_params(), StopConditions(max_new_tokens=3, stop_marker="###")
    mem, flt = s.bank.retrieval_view(s.filter)
    filtered = engine.generate(prompt, sampled, stop, memory=mem, source_filter=flt, record_logits=True)
    mem, flt = s.bank.retrieval_view(MemoryFilter())
    plain = engine.generate(prompt, sampled, stop, memory=mem, source_filter=flt, record_logits=True)
    assert not np.allclose(filtered.step_logits[0], plain.step_logits[0])  # no slot may be read
    assert s.handle("/filter clear").lines == ["retrieval filter: none"]
    s.handle("/seed 11")
    assert turn(s, "Hello")[0].result.token_ids == base


def test_chat_state_file_continues_the_conversation(tiny, tmp_path):
    """A carried conversation saved after each turn and resumed in a new session continues
    exactly: same position, same ROSA history, and the next turn draws the same tokens."""
    path = tmp_path / "states" / "chat.safetensors"
    a = session(tiny, carry_state=True, state_path=str(path))
    turn(a, "Hello")
    turn(a, "Hi")
    assert path.is_file()
    b = session(tiny, state_path=str(path), resume_state=True)  # resuming turns carry on
    assert b.carry and b.position == a.position and "Resumed" in b.start_lines[0]
    np.testing.assert_array_equal(b.state.rosa[0].tokens, a.state.rosa[0].tokens)
    for s in (a, b):
        s.handle("/seed 9")
    ra, _ = turn(a, "More")
    rb, _ = turn(b, "More")
    assert rb.result.token_ids == ra.result.token_ids and b.position == a.position
    b.handle("/reset")  # autosaved: a fresh state
    c = session(tiny, state_path=str(path), resume_state=True)
    assert c.position == 0
    fresh = session(tiny, state_path=str(tmp_path / "new.safetensors"), resume_state=True)
    assert "will be created" in fresh.start_lines[0] and fresh.state is None
