"""Batch-invariant scoring of ``(context, continuation)`` token pairs.

``score(pairs)`` returns, per pair, the sum of ``log p(y_i | context, y_<i)`` over the
continuation and whether every ``y_i`` is the argmax — what the reference's lm-eval wrapper
computes from one batch-1 forward over ``context + continuation[:-1]`` (fresh state,
Hebbian writes off, working memory read-only), but batched without coupling the rows:

* **Every row is its own batch-1 problem** (``jax.vmap`` over rows, each row a ``[1, T]``
  forward). The model's eval-mode early exits (worker convergence, ACT halting) test
  batch means; under ``vmap`` each row's loops stop on its own statistics, so a row's
  numbers do not depend on the other rows or on padding. The reference couples rows of a
  batch (spec evaluation.md §2.5, §8.1); here batch size changes speed only.
* **A shared context runs once.** The pairs of one context (the choices of a
  multiple-choice document) form a group: the context runs once (phase A, which also
  scores every choice's first token from the last context position), then each
  continuation runs from the group's carried state (phase B). Recurrence makes this exact.
  Consecutive batches of one context (batch sizes below the number of choices) reuse its
  phase-A result.
* **Fixed shapes.** Rows are padded to the batch size (phase A: a power of two up to it),
  token buffers to a few bucket lengths; a ``while`` loop feeds one token per row per
  step and stops at the longest row, so padding costs memory, not time. A row past its
  length keeps its state (per-row masks), so every row ends in its state at its length.
  One program per (phase, rows, bucket): a few compilations per run, not one per request.
* **Shared position.** The model reads the absolute position only modulo ``h_stride``
  (which tokens plan); a per-row position would turn that branch into a select (much
  slower, see :mod:`hierarchos_jax.infer.engine`), so the rows of one call share it:
  phase A starts every row at 0, and phase B batches only continuations whose context
  lengths agree modulo ``h_stride``. Drift seeds (legacy checkpoints: the chunk rule of
  spec inference.md §5) use each row's true position.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.model.hierarchos import forward
from hierarchos_jax.model.ltm import WorkingMemory
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.rosa import RosaAutomaton
from hierarchos_jax.model.state import zeros_state

LENGTH_BUCKETS = (64, 256, 1024, 4096, 16384, 65536)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static part of the scoring program."""

    seed_chunk: int   # legacy drift-seed chunk length L (0: no seeds)


def _select_rows(mask, new, old):
    """Per row: ``new`` where ``mask [R]``, else ``old``."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def _run_rows(model, mode, state, memory, ids, rosa, position, seeded: bool):
    """``ids [R, T]``: each row a batch-1 forward from its state (rows layout ``[R, 1, ...]``,
    memory and position held apart). ``position``: shared (unbatched) scalar. Returns the
    new rows state and the final hidden ``[R, T, C]``."""
    def row(st, i, r):
        st = st._replace(position=position, memory=memory)
        out, new = forward(model, i[None], st, mode=mode, rosa_ids=None if r is None else r[None],
                           drift_seed=st.drift if seeded else None)
        return new._replace(position=None, memory=None), out.hidden[0]

    return jax.vmap(row, in_axes=(0, 0, None if rosa is None else 0))(state, ids, rosa)


def _fresh_rows(config, rows: int):
    one = zeros_state(config, 1)._replace(position=None, memory=None)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (rows,) + a.shape), one)


def _program(merge, mode, spec: _Spec, leaves, state, memory, ids, rosa, targets, lengths, abs_pos, model_pos,
             score):
    """Run rows ``ids[r, :lengths[r]]`` from ``state`` token by token (module docstring).

    Returns the rows' states at their lengths, ``log_softmax`` of each row's last position
    ``[R, V]`` with its argmax (phase A), and — when the runtime flag ``score`` is set —
    per row the summed log-probabilities of ``targets`` over the first ``lengths``
    positions and whether every target was the argmax (phase B). One program serves both
    phases, so a shape compiles once.
    """
    model = merge(leaves)
    cfg = model.config
    R = ids.shape[0]
    L = spec.seed_chunk

    def column(a, t):
        return None if a is None else jax.lax.dynamic_slice_in_dim(a, t, 1, axis=1)

    def body(c):
        t, st, last, lp_sum, greedy = c
        active = t < lengths

        def run(seeded):
            return _run_rows(model, mode, st, memory, column(ids, t), column(rosa, t), model_pos + t, seeded)

        if L:  # legacy drift seed at each row's chunk starts (rare: pay for both variants only then)
            pos = abs_pos + t
            starts = (pos > 0) & (pos % L == 0)
            new, h = jax.lax.cond(jnp.any(starts & active),
                                  lambda: _select_rows(starts, run(True), run(False)), lambda: run(False))
        else:
            new, h = run(False)
        st = _select_rows(active, new, st)
        h = h[:, 0]
        last = jnp.where((t == lengths - 1)[:, None], h, last)

        def scored(acc):
            lp_sum, greedy = acc
            logits = model.logits(h)
            tgt = column(targets, t)[:, 0]
            lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tgt[:, None], axis=-1)[:, 0]
            return (lp_sum + jnp.where(active, lp, 0.0),
                    greedy & (~active | (jnp.argmax(logits, axis=-1) == tgt)))

        lp_sum, greedy = jax.lax.cond(score, scored, lambda acc: acc, (lp_sum, greedy))
        return t + 1, st, last, lp_sum, greedy

    c0 = (jnp.int32(0), state, jnp.zeros((R, cfg.context_dim), jnp.float32), jnp.zeros((R,), jnp.float32),
          jnp.ones((R,), bool))
    _, st, last, lp_sum, greedy = jax.lax.while_loop(lambda c: c[0] < jnp.max(lengths), body, c0)
    logits = model.logits(last)
    return st, jax.nn.log_softmax(logits, axis=-1), jnp.argmax(logits, axis=-1), lp_sum, greedy


_PROGRAMS: dict = {}  # (graphdef, treedef, mode, spec) -> jitted program, shared by scorers of one model


def _compiled(graphdef, treedef, mode: RunMode, spec: _Spec) -> Callable:
    key = (graphdef, treedef, mode, spec)
    fn = _PROGRAMS.get(key)
    if fn is None:
        def merge(leaves):
            return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

        fn = _PROGRAMS[key] = jax.jit(functools.partial(_program, merge, mode, spec))
    return fn


def length_bucket(n: int) -> int:
    for size in LENGTH_BUCKETS:
        if n <= size:
            return size
    return math.ceil(n / LENGTH_BUCKETS[-1]) * LENGTH_BUCKETS[-1]


def _rows_bucket(n: int, batch: int) -> int:
    return min(batch, 1 << max(0, n - 1).bit_length())


class _Group(NamedTuple):
    context: tuple
    rows: list  # indices into the pairs


def plan_batches(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
                 h_stride: int) -> list[list[int]]:
    """Order and batch the pairs: pairs with one context form a group; groups are sorted by
    (context length mod ``h_stride``, length) and their rows laid out group by group; a
    batch holds up to ``batch_size`` consecutive rows of one residue class."""
    groups: dict[tuple, _Group] = {}
    for i, (ctx, _) in enumerate(pairs):
        key = tuple(int(t) for t in ctx)
        groups.setdefault(key, _Group(key, [])).rows.append(i)
    ordered = sorted(groups.values(), key=lambda g: (len(g.context) % h_stride, len(g.context)))
    batches: list[list[int]] = []
    residue = None
    for g in ordered:
        r = len(g.context) % h_stride
        for i in g.rows:
            if not batches or len(batches[-1]) == batch_size or r != residue:
                batches.append([])
                residue = r
            batches[-1].append(i)
    return batches


class ContinuationScorer:
    """Scores token pairs with a loaded model (see the module docstring).

    ``ContinuationScorer(model, config=None, *, batch_size=1, prefill_chunk_size=None,
    memory=None)``: ``prefill_chunk_size`` overrides the chunk rule (0 for exact
    checkpoints, else ``training_chunk_size``; drift seeds only for legacy checkpoints);
    ``memory`` is the read-only working memory (default: empty, as after loading).
    """

    def __init__(self, model, config=None, *, batch_size: int = 1, prefill_chunk_size: int | None = None,
                 memory: WorkingMemory | None = None):
        self.config = cfg = config if config is not None else model.config
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.graphdef, params = nnx.split(model)
        self._leaves, self._treedef = jax.tree.flatten(params)
        self.exact = bool(cfg.inference_logit_parity or cfg.full_sample_bptt)
        self.mode = RunMode.eval(logit_parity=self.exact)
        if prefill_chunk_size is not None and prefill_chunk_size < 0:
            raise ValueError(f"prefill_chunk_size must be >= 0, got {prefill_chunk_size}")
        chunk = int(prefill_chunk_size) if prefill_chunk_size is not None else (
            0 if self.exact else int(cfg.training_chunk_size or 0))
        self.seed_chunk = 0 if self.exact else chunk
        if memory is None:
            memory = WorkingMemory.zeros(1, cfg.ltm_slots, cfg.ltm_val_dim)
        if memory.rows != 1:
            raise ValueError("the scorer reads one shared working memory ([1, S, D] arrays)")
        self.memory = WorkingMemory(*(jnp.asarray(a) for a in memory))

    def _call(self, state, ids, rosa, targets, lengths, abs_pos, model_pos, score: bool):
        fn = _compiled(self.graphdef, self._treedef, self.mode, _Spec(self.seed_chunk))
        return fn(self._leaves, state, self.memory, ids, rosa, targets, lengths, abs_pos, model_pos,
                  np.bool_(score))

    def _buffers(self, rows: list[list[int]], rosa_rows: list | None, width: int, targets: list | None = None):
        R, V = len(rows), self.config.vocab_size
        ids = np.zeros((R, width), np.int32)
        rosa = np.full((R, width), V, np.int32) if rosa_rows is not None else None
        tgt = np.zeros((R, width), np.int32) if targets is not None else None
        for r, seq in enumerate(rows):
            ids[r, :len(seq)] = seq
            if rosa is not None:
                rosa[r, :len(seq)] = rosa_rows[r]
            if tgt is not None:
                tgt[r, :len(targets[r])] = targets[r]
        return ids, rosa, tgt

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
              progress: Callable[[int], Any] | None = None) -> list[tuple[float, bool]]:
        """``[(sum log p(continuation | context), is_greedy)]`` for pairs with a non-empty
        context and continuation. ``progress(n)`` is called with the rows done per batch."""
        cfg = self.config
        V = cfg.vocab_size
        for ctx, cont in pairs:
            if len(ctx) == 0 or len(cont) == 0:
                raise ValueError("score() needs a non-empty context and continuation per pair")
            if min(min(ctx), min(cont)) < 0 or max(max(ctx), max(cont)) >= V:
                raise ValueError(f"token ids must lie in [0, {V})")
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        last_phase_a: dict = {}  # consecutive batches of one context (small batch sizes) run it once
        for batch in plan_batches(pairs, self.batch_size, cfg.h_stride):
            for i, res in zip(batch, self._score_batch([pairs[i] for i in batch], last_phase_a)):
                results[i] = res
            if progress is not None:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def _score_batch(self, pairs, last_phase_a: dict) -> list[tuple[float, bool]]:
        cfg = self.config
        use_rosa = cfg.use_rosa
        contexts: list[list[int]] = []
        slot_of: dict[tuple, int] = {}
        automata: list[RosaAutomaton] = []
        ctx_rosa: list[np.ndarray] = []
        for ctx, _ in pairs:
            key = tuple(int(t) for t in ctx)
            if key not in slot_of:
                slot_of[key] = len(contexts)
                contexts.append(list(key))
                if use_rosa:
                    a = RosaAutomaton(cfg.vocab_size)
                    ctx_rosa.append(a.extend(key))
                    automata.append(a)
        slots = [slot_of[tuple(int(t) for t in ctx)] for ctx, _ in pairs]

        # Phase A: every distinct context once (rows padded by repeating the first).
        key = tuple(map(tuple, contexts))
        if last_phase_a.get("key") == key:
            states, logp_last, argmax_last = last_phase_a["value"]
        else:
            RA = _rows_bucket(len(contexts), self.batch_size)
            pad = lambda xs: xs + [xs[0]] * (RA - len(xs))
            width = length_bucket(max(len(c) for c in contexts))
            ids, rosa, _ = self._buffers(pad(contexts), pad(ctx_rosa) if use_rosa else None, width)
            lengths = np.asarray([len(c) for c in pad(contexts)], np.int32)
            states, logp_last, argmax_last, _, _ = self._call(
                _fresh_rows(cfg, RA), ids, rosa, np.zeros_like(ids), lengths, np.zeros((RA,), np.int32),
                np.int32(0), False)
            logp_last, argmax_last = np.asarray(logp_last), np.asarray(argmax_last)
            last_phase_a.update(key=key, value=(states, logp_last, argmax_last))
        first = [(np.float32(logp_last[s, int(cont[0])]), int(argmax_last[s]) == int(cont[0]))
                 for s, (_, cont) in zip(slots, pairs)]

        # Phase B: each continuation (minus its last id) from its context's state.
        rest = [0.0] * len(pairs), [True] * len(pairs)
        if any(len(cont) > 1 for _, cont in pairs):
            R = self.batch_size
            rows = [list(cont[:-1]) for _, cont in pairs]
            tgts = [list(cont[1:]) for _, cont in pairs]
            rrosa = None
            if use_rosa:
                rrosa = [automata[s].copy().extend(r) if r else np.zeros(0, np.int64) for s, r in zip(slots, rows)]
            n = len(pairs)
            fill = lambda xs: xs + [xs[0]] * (R - n)
            width = length_bucket(max(1, max(len(r) for r in rows)))
            ids, rosa, tgt = self._buffers(fill(rows), fill(rrosa) if use_rosa else None, width, fill(tgts))
            lengths = np.asarray([len(r) for r in fill(rows)], np.int32)
            ctx_len = [len(contexts[s]) for s in slots]
            abs_pos = np.asarray(fill(ctx_len), np.int32)
            model_pos = np.int32(ctx_len[0] % cfg.h_stride)
            rows_state = jax.tree.map(lambda a: a[np.asarray(fill(slots))], states)
            _, _, _, lp, greedy = self._call(rows_state, ids, rosa, tgt, lengths, abs_pos, model_pos, True)
            rest = np.asarray(lp)[:n], np.asarray(greedy)[:n]
        out = []
        for i, (lp0, g0) in enumerate(first):
            total = np.float32(lp0) + np.float32(rest[0][i])
            out.append((float(total), bool(g0 and rest[1][i])))
        return out
