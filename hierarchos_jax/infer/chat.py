"""The chat session: one input line in, a reply out — no terminal I/O (spec inference.md §2–§14).

:class:`ChatSession` drives the :class:`~hierarchos_jax.infer.engine.GenerationEngine`, the
:class:`~hierarchos_jax.infer.memory.MemoryBank` (the one owner of the learned working
memory) and the :class:`~hierarchos_jax.infer.online.OnlineLearner`. ``handle(line)``
returns a :class:`Reply`: message lines, and for a generated turn an iterator of text
pieces (streamed tokens) whose exhaustion finishes the turn (history, feedback target,
passive learning, momentum reset) and fills ``reply.after``. ``reply.interrupt()`` stops
an answer (Ctrl+C); the last shown token is still fed, so the state describes what was shown.

Turn semantics (§4): carry OFF (default) — every turn starts from a fresh recurrent state
at position 0 with an empty ROSA history; carry ON — it continues at the carried absolute
position. Either way every turn reads the current learned memory (§4.6, §10.8: one owner,
so feedback written after ``/reset_ltm`` is not lost as in the reference, §18.15). EOS is
never fed; the ``###`` stop token is not shown, not fed, and (unlike the reference, §18.6)
not kept in the learned/historic response.

Feedback (§10.2, only while an answer is pending and learning is on): a correction
(``it's X``, ``no, X``, ...) writes unlikelihood on the previous answer and then the
correction as target (source 3); positive feedback (``yes``, ``good``, ``/learn``, ...)
reinforces it (source 1) plus the Hebbian validation when the checkpoint allows it;
negative feedback (``no``, ``bad``, ...) writes unlikelihood once (source 1). Chosen fix of
the reference's "no" handling (§18.1): the word is *not* then answered as a new prompt
(it is feedback, not a question), a second "no" does not penalise the same answer twice,
and the answer stays pending so a correction can follow. Pending feedback targets are
dropped by ``/reset``, ``/reset_ltm`` and by a turn with an empty answer (§18.17).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from hierarchos_jax.infer.commands import HELP, Command, parse_line
from hierarchos_jax.infer.engine import (STOP_MARKER, GenerationEngine, GenerationResult, GenerationState,
                                         StopConditions)
from hierarchos_jax.infer.memory import SOURCE_NAMES, MemoryBank, MemoryFilter, fold_into_model
from hierarchos_jax.infer.online import (SOURCE_CORRECTION, SOURCE_TRAINING, SOURCE_USER, LearningOptions,
                                         OnlineLearner, UpdateResult, quality_gate)
from hierarchos_jax.infer.prompt import ChatHistory, format_prompt
from hierarchos_jax.infer.sampling import SamplingParams

STOP_MARKER_TEXT = "###"


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """Session settings (the reference's chat options and defaults, spec cli.md §2.10–2.11)."""

    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    seed: int = 0
    max_new_tokens: int = 512
    eos_stop_prob: float = 0.0
    entropy_stop_threshold: float = 0.0
    entropy_stop_min_tokens: int = 3
    entropy_stop_top_prob: float = 0.05
    alpaca: bool | None = None          # None: the checkpoint config's ``alpaca``
    system: str | None = None
    carry_state: bool = False
    prefill_chunk_size: int | None = None
    history_turns: int = 0
    history_chars: int = 3000
    learning: bool = True
    learning_options: LearningOptions = LearningOptions()
    memory_path: str | None = None      # --ltm-lora-path: loaded at start, saved at close
    state_path: str | None = None       # chat-state file: saved after every turn, /reset and at close
    resume_state: bool = False          # load ``state_path`` at start (implies carry_state)

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              repetition_penalty=self.repetition_penalty, seed=self.seed).validated()


@dataclasses.dataclass
class Pending:
    """The last answer, the target of feedback."""

    prompt_ids: list[int]
    response_ids: list[int]
    penalized: bool = False


class Reply:
    """What the session answers to one line. ``kind``: ``message``, ``turn`` or ``exit``.

    Iterate a turn for its text pieces; ``after`` holds the lines to show once it ended.
    """

    def __init__(self, kind: str, lines: list[str] | None = None, pieces: Iterator[str] | None = None):
        self.kind = kind
        self.lines = lines or []
        self.after: list[str] = []
        self.result: GenerationResult | None = None
        self._pieces = pieces if pieces is not None else iter(())
        self._stream = None
        self.interrupted = False

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def interrupt(self) -> None:
        """Stop the answer after the token being shown (it is fed; nothing more is sampled)."""
        self.interrupted = True
        if self._stream is not None:
            self._stream.stop()

    def finish(self) -> "Reply":
        for _ in self._pieces:
            pass
        return self


def _message(*lines: str) -> Reply:
    return Reply("message", list(lines))


class ChatSession:
    """A chat with one model: ``handle(line) -> Reply``; ``close()`` at the end."""

    def __init__(self, model, config, tokenizer, options: ChatOptions = ChatOptions()):
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.options = options
        self.settings = options.sampling()  # validated up front (the reference crashed later, §18.2)
        StopConditions(max_new_tokens=max(0, int(options.max_new_tokens))).validated()
        self.engine = GenerationEngine(model, config, tokenizer, prefill_chunk_size=options.prefill_chunk_size)
        self.alpaca = bool(config.extra.get("alpaca", False)) if options.alpaca is None else bool(options.alpaca)
        self.system = options.system
        self.history = ChatHistory(options.history_turns, options.history_chars)
        self.bank = MemoryBank.for_model(model)
        self.learner = OnlineLearner(model, options.learning_options) if options.learning else None
        self.filter = MemoryFilter()
        self.pending: Pending | None = None
        self.state: GenerationState | None = None  # the last turn's final state (carry ON continues it)
        self.turns = 0
        self._seed_offset = 0  # turn i after the last seed setting draws with seed + i
        self._hebbian_notice_shown = False
        self.memory_path = Path(options.memory_path) if options.memory_path else None
        self.state_path = Path(options.state_path) if options.state_path else None
        self.carry = bool(options.carry_state)
        self.start_lines: list[str] = []
        if self.state_path is not None and options.resume_state:
            self._resume()
        if self.memory_path is not None and self.memory_path.exists():
            self.bank.load(self.memory_path)  # MemoryFileError: one line for the CLI
            s = self.bank.summary()
            self.start_lines.append(f"Loaded learned memory from {self.memory_path} "
                                    f"({s['written_slots']} written slots, |fast| {s['fast_norm']:.3e}).")

    def _resume(self) -> None:
        """Spec §12.2, with its caveat fixed (§18.4): resuming turns carry on, since a
        carry-off turn would discard the resumed state."""
        from hierarchos_jax.infer.chat_state import load_chat_state

        if not self.state_path.exists():
            self.start_lines.append(f"Chat-state file {self.state_path} does not exist yet; it will be created.")
            return
        self.state = load_chat_state(self.state_path, self.config, self.bank.memory)  # ChatStateError: one line
        self.carry = True
        self.start_lines.append(f"Resumed the conversation state from {self.state_path} at position {self.position} "
                                "(state carried across turns).")

    def save_state(self) -> None:
        """Autosave the chat-state file, if one is configured (a fresh state after /reset)."""
        if self.state_path is None:
            return
        from hierarchos_jax.infer.chat_state import save_chat_state

        state = self.state if self.state is not None else self.engine.initial_state(1)
        save_chat_state(self.state_path, state, self.config, model_path=str(getattr(self.tokenizer, "directory", "")))

    # ------------------------------------------------------------------ public state

    @property
    def position(self) -> int:
        """Absolute position after the last turn (the reference's ``total_tokens_generated``)."""
        return 0 if self.state is None else int(np.asarray(self.state.state.position).reshape(-1)[0])

    def banner(self) -> list[str]:
        cfg = self.config
        mode = str(cfg.extra.get("ltm_training_mode", "read-only"))
        lines = [f"Template: {'Alpaca' if self.alpaca else 'User/Assistant'}; "
                 f"{'exact' if self.engine.exact else 'legacy'} checkpoint (prefill chunk {self.engine.chunk_size}); "
                 f"state carried across turns: {'yes' if self.carry else 'no'}."]
        if self.learner is not None:
            lines.append(f"Online LTM learning on (lr {self.learner.options.ltm_lr:g}"
                         f"{', cosine schedule' if self.learner.options.dynamic_lr else ''}); "
                         f"checkpoint LTM training mode: {mode}.")
        else:
            lines.append("Online LTM learning off.")
        return self.start_lines + lines + ["Type /help for commands, exit or Ctrl+D to quit."]

    def diagnostic(self, text: str = "Hello") -> list[str]:
        """Spec §2.8 (no side effects): the next-token distribution after the formatted
        prompt for ``text`` from a fresh state — top 5 and the entropy, with a warning above
        0.8 ln V. It runs the session's own compiled prefill, so it also warms it up."""
        ids = self.tokenizer.encode(format_prompt(text, alpaca=self.alpaca, system=self.system))
        memory, flt = self.bank.retrieval_view(self.filter)
        res = self.engine.generate(ids, self.settings, StopConditions(max_new_tokens=0), memory=memory,
                                   source_filter=flt, record_logits=True)
        z = res.step_logits[0].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        entropy = float(-np.sum(p * np.log(p + 1e-10)))
        top = np.argsort(-p, kind="stable")[:5]
        shown = ", ".join(f"{self.tokenizer.decode([int(t)])!r} {p[t]:.3f}" for t in top)
        lines = [f"Start-up check ({text!r}): next tokens {shown}; entropy {entropy:.2f} nats"]
        if entropy > 0.8 * math.log(len(p)):
            lines.append(f"HIGH ENTROPY: above 0.8 ln V = {0.8 * math.log(len(p)):.2f}; the model may be "
                         "untrained or the template wrong for it")
        return lines

    # ---------------------------------------------------------------------- dispatch

    def handle(self, line: str) -> Reply:
        cmd = parse_line(line, learning=self.learner is not None, pending=self.pending is not None, now=time.time())
        handler = getattr(self, f"_do_{cmd.kind}")
        return handler(cmd)

    def close(self) -> list[str]:
        """End of session: save the chat state (if configured) and the learned memory to
        ``--ltm-lora-path`` if it changed."""
        self.save_state()
        if self.memory_path is not None and self.bank.changed:
            self.bank.save(self.memory_path)
            return [f"Learned memory saved to {self.memory_path}."]
        if self.bank.changed and self.bank.summary()["written_slots"]:
            return ["Learned memory was not saved (use --ltm-lora-path, /save_memory or /save_model)."]
        return []

    # ------------------------------------------------------------------- simple ones

    def _do_empty(self, cmd: Command) -> Reply:
        return _message("(empty line: type a message, /help, or exit)")

    def _do_exit(self, cmd: Command) -> Reply:
        return Reply("exit")

    def _do_help(self, cmd: Command) -> Reply:
        return _message(HELP)

    def _do_unknown(self, cmd: Command) -> Reply:
        return _message(f"unknown command {cmd.value} (type /help for the list)")

    def _do_error(self, cmd: Command) -> Reply:
        return _message(str(cmd.value))

    def _do_set(self, cmd: Command) -> Reply:
        name, value = cmd.value
        self.settings = dataclasses.replace(self.settings, **{name: value}).validated()
        if name == "seed":
            self._seed_offset = 0
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return _message(f"{name.replace('_', '-')} = {shown}")

    def _do_settings(self, cmd: Command) -> Reply:
        s = self.settings
        lines = [f"temperature {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}, "
                 f"repetition penalty {s.repetition_penalty:g}, seed {s.seed}, "
                 f"max new tokens {self.options.max_new_tokens}",
                 f"carry state {'on' if self.carry else 'off'}, prefill chunk {self.engine.chunk_size}"]
        o = self.options
        if o.entropy_stop_threshold > 0 or o.eos_stop_prob > 0:
            lines.append(f"stops: eos prob {o.eos_stop_prob:g}, entropy {o.entropy_stop_threshold:g} "
                         f"(after {o.entropy_stop_min_tokens} tokens, top prob <= {o.entropy_stop_top_prob:g})")
        lines.append(f"system prompt: {self.system!r}" if self.system else "system prompt: none")
        return _message(*lines)

    def _do_system(self, cmd: Command) -> Reply:
        self.system = cmd.value
        return _message("System prompt cleared." if cmd.value is None else f"System prompt set: {cmd.value}")

    def _do_reset(self, cmd: Command) -> Reply:
        self.state = None
        self.history.clear()
        self.pending = None
        self.save_state()
        return _message("Recurrent state, position and history reset (learned memory kept).")

    def _do_reset_ltm(self, cmd: Command) -> Reply:
        self.bank.clear()
        self.pending = None
        return _message("Learned memory cleared (fast values, momentum, times and sources).")

    def _do_status(self, cmd: Command) -> Reply:
        s = self.bank.summary()
        by = ", ".join(f"{k} {v}" for k, v in s["by_source"].items() if v)
        return _message(
            f"position {self.position}, turns {self.turns}, learning {'on' if self.learner else 'off'}, "
            f"pending answer {'yes' if self.pending else 'no'}",
            f"memory: {s['written_slots']}/{s['slots']} slots written ({by or 'none'}), |fast| {s['fast_norm']:.3e}; "
            f"filter: {self.filter.describe()}; memory file: {self.memory_path or 'none'}")

    def _do_memory(self, cmd: Command) -> Reply:
        q = dict(cmd.value)
        limit = q.pop("limit", 20)
        records = self.bank.query(limit=limit, **q)
        total = len(self.bank.query(**q))
        head = f"{total} learned slot(s) match" + (f" (showing {len(records)})" if total > len(records) else "")
        return _message(head, *(r.describe() for r in records))

    def _do_filter(self, cmd: Command) -> Reply:
        if cmd.value is None:
            return _message(f"retrieval filter: {self.filter.describe()}")
        self.filter = MemoryFilter(since=cmd.value.get("since"), source=cmd.value.get("source"))
        return _message(f"retrieval filter: {self.filter.describe()}")

    def _do_save_memory(self, cmd: Command) -> Reply:
        path = cmd.value or self.memory_path
        if path is None:
            return _message("usage: /save_memory PATH (no --ltm-lora-path was given)")
        try:
            self.bank.save(path)
        except OSError as e:
            return _message(f"could not save the memory: {e}")
        return _message(f"Learned memory saved to {path}.")

    def _do_load_memory(self, cmd: Command) -> Reply:
        try:
            self.bank.load(cmd.value)
        except (OSError, ValueError) as e:
            return _message(f"could not load the memory: {e}")
        self.pending = None
        n = self.bank.summary()["written_slots"]
        return _message(f"Learned memory loaded from {cmd.value} ({n} written slots).")

    def _do_save_model(self, cmd: Command) -> Reply:
        from hierarchos_jax.io.model_dir import save_model_dir

        try:
            folded = fold_into_model(self.model, self.bank)
            save_model_dir(folded, cmd.value, tokenizer_dir=getattr(self.tokenizer, "directory", None))
        except (OSError, ValueError) as e:
            return _message(f"could not write the model: {e}")
        return _message(f"Wrote {cmd.value}: the model with the learned memory folded into ltm.vals.")

    # ---------------------------------------------------------------------- feedback

    def _apply(self, res: UpdateResult, what: str) -> str:
        if not res.written:
            return f"{what}: nothing written ({res.reason})."
        n = self.bank.commit(res.memory, res.touched)
        return f"{what} (loss {res.loss:.4f}, lr {res.lr:.2e}, {n} slots written)."

    def _reinforce(self) -> list[str]:
        p = self.pending
        lines = [self._apply(self.learner.update(self.bank.memory, p.prompt_ids, p.response_ids,
                                                 source=SOURCE_USER), "Reinforced the previous answer")]
        hebb = self.learner.hebbian_validation(self.bank.memory, p.prompt_ids, p.response_ids)
        if hebb is not None:
            n = self.bank.commit(*hebb)
            lines.append(f"Hebbian validation wrote {n} slots.")
        elif not self._hebbian_notice_shown:
            lines.append("(Hebbian validation off: the checkpoint's value writer is untrained.)")
            self._hebbian_notice_shown = True
        self.pending = None
        return lines

    def _do_positive(self, cmd: Command) -> Reply:
        return _message(*self._reinforce())

    def _do_learn(self, cmd: Command) -> Reply:
        if self.learner is None:
            return _message("Online learning is off.")
        if self.pending is None:
            return _message("Nothing pending to learn.")
        return _message(*self._reinforce())

    def _penalize(self, source: int) -> str | None:
        p = self.pending
        if p.penalized:
            return None
        p.penalized = True
        return self._apply(self.learner.update(self.bank.memory, p.prompt_ids, p.response_ids, source=source,
                                               penalty=True), "Discouraged the previous answer")

    def _do_negative(self, cmd: Command) -> Reply:
        line = self._penalize(SOURCE_USER)
        if line is None:
            return _message("Already noted. Give the right answer with \"it's ...\", or ask again.")
        return _message(line, "Give the right answer with \"it's ...\", or ask again.")

    def _do_correction(self, cmd: Command) -> Reply:
        p = self.pending
        lines = []
        first = self._penalize(SOURCE_CORRECTION)
        if first is not None:
            lines.append(first)
        target = self.tokenizer.encode(cmd.text)
        eos = self.tokenizer.eos_id
        target = target + ([eos] if eos is not None else [])
        lines.append(self._apply(self.learner.update(self.bank.memory, p.prompt_ids, target,
                                                     source=SOURCE_CORRECTION), f"Learned the correction {cmd.text!r}"))
        self.pending = None
        return _message(*lines)

    # -------------------------------------------------------------------------- turns

    def _do_prompt(self, cmd: Command) -> Reply:
        reply = Reply("turn")
        reply._pieces = self._turn(cmd.text, reply)
        return reply

    def _stop(self) -> StopConditions:
        o = self.options
        return StopConditions(max_new_tokens=max(0, int(o.max_new_tokens)), stop_marker=STOP_MARKER_TEXT,
                              eos_stop_prob=o.eos_stop_prob, entropy_stop_threshold=o.entropy_stop_threshold,
                              entropy_stop_min_tokens=o.entropy_stop_min_tokens,
                              entropy_stop_top_prob=o.entropy_stop_top_prob)

    def _turn(self, line: str, reply: Reply) -> Iterator[str]:
        text = format_prompt(line, alpaca=self.alpaca, system=self.system, history=self.history.text())
        prompt_ids = self.tokenizer.encode(text)
        memory, source_filter = self.bank.retrieval_view(self.filter)
        sampling = dataclasses.replace(self.settings, seed=self.settings.seed + self._seed_offset)
        self._seed_offset += 1
        if self.carry and self.state is not None:
            st = self.state
            state = GenerationState(st.state._replace(memory=memory), st.rosa, st.layout)
            stream = self.engine.generate_stream(prompt_ids, sampling, self._stop(), state=state,
                                                 source_filter=source_filter)
        else:
            stream = self.engine.generate_stream(prompt_ids, sampling, self._stop(), memory=memory,
                                                 source_filter=source_filter)
        reply._stream = stream
        for event in stream:
            if event.text:
                yield event.text
        result = stream.result
        reply.result = result
        self.state = result.state
        self.turns += 1
        response_ids = list(result.token_ids)
        if result.stop_reason == STOP_MARKER and response_ids:
            response_ids = response_ids[:-1]  # the hidden "###" token is not part of the answer
        reply.after.extend(self._after_turn(line, prompt_ids, response_ids))
        self.save_state()

    def _after_turn(self, line: str, prompt_ids: list[int], response_ids: list[int]) -> list[str]:
        """§4.5: passive prompt learning, history, feedback target, passive response
        learning, momentum reset."""
        lines = []
        lo = self.learner.options if self.learner is not None else None
        if lo is not None and lo.passive_learning:
            res = self.learner.update(self.bank.memory, prompt_ids, None, source=SOURCE_USER, lr=lo.passive_lr,
                                      learn_input_tokens=True)
            if res.written:
                self.bank.commit(res.memory, res.touched)
        answer = self.tokenizer.decode(response_ids, skip_special_tokens=True).strip() if response_ids else ""
        if answer:
            self.history.add(line, answer)
            self.pending = Pending(list(prompt_ids), response_ids)
        else:
            self.pending = None
        if lo is not None and lo.passive_response_learning and response_ids:
            lines.append(self._passive_response(prompt_ids, response_ids))
        self.bank.zero_momentum()
        return lines

    def _passive_response(self, prompt_ids, response_ids) -> str:
        """§10.6: write the own answer (source 2) only if the model was confident about it
        (loss <= surprise threshold) and it passes the quality gate."""
        lo = self.learner.options
        gate = quality_gate(response_ids)
        if gate is not None:
            return f"(passive response learning skipped: {gate})"
        got = self.learner.replay(self.bank.memory, prompt_ids, response_ids)
        if got is None or not math.isfinite(got[0]):
            return "(passive response learning skipped: no finite loss)"
        loss = got[0]
        if loss > lo.surprise_threshold:
            return f"(passive response learning skipped: loss {loss:.3f} > {lo.surprise_threshold:g})"
        res = self.learner.update(self.bank.memory, prompt_ids, response_ids, source=SOURCE_TRAINING, lr=lo.passive_lr)
        if res.written:
            self.bank.commit(res.memory, res.touched)
            return f"(passive response learning: loss {loss:.3f}, {int(res.touched.sum())} slots, source " \
                   f"{SOURCE_NAMES[SOURCE_TRAINING]})"
        return f"(passive response learning skipped: {res.reason})"
