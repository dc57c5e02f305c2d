"""The generation engine: one compiled prefill, then one compiled call per token.

Per generation::

    prefill (1 jitted call)  : run the prompt from the carried state, sample token 1
    decode step (1 per token): feed token i, sample token i+1 (+ optional logits / stats)

Everything recurrent stays on the device between calls (the decode carry is donated, so
it is updated in place). Per token the host only reads the sampled ids, checks the stop
rules and extends each row's ROSA automaton by one token (ROSA is host-side by design,
:mod:`hierarchos_jax.model.rosa`); its hint is the one small input of the next call.

Reference semantics kept (spec inference.md §4, §5, §6, §8, §16):

* **Eval policies from the checkpoint.** "Exact" checkpoints (``inference_logit_parity``
  or ``full_sample_bptt``) use the training halting/refinement rules; legacy ones the
  eval early exits with the checkpoint's ``h_halt_thresh``.
* **Prefill geometry and drift seeds.** ``L_chunk`` = ``prefill_chunk_size`` if given,
  else 0 for exact checkpoints and ``training_chunk_size`` for legacy ones. A token at
  absolute position ``a > 0`` with ``a % L_chunk == 0`` starts a new chunk and — for
  legacy checkpoints only — receives the drift returned for token ``a - 1`` as its seed,
  in the prompt and while decoding alike. (Without seeds — exact checkpoints, or
  ``L_chunk = 0`` — chunk edges only split calls, which changes nothing but float
  rounding, so they are not materialised.) Inside the one prefill program the prompt runs
  in ``prefill_piece``-token blocks and single tokens (one ``while`` loop); a seeded chunk
  start is always a one-token block of its own and no block crosses one. No padding ever
  reaches the recurrence, the compiled program does not depend on the prompt length (the
  id buffer comes in a few bucket sizes: 256, 1024, 4096, ... tokens), and the result
  equals the reference's chunked (legacy) or monolithic (exact) call up to float rounding
  of the per-token matmuls (tests: 2e-5).
* **Feeding.** Every accepted token is fed (``generate_sample`` and the REPL, whose
  end-of-turn flush feeds the last shown token): after a generation the state describes
  prompt + generated tokens. EOS is never appended nor fed; a token that completes a stop
  string or the chat's ``###`` marker is kept in ``token_ids`` but not fed.
* **Stops** (§8): EOS, stop strings (on decoded text), the optional ``###`` marker rule,
  the optional uncertainty stop (EOS probability / entropy, checked on the raw logits of
  each fed token before the next token is accepted; never for the first token), and
  ``max_new_tokens`` (tokens sampled, EOS included).
* **Working memory**: read-only during generation (Hebbian writes are suppressed, as in
  the reference); one memory shared by all rows unless per-row memories are given.

Batches of prompts. The model's state has one absolute position for the whole batch and
its eval-mode early exits are batch-global (batch-mean tests), so the rows of one batched
forward interact. Two layouts:

* ``batch_mode="independent"`` (default): every row is its own batch-1 problem
  (``jax.vmap`` over rows, each row with its own position), so prompts may differ in
  length and every row produces exactly what it would produce alone (tokens, logits,
  final state) — the semantics of every generation loop of the reference, which all run
  batch 1. One detail keeps this fast: the model uses the position only modulo
  ``h_stride`` (which tokens plan), and a position that differs per row would turn the
  planning ``lax.cond`` into a select that copies the manager's weights once per row
  (about 10x slower on CPU). So all rows of a call share one position: prompts that
  start together are prefilled in lock-step (longer prompts' tails one token at a time,
  shorter rows masked), and in decoding, rows whose phase (position mod ``h_stride``)
  differs wait — at most ``h_stride - 1`` calls, once — until they line up. Rows that
  start a continued prompt at positions out of phase take a slower per-row prefill.
* ``batch_mode="joint"``: one batched forward, as the reference's model runs B > 1, and the
  batch-global early exits make rows interact (for exact checkpoints too: the worker's
  convergence test is a batch mean), exactly as in the reference for B > 1. Prompts of
  different lengths start together; a row whose prompt has ended is frozen (masked) while
  the longer ones finish, so rows then sit at different absolute positions, carried per
  row (``position [B]``). In decoding, as for independent rows, the rows fed by one call
  share the position the model sees (they agree modulo ``h_stride``; rows out of phase
  wait), and for legacy checkpoints each row that starts a chunk gets its own carried
  drift as the seed while the others derive theirs (:func:`derived_drift`). A joint
  batch continues (``state=``) only from one shared position.

On CPU both run at about the same speed. A finished row keeps being computed until
every row is done (its state frozen, its outputs ignored).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.infer.detokenize import TextStream
from hierarchos_jax.infer.sampling import (DEFAULT_CANDIDATES, SamplingArrays, SamplingParams, UncertaintyStats,
                                           row_keys, sample_tokens, step_keys, uncertainty_stats)
from hierarchos_jax.model.hierarchos import forward
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.numerics import drift_clamp, finite_clamp
from hierarchos_jax.model.rosa import RosaAutomaton
from hierarchos_jax.model.rwkv import state_hidden
from hierarchos_jax.model.state import HierarchosState, zeros_state

STOP_EOS = "eos"
STOP_STRING = "stop_string"
STOP_MARKER = "stop_marker"
STOP_UNCERTAINTY = "uncertainty"
STOP_MAX_TOKENS = "max_new_tokens"
STOP_INTERRUPTED = "interrupted"

MIN_PROMPT_BUCKET = 256  # prompt id buffers: 256, 1024, 4096, ... tokens (one program each)
DEFAULT_PREFILL_PIECE = 16


# ------------------------------------------------------------------------------ options

@dataclasses.dataclass(frozen=True)
class StopConditions:
    """When a generation ends (spec §8). ``eos_ids=None`` uses the tokenizer's EOS.

    ``stop_marker``: the chat REPL's rule (§4.4 f, with ``"###"``): stop when a token other
    than the first decodes, on its own, to at most 5 characters containing the marker.
    The uncertainty stop is off unless ``eos_stop_prob > 0`` or
    ``entropy_stop_threshold > 0`` (then it is checked for tokens 2, 3, ...).
    """

    max_new_tokens: int = 512
    eos_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    stop_marker: str | None = None
    eos_stop_prob: float = 0.0
    entropy_stop_threshold: float = 0.0
    entropy_stop_min_tokens: int = 3
    entropy_stop_top_prob: float = 0.05

    @property
    def uncertainty(self) -> bool:
        return self.eos_stop_prob > 0 or self.entropy_stop_threshold > 0

    def validated(self) -> "StopConditions":
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        for name in ("eos_stop_prob", "entropy_stop_threshold", "entropy_stop_top_prob"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if isinstance(self.stop_strings, str):
            raise ValueError("stop_strings must be a sequence of strings, not one string")
        return self

    def uncertain(self, stats: UncertaintyStats, row: int, n_generated: int) -> bool:
        """The uncertainty stop (§8.1) for ``row``, after ``n_generated`` tokens were accepted."""
        if bool(stats.nonfinite[row]):
            return True
        if self.eos_stop_prob > 0 and n_generated >= 1 and float(stats.eos_prob[row]) >= self.eos_stop_prob:
            return True
        return (self.entropy_stop_threshold > 0 and n_generated >= self.entropy_stop_min_tokens
                and float(stats.entropy[row]) >= self.entropy_stop_threshold
                and (self.entropy_stop_top_prob <= 0 or float(stats.max_prob[row]) <= self.entropy_stop_top_prob))


class GenerationState(NamedTuple):
    """Everything needed to continue a sequence: the device state (with its working
    memory) and each row's ROSA automaton (``None`` for models without ROSA).

    ``layout`` is ``"batch"`` (arrays ``[B, ...]``, one scalar position, or positions ``[B]``
    for a joint batch whose prompts differ in length) or ``"rows"`` (every field
    ``[B, 1, ...]``, positions ``[B]``: independent batch rows).
    """

    state: HierarchosState
    rosa: tuple[RosaAutomaton, ...] | None
    layout: str = "batch"

    @property
    def batch(self) -> int:
        return self.state.h_state.shape[0]


@dataclasses.dataclass
class GenerationResult:
    """One row's generation."""

    prompt_ids: list[int]
    token_ids: list[int]              # accepted tokens (no EOS; a stop-string / marker token included)
    text: str                         # what was shown: decoded tokens, cut before a stop string
    stop_reason: str                  # eos | stop_string | stop_marker | uncertainty | max_new_tokens | interrupted
    prefill_s: float                  # wall time of the prefill call (incl. compilation on first use)
    step_s: list[float]               # wall time of each decode call while this row was running
    step_logits: np.ndarray | None = None  # [calls, V]: last-position logits of the prefill and each decode call
    state: GenerationState | None = None   # the batch's final state (shared by the rows of one batch)

    @property
    def ms_per_token(self) -> float | None:
        """Median milliseconds per decode call (one token fed and the next one chosen)."""
        return 1e3 * statistics.median(self.step_s) if self.step_s else None


class TokenEvent(NamedTuple):
    """A token accepted for ``row`` and the text it makes safe to show (``''`` while text
    is held back: an incomplete UTF-8 sequence or a possible stop-string start). At the
    end, held-back text comes as an event with ``token_id=None``."""

    row: int
    token_id: int | None
    text: str


# ------------------------------------------------------------------------ device side

class DecodeCarry(NamedTuple):
    """The donated per-call carry: model state (memory held separately), the repetition
    history of this generation and each row's number of draws so far."""

    state: HierarchosState  # memory=None
    seen: jax.Array         # [B, V] bool
    draws: jax.Array        # [B] int32: index of each row's next draw


@dataclasses.dataclass(frozen=True)
class _Program:
    """The static shape of a compiled prefill / decode program."""

    layout: str                 # "batch" | "rows"
    seed_chunk: int             # L_chunk when drift seeds are given (legacy checkpoints), else 0
    piece: int                  # prefill block size
    greedy_only: bool
    stats_eos: int | None       # eos id for the uncertainty statistics, None = not computed
    candidates: int
    masked: bool                # rows may be inactive (batch > 1)
    row_memory: bool            # rows layout with per-row working memories
    aligned_prefill: bool = True  # rows layout: every row starts the prompt at the same position
    source_filter: int | None = None  # retrieval reads only slots of this source (spec §13)
    min_timestamp: float = 0.0        # ... and of model timestamp >= this (when > 0)


def derived_drift(model, l_state):
    """The drift the model derives from a worker state at the first token of a call (the
    initial drift when no seed is given; spec model.md §6.2): lets a joint batch seed only
    the rows that start a chunk."""
    cfg = model.config
    hidden = state_hidden(finite_clamp(l_state, cfg.recurrent_state_clamp))
    return drift_clamp(jnp.tanh(model.context_drift_proj(hidden)), cfg.drift_state_clamp, cfg.drift_norm_clamp)


def _block(model, mode, prog: _Program, state, memory, ids, rosa, *, seeded):
    """Run one block ``ids [b, T]`` from ``state`` (memory held apart); returns the new
    state and the last token's final hidden ``[b, C]``. ``seeded``: a bool (every row) or a
    ``[b]`` mask of the rows that receive their carried drift as the seed."""
    if isinstance(seeded, bool):
        seed = state.drift if seeded else None
    else:
        seed = jnp.where(seeded[:, None], state.drift, derived_drift(model, state.l_state))
    out, new = forward(model, ids, state._replace(memory=memory), mode=mode, rosa_ids=rosa,
                       drift_seed=seed, min_timestamp=prog.min_timestamp, source_filter=prog.source_filter)
    return new._replace(memory=None), out.hidden[:, -1]


def _is_chunk_start(position, chunk: int):
    return (position > 0) & (position % chunk == 0)


def _select_rows(active, new, old):
    """Per row: ``new`` where ``active [B]``, else ``old`` (a scalar position advances for
    every row)."""
    def pick(n, o):
        if n.ndim == 0:
            return n
        return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree.map(pick, new, old)


def _run_block(model, mode, prog: _Program, state, memory, ids, rosa, *, seeded: bool, position=None):
    """Run a block for every row: ``ids [B, T]`` (batch layout) or ``[B, 1, T]`` (rows).

    Rows layout: every row is its own batch-1 problem (``vmap``). ``position`` is the
    absolute position the model sees for all rows — it uses it only modulo ``h_stride``
    (planning steps), so rows that agree modulo ``h_stride`` may share it; a shared,
    unbatched position keeps the model's planning ``lax.cond`` a real branch (a batched
    predicate turns it into a select that materialises the manager's weights once per
    row, about 10x slower on CPU). ``None``: each row's own position (slow path).
    Each row's true position is carried in ``state.position`` and advanced here.

    Batch layout (one batched forward): a scalar ``state.position`` is the batch's; with
    per-row positions ``[B]`` (a joint batch whose rows have different lengths) the forward
    sees the shared ``position`` of the rows being fed (they agree modulo ``h_stride``).
    """
    if prog.layout == "batch":
        if state.position.ndim == 0:
            return _block(model, mode, prog, state, memory, ids, rosa, seeded=seeded)
        shared = state.position[0] if position is None else position
        new, hidden = _block(model, mode, prog, state._replace(position=shared), memory, ids, rosa, seeded=seeded)
        return new._replace(position=state.position + ids.shape[-1]), hidden
    mem = WorkingMemory(*(a[:, None] for a in memory)) if prog.row_memory else memory

    def row(st, m, i, r):
        if position is not None:
            st = st._replace(position=position)
        return _block(model, mode, prog, st, m, i, r, seeded=seeded)

    new, hidden = jax.vmap(row, in_axes=(0, 0 if prog.row_memory else None, 0, None if rosa is None else 0))(
        state, mem, ids, rosa)
    return new._replace(position=state.position + ids.shape[-1]), hidden[:, 0]


def _prefill_shared(model, mode, prog: _Program, state, memory, ids, rosa, lengths):
    """Prefill rows that start at one shared position: ``ids[b, ..., :lengths[b]]``.

    One ``while`` loop over the prompt, shared by all rows (no loop or branch depends on a
    row): each iteration runs a ``prog.piece``-token block when the next ``piece`` tokens
    belong to every row and contain no chunk start, else one token — seeded when it starts a
    chunk of a legacy checkpoint, and masked for rows whose prompt has ended. At most three
    forward shapes (piece, token, seeded token); nothing depends on the prompt length.
    """
    B = lengths.shape[0]
    start = state.position if state.position.ndim == 0 else state.position[0]
    common, longest = jnp.min(lengths), jnp.max(lengths)
    L, piece = prog.seed_chunk, prog.piece

    def block(carry, offset, size, seeded):
        tok = jax.lax.dynamic_slice_in_dim(ids, offset, size, axis=ids.ndim - 1)
        ros = None if rosa is None else jax.lax.dynamic_slice_in_dim(rosa, offset, size, axis=rosa.ndim - 1)
        return _run_block(model, mode, prog, carry[0], memory, tok, ros, seeded=seeded, position=start + offset)

    def one_token(carry, offset, chunk_start):
        active = offset < lengths
        if L:
            new = jax.lax.cond(chunk_start, lambda c: block(c, offset, 1, True),
                               lambda c: block(c, offset, 1, False), carry)
        else:
            new = block(carry, offset, 1, False)
        return _select_rows(active, new[0], carry[0]), jnp.where(active[:, None], new[1], carry[1])

    def step(c):
        carry, offset = c
        pos = start + offset
        chunk_start = _is_chunk_start(pos, L) if L else jnp.bool_(False)
        room = common - offset
        if L:
            room = jnp.minimum(room, L - pos % L)  # a piece never crosses a chunk start
        if piece <= 1:
            return one_token(carry, offset, chunk_start), offset + 1
        use_piece = (room >= piece) & ~chunk_start
        carry = jax.lax.cond(use_piece, lambda c: block(c, offset, piece, False),
                             lambda c: one_token(c, offset, chunk_start), carry)
        return carry, offset + jnp.where(use_piece, piece, 1)

    carry = (state, jnp.zeros((B, model.config.context_dim), jnp.float32))
    carry, _ = jax.lax.while_loop(lambda c: c[1] < longest, step, (carry, jnp.int32(0)))
    return carry


def _prefill_per_row(model, mode, prog: _Program, state, memory, ids, rosa, lengths):
    """Rows layout, rows starting at different positions (a continued batch): each row's
    prefill under ``vmap`` with its own position — correct, but slow, since the model's
    planning branch then becomes a per-row select (see :func:`_run_block`)."""
    def row(st, m, i, r, n):
        one = dataclasses.replace(prog, layout="batch")
        return _prefill_shared(model, mode, one, st, m, i, r, n[None])

    mem = WorkingMemory(*(a[:, None] for a in memory)) if prog.row_memory else memory
    new, hidden = jax.vmap(row, in_axes=(0, 0 if prog.row_memory else None, 0, None if rosa is None else 0, 0))(
        state, mem, ids, rosa, lengths)
    return new, hidden[:, 0]


def _head_and_sample(model, prog, hidden, seen, sampling, keys, draws):
    logits = model.logits(hidden)
    tokens = sample_tokens(logits, seen, sampling, step_keys(keys, draws), greedy_only=prog.greedy_only,
                           candidates=prog.candidates)
    return logits, tokens


def _prefill_program(merge, mode, prog: _Program, leaves, state, memory, ids, rosa, lengths, sampling, keys):
    """Prefill every row and choose its first token (see :meth:`GenerationEngine.prefill`)."""
    model = merge(leaves)
    if prog.layout == "rows" and not prog.aligned_prefill:
        new_state, hidden = _prefill_per_row(model, mode, prog, state, memory, ids, rosa, lengths)
    else:
        new_state, hidden = _prefill_shared(model, mode, prog, state, memory, ids, rosa, lengths)
    B = hidden.shape[0]
    seen = jnp.zeros((B, model.config.vocab_size), bool)
    draws = jnp.zeros((B,), jnp.int32)
    logits, tokens = _head_and_sample(model, prog, hidden, seen, sampling, keys, draws)
    return tokens, logits, DecodeCarry(new_state, seen, draws + 1)


def _feed(model, mode, prog: _Program, state, memory, tokens, rosa, active, position):
    """Feed one token per row (``tokens [B]``) with the drift-seed rule; returns the new
    state and the hidden ``[B, C]``. ``position``: the shared position of the active rows
    (rows layout; see :func:`_run_block`)."""
    ids = tokens[:, None] if prog.layout == "batch" else tokens[:, None, None]
    ros = None if rosa is None else (rosa[:, None] if prog.layout == "batch" else rosa[:, None, None])

    def run(seeded):
        return _run_block(model, mode, prog, state, memory, ids, ros, seeded=seeded, position=position)

    if not prog.seed_chunk:
        return run(False)
    starts = _is_chunk_start(state.position, prog.seed_chunk)
    if prog.layout == "batch":
        if starts.ndim == 0:
            return jax.lax.cond(starts, lambda: run(True), lambda: run(False))
        seeds = starts & active  # a joint batch with per-row positions: seed only those rows
        return jax.lax.cond(jnp.any(seeds), lambda: run(seeds), lambda: run(False))

    def mixed():  # only a step where some row is at a chunk start pays for both variants
        return _select_rows(starts, run(True), run(False))

    return jax.lax.cond(jnp.any(starts & active), mixed, lambda: run(False))


def _decode_program(merge, mode, prog: _Program, leaves, carry: DecodeCarry, memory, inputs, sampling, keys):
    """Feed one token per row, then choose the next token of every row.

    ``inputs [4, B]`` int32 rows: the tokens to feed, their ROSA hints, 1 for an active
    row (0: a finished or waiting row, whose state and draws are kept) and, in column 0 of
    the last row, the shared position of the active rows (rows layout). Returns
    ``(next_tokens [B], logits [B, V], UncertaintyStats | None, carry)``; the logits stay
    on the device unless read.
    """
    model = merge(leaves)
    tokens, active = inputs[0], inputs[2] > 0
    rosa = inputs[1] if model.config.use_rosa else None
    new_state, hidden = _feed(model, mode, prog, carry.state, memory, tokens, rosa, active, inputs[3, 0])
    if prog.masked:
        new_state = _select_rows(active, new_state, carry.state)
    B = tokens.shape[0]
    rows = jnp.arange(B)
    seen = carry.seen.at[rows, tokens].set(carry.seen[rows, tokens] | active)
    logits, next_tokens = _head_and_sample(model, prog, hidden, seen, sampling, keys, carry.draws)
    stats = uncertainty_stats(logits, prog.stats_eos) if prog.stats_eos is not None else None
    return next_tokens, logits, stats, DecodeCarry(new_state, seen, carry.draws + active.astype(jnp.int32))


class _Compiled(NamedTuple):
    prefill: Any
    decode: Any


_PROGRAMS: dict = {}  # (graphdef, treedef, mode, program) -> _Compiled, shared by engines of one model


def _compiled(graphdef, treedef, mode, prog: _Program) -> _Compiled:
    """The jitted prefill and decode of one program. Model structure, mode and program are
    closed over instead of being static arguments, so a call hashes none of them (hashing a
    model's graphdef costs about 0.4 ms, a tenth of a decode step on CPU)."""
    key = (graphdef, treedef, mode, prog)
    fns = _PROGRAMS.get(key)
    if fns is None:
        def merge(leaves):
            return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

        fns = _Compiled(jax.jit(functools.partial(_prefill_program, merge, mode, prog)),
                        jax.jit(functools.partial(_decode_program, merge, mode, prog), donate_argnums=(1,)))
        _PROGRAMS[key] = fns
    return fns


# ---------------------------------------------------------------------------- the engine

def _bucket(n: int) -> int:
    size = MIN_PROMPT_BUCKET
    while size < n:
        size *= 4
    return size


class _Row:
    """Host bookkeeping of one batch row during a generation."""

    def __init__(self, prompt: list[int], text: TextStream | None):
        self.prompt = prompt
        self.tokens: list[int] = []
        self.pending: int | None = None  # accepted, not yet fed
        self.last_fed: int = prompt[-1] if prompt else 0
        self.reason: str | None = None
        self.text = text
        self.step_s: list[float] = []
        self.logits: list[np.ndarray] = []


class GenerationStream:
    """Iterator of :class:`TokenEvent` for one generation; ``.results`` once exhausted.

    ``stop()`` ends the generation early (reason ``interrupted``) after feeding the last
    accepted token, so the final state still describes every token shown (the REPL's
    Ctrl+C semantics).
    """

    def __init__(self):
        self._gen: Iterator[TokenEvent] = iter(())
        self.results: list[GenerationResult] | None = None
        self._stop_requested = False

    def __iter__(self):
        return self

    def __next__(self) -> TokenEvent:
        return next(self._gen)

    def stop(self) -> None:
        self._stop_requested = True
        for _ in self._gen:  # drains: the generator sees the flag and flushes
            pass

    @property
    def result(self) -> GenerationResult:
        if self.results is None:
            raise RuntimeError("the generation has not finished")
        return self.results[0]


class GenerationEngine:
    """Fast generation for a loaded Hierarchos model (ours or a reference checkpoint).

    ``GenerationEngine(model, config=None, tokenizer=None, *, prefill_chunk_size=None,
    candidates=256, prefill_piece=16)``. ``prefill_chunk_size`` overrides ``L_chunk``
    (the reference's ``--chat-prefill-chunk-size``); ``candidates`` is how many top
    scores the sampler filters before falling back to a full sort (see
    :mod:`hierarchos_jax.infer.sampling`).
    """

    def __init__(self, model, config=None, tokenizer=None, *, prefill_chunk_size: int | None = None,
                 candidates: int = DEFAULT_CANDIDATES, prefill_piece: int = DEFAULT_PREFILL_PIECE):
        self.config = config if config is not None else model.config
        self.tokenizer = tokenizer
        if tokenizer is not None:
            tokenizer.check_vocab(self.config.vocab_size)
        self.graphdef, self.params = nnx.split(model)
        # A flat list of parameter arrays: cheaper to pass per call than the nnx.State tree.
        self._leaves, self._treedef = jax.tree.flatten(self.params)
        self._programs: dict[_Program, _Compiled] = {}
        cfg = self.config
        self.exact = bool(cfg.inference_logit_parity or cfg.full_sample_bptt)
        self.mode = RunMode.eval(logit_parity=self.exact)
        if prefill_chunk_size is not None and prefill_chunk_size < 0:
            raise ValueError(f"prefill_chunk_size must be >= 0, got {prefill_chunk_size}")
        self.chunk_size = int(prefill_chunk_size) if prefill_chunk_size is not None else (
            0 if self.exact else int(cfg.training_chunk_size or 0))
        self.seeded = (not self.exact) and self.chunk_size > 0
        if candidates < 1 or prefill_piece < 1:
            raise ValueError("candidates and prefill_piece must be >= 1")
        self.candidates = int(candidates)
        self.prefill_piece = int(prefill_piece)

    # -------------------------------------------------------------- states and programs

    def initial_state(self, batch: int = 1, *, memory: WorkingMemory | None = None,
                      layout: str = "batch") -> GenerationState:
        """A fresh state (position 0, empty ROSA history). ``memory`` (``[1|B, S, D]``
        arrays) is the initial working memory; default: one empty memory shared by all rows
        (the reference's batch-1 eval)."""
        cfg = self.config
        if memory is None:
            memory = WorkingMemory.zeros(1, cfg.ltm_slots, cfg.ltm_val_dim)
        memory = WorkingMemory(*(jnp.asarray(a) for a in memory))
        if memory.rows not in (1, batch):
            raise ValueError(f"working memory has {memory.rows} rows, expected 1 or {batch}")
        one = zeros_state(cfg, 1 if layout == "rows" else batch)
        fresh = lambda a: jnp.array(jnp.broadcast_to(a, (batch,) + a.shape)) if layout == "rows" \
            else jnp.array(a)  # noqa: E731  (copies: the zero arrays of zeros_state are aliased)
        parts = {f: fresh(getattr(one, f)) for f in ("h_state", "l_state", "prev_context", "target_context", "drift")}
        position = jnp.zeros((batch,), jnp.int32) if layout == "rows" else jnp.int32(0)
        state = HierarchosState(memory=memory, position=position, **parts)
        rosa = tuple(RosaAutomaton(cfg.vocab_size) for _ in range(batch)) if cfg.use_rosa else None
        return GenerationState(state, rosa, layout)

    def _program(self, *, layout, sampling: SamplingParams, stop: StopConditions, eos_ids, batch,
                 memory, aligned_prefill: bool, source_filter: int | None = None,
                 min_timestamp: float = 0.0) -> _Program:
        stats_eos = (eos_ids[0] if eos_ids else -1) if stop.uncertainty else None
        return _Program(layout=layout, seed_chunk=self.chunk_size if self.seeded else 0,
                        piece=self.prefill_piece, greedy_only=sampling.greedy,
                        stats_eos=stats_eos, candidates=self.candidates, masked=batch > 1,
                        row_memory=layout == "rows" and memory.rows > 1, aligned_prefill=aligned_prefill,
                        source_filter=None if source_filter is None else int(source_filter),
                        min_timestamp=float(min_timestamp))

    def prefill(self, prompts: Sequence[Sequence[int]], gen_state: GenerationState, prog: _Program,
                sampling: SamplingArrays, keys: jax.Array):
        """Run the prompts from ``gen_state`` in one compiled call and choose each row's
        first token. Extends ``gen_state.rosa`` in place (the host-side ROSA history).
        Returns ``(first_tokens [B], logits [B, V], DecodeCarry)``.
        """
        cfg = self.config
        B = len(prompts)
        lengths = [len(p) for p in prompts]
        width = _bucket(max(lengths))
        ids = np.zeros((B, width), np.int32)
        rosa = np.full((B, width), cfg.vocab_size, np.int32) if cfg.use_rosa else None
        for b, p in enumerate(prompts):
            ids[b, :len(p)] = p
            if rosa is not None:
                rosa[b, :len(p)] = gen_state.rosa[b].extend(p)
        state = gen_state.state
        memory = state.memory
        state = state._replace(memory=None)
        if prog.layout == "batch":
            pass  # rows of different lengths carry per-row positions (see stream_batch)
        else:  # rows layout: every row is a batch of one
            ids, rosa = ids[:, None], None if rosa is None else rosa[:, None]
        n = jnp.asarray(lengths, jnp.int32)
        ids_d, rosa_d = jnp.asarray(ids), None if rosa is None else jnp.asarray(rosa)
        return self._fns(prog).prefill(self._leaves, state, memory, ids_d, rosa_d, n, sampling, keys)

    def _fns(self, prog: _Program) -> _Compiled:
        fns = self._programs.get(prog)
        if fns is None:
            fns = self._programs[prog] = _compiled(self.graphdef, self._treedef, self.mode, prog)
        return fns

    def decode_step(self, prog: _Program, carry: DecodeCarry, memory: WorkingMemory, inputs: np.ndarray,
                    sampling: SamplingArrays, keys: jax.Array):
        """One compiled call: feed ``inputs[0]`` (ROSA hints ``inputs[1]``, active flags
        ``inputs[2]``, the active rows' shared position in ``inputs[3]``) and choose the next
        tokens: ``(next_tokens [B], logits [B, V], UncertaintyStats | None, carry)``.
        ``carry`` is donated (updated in place)."""
        return self._fns(prog).decode(self._leaves, carry, memory, inputs, sampling, keys)

    # ----------------------------------------------------------------------- generation

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer (or pass token ids)")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def generate(self, prompt: str | Sequence[int], sampling: SamplingParams = SamplingParams(),
                 stop: StopConditions = StopConditions(), **kw) -> GenerationResult:
        """Generate from one prompt (text or token ids); see :meth:`stream_batch`."""
        stream = self.stream_batch([prompt], sampling, stop, **kw)
        for _ in stream:
            pass
        return stream.result

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], sampling: SamplingParams = SamplingParams(),
                       stop: StopConditions = StopConditions(), **kw) -> list[GenerationResult]:
        stream = self.stream_batch(prompts, sampling, stop, **kw)
        for _ in stream:
            pass
        return stream.results

    def generate_stream(self, prompt: str | Sequence[int], sampling: SamplingParams = SamplingParams(),
                        stop: StopConditions = StopConditions(), **kw) -> GenerationStream:
        """Stream one prompt's tokens: iterate for :class:`TokenEvent`, then ``.result``."""
        return self.stream_batch([prompt], sampling, stop, **kw)

    def stream_batch(self, prompts: Sequence[str | Sequence[int]], sampling: SamplingParams = SamplingParams(),
                     stop: StopConditions = StopConditions(), *, state: GenerationState | None = None,
                     memory: WorkingMemory | None = None, batch_mode: str = "independent",
                     record_logits: bool = False, source_filter: int | None = None,
                     min_timestamp: float = 0.0) -> GenerationStream:
        """Generate from every prompt; a :class:`GenerationStream` of :class:`TokenEvent`.

        ``state`` continues a previous generation (its final ``GenerationState``: the prompt
        then starts at the carried absolute position, with the carried ROSA history; the
        given state is not modified). ``memory`` sets the initial working memory of a fresh
        state. ``record_logits`` keeps every call's last-position logits (a host copy per
        token: for tests and inspection). ``source_filter`` / ``min_timestamp`` restrict LTM
        retrieval to slots of that source / of model timestamp at least that (spec §13).
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a sequence of prompts")
        if batch_mode not in ("independent", "joint"):
            raise ValueError(f"batch_mode must be 'independent' or 'joint', got {batch_mode!r}")
        sampling = sampling.validated()
        stop = stop.validated()
        ids = [self.encode(p) for p in prompts]
        if not ids:
            raise ValueError("no prompts given")
        V = self.config.vocab_size
        for p in ids:
            if not p:
                raise ValueError("a prompt is empty (it needs at least one token)")
            if min(p) < 0 or max(p) >= V:
                raise ValueError(f"prompt token ids must lie in [0, {V})")
        if (stop.stop_strings or stop.stop_marker) and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        eos_ids = tuple(stop.eos_ids) if stop.eos_ids is not None else (
            (self.tokenizer.eos_id,) if self.tokenizer is not None and self.tokenizer.eos_id is not None else ())
        B = len(ids)
        layout = "batch" if B == 1 or batch_mode == "joint" else "rows"
        if state is None:
            gen_state = self.initial_state(B, memory=memory, layout=layout)
        else:
            if memory is not None:
                raise ValueError("pass either state or memory, not both")
            if state.batch != B or state.layout != layout:
                raise ValueError(f"the given state is for {state.batch} row(s) in the {state.layout!r} layout; "
                                 f"this call needs {B} in the {layout!r} layout")
            rosa = None if state.rosa is None else tuple(a.copy() for a in state.rosa)  # keep `state` intact
            gen_state = GenerationState(state.state, rosa, layout)
        starts = np.broadcast_to(np.asarray(gen_state.state.position), (B,)).astype(int)
        if layout == "batch" and B > 1:
            if len(set(starts.tolist())) != 1:
                raise ValueError("a joint batch continues only when every row is at the same position "
                                 f"(rows are at {sorted(set(starts.tolist()))}; use batch_mode='independent')")
            if len({len(p) for p in ids}) > 1 and gen_state.state.position.ndim == 0:
                # rows of different lengths end at different positions: carry one per row
                position = jnp.full((B,), gen_state.state.position, jnp.int32)
                gen_state = gen_state._replace(state=gen_state.state._replace(position=position))
        prog = self._program(layout=layout, sampling=sampling, stop=stop, eos_ids=eos_ids, batch=B,
                             memory=gen_state.state.memory, aligned_prefill=len(set(starts.tolist())) == 1,
                             source_filter=source_filter, min_timestamp=min_timestamp)
        stream = GenerationStream()
        stream._gen = self._run(stream, ids, gen_state, prog, sampling, stop, eos_ids, record_logits,
                                [int(p) + len(q) for p, q in zip(starts, ids)])
        return stream

    def _run(self, stream: GenerationStream, prompts, gen_state: GenerationState, prog: _Program,
             sampling: SamplingParams, stop: StopConditions, eos_ids, record_logits: bool,
             positions: list[int]) -> Iterator[TokenEvent]:
        """The host loop. ``positions``: each row's absolute position after its prompt.

        Rows layout: the rows fed by one call must agree on their position modulo
        ``h_stride`` (see :func:`_run_block`); rows whose prompt lengths leave them out of
        phase wait (at most ``h_stride - 1`` calls, at the start) until they line up. A row's
        tokens do not depend on this: waiting rows keep their state and their draw count.
        """
        B, V = len(prompts), self.config.vocab_size
        tok = self.tokenizer
        rows = [_Row(p, TextStream(tok, stop.stop_strings) if tok is not None else None) for p in prompts]
        arrays = SamplingArrays.build(sampling, B)
        keys = row_keys(sampling.seed, B)
        memory = gen_state.state.memory
        eos = set(eos_ids)

        decode = self._fns(prog).decode
        t0 = time.perf_counter()
        first, logits, carry = self.prefill(prompts, gen_state, prog, arrays, keys)
        first = np.asarray(first)
        prefill_s = time.perf_counter() - t0
        if record_logits:
            logits = np.asarray(logits)
            for b, row in enumerate(rows):
                row.logits.append(logits[b])

        def accept(b: int, token: int, first_token: bool) -> TokenEvent | None:
            """Sampled ``token`` for row ``b``: stop, or append it (and mark it to be fed)."""
            row = rows[b]
            if token in eos:
                row.reason = STOP_EOS
                return None
            row.tokens.append(token)
            if stop.stop_marker and not first_token:
                piece = tok.decode([token])
                if stop.stop_marker in piece and len(piece) <= 5:
                    row.reason = STOP_MARKER
                    return None
            text = row.text.push(token) if row.text is not None else ""
            if row.text is not None and row.text.stop_index is not None:
                row.reason = STOP_STRING
                return TokenEvent(b, token, text)
            row.pending = token
            return TokenEvent(b, token, text)

        for b, row in enumerate(rows):
            if stop.max_new_tokens == 0:
                row.reason = STOP_MAX_TOKENS
                continue
            event = accept(b, int(first[b]), True)
            if event is not None:
                yield event

        h_stride = self.config.h_stride
        per_row = prog.layout == "rows" or np.ndim(gen_state.state.position) == 1
        while True:
            waiting = [b for b, row in enumerate(rows) if row.pending is not None]
            if not waiting:
                break
            if per_row:  # feed the rows of the lowest phase (all, once aligned)
                phase = min(positions[b] % h_stride for b in waiting)
                waiting = [b for b in waiting if positions[b] % h_stride == phase]
            inputs = np.zeros((4, B), np.int32)  # tokens, ROSA hints, active flags, shared position
            inputs[0] = [row.last_fed for row in rows]
            inputs[1] = V
            inputs[3] = positions[waiting[0]]
            for b in waiting:
                inputs[0, b], inputs[2, b] = rows[b].pending, 1
                if gen_state.rosa is not None:
                    inputs[1, b] = gen_state.rosa[b].extend([rows[b].pending])[0]
                positions[b] += 1
            active = inputs[2] > 0
            t0 = time.perf_counter()
            nxt, logits, stats, carry = decode(self._leaves, carry, memory, inputs, arrays, keys)
            nxt = np.asarray(nxt)
            dt = time.perf_counter() - t0
            if stats is not None:
                stats = UncertaintyStats(*(np.asarray(a) for a in stats))
            if record_logits:
                logits = np.asarray(logits)
            for b, row in enumerate(rows):
                if not active[b]:
                    continue
                row.last_fed, row.pending = row.pending, None
                row.step_s.append(dt)
                if record_logits:
                    row.logits.append(logits[b])
                if len(row.tokens) >= stop.max_new_tokens:  # the last token is fed, nothing more sampled
                    row.reason = STOP_MAX_TOKENS
                elif stream._stop_requested:
                    row.reason = STOP_INTERRUPTED
                elif stats is not None and stop.uncertain(stats, b, len(row.tokens)):
                    row.reason = STOP_UNCERTAINTY
                else:
                    event = accept(b, int(nxt[b]), False)
                    if event is not None:
                        yield event

        final = GenerationState(carry.state._replace(memory=memory), gen_state.rosa, prog.layout)
        results = []
        for b, row in enumerate(rows):
            text = ""
            if row.text is not None:
                tail = row.text.flush()
                if tail:
                    yield TokenEvent(b, None, tail)
                text = row.text.text
            results.append(GenerationResult(
                prompt_ids=list(row.prompt), token_ids=row.tokens, text=text, stop_reason=row.reason or STOP_MAX_TOKENS,
                prefill_s=prefill_s, step_s=row.step_s,
                step_logits=np.stack(row.logits) if row.logits else None, state=final))
        stream.results = results
