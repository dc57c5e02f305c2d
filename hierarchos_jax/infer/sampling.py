"""Next-token sampling on the device, with the reference's exact semantics (spec inference.md §7).

Order of operations, per row of ``logits [B, V]``:

1. **Repetition penalty** ``rho`` over the distinct tokens already generated in this
   generation (``seen [B, V]``; the prompt is not history): ``z / rho`` where ``z > 0``,
   else ``z * rho``. Skipped when ``rho == 1``.
2. **Greedy** when ``temperature <= 0``: ``argmax z``, ties to the lowest index.
3. **Temperature**: ``z / max(T, 1e-6)``.
4. **Top-k** (``0 < K < V``): keep every ``z >=`` the K-th largest value (ties at the
   threshold are all kept).
5. **Top-p** (``p < 1``): in descending order, drop position ``i`` iff the cumulative
   softmax probability of positions ``< i`` exceeds ``p`` (the first token crossing ``p``
   is kept). Equal scores are ordered by token id (a *stable* sort; the reference's
   unstable torch sort leaves the choice among tokens tied exactly at the cut undefined).
6. Draw from ``softmax`` of what is left.

The model's logits are finite by construction (clamped to +-30), so the reference's
non-finite check cannot fire and is not repeated here. Settings are validated up front on
the host (:meth:`SamplingParams.validated`) instead of failing in the middle of a
generation as the reference does.

Speed: a full sort of a 50k vocabulary is slow on XLA:CPU (about 8 ms per row), so the
filters work on the ``candidates`` largest scores (``lax.top_k``) and fall back to a
full stable sort — in the same compiled program, under ``lax.cond`` — only for a row
whose kept set is not decided inside those candidates (top-k with ``K > candidates``,
or a nucleus wider than the candidates). Both paths give the same kept set.

Randomness: each row has its own key; the key of draw ``i`` is
``fold_in(row_key, i)``, and ``row_key = fold_in(key(seed), row)``. A row's tokens
therefore depend only on its seed, its row index and its own logits, never on the
batch size or on how the generation is split into calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

TEMPERATURE_FLOOR = 1e-6
DEFAULT_CANDIDATES = 256


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``temperature <= 0`` is greedy decoding.

    ``top_k <= 0`` or ``top_k >= V`` disables top-k; ``top_p == 1`` disables top-p;
    ``repetition_penalty == 1`` disables the penalty. ``seed`` fixes the random draws.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validated(self) -> "SamplingParams":
        """``self`` if every setting is usable, else ``ValueError`` with a one-line reason."""
        t, p, r = self.temperature, self.top_p, self.repetition_penalty
        if not isinstance(t, (int, float)) or math.isnan(t) or math.isinf(t):
            raise ValueError(f"temperature must be a finite number (<= 0 means greedy), got {t!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be an integer (<= 0 disables it), got {self.top_k!r}")
        if not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):  # NaN fails too
            raise ValueError(f"top_p must satisfy 0 < top_p <= 1, got {p!r}")
        if not isinstance(r, (int, float)) or not (0.0 < r < math.inf):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {r!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        return self


class SamplingArrays(NamedTuple):
    """Per-row sampling settings as device arrays (changing them never recompiles)."""

    temperature: jax.Array         # [B] f32
    top_k: jax.Array               # [B] i32
    top_p: jax.Array               # [B] f32
    repetition_penalty: jax.Array  # [B] f32

    @staticmethod
    def build(params: SamplingParams, batch: int) -> "SamplingArrays":
        params = params.validated()
        full = lambda v, dt: jnp.full((batch,), v, dt)  # noqa: E731
        top_k = min(max(int(params.top_k), -1), 2**31 - 1)
        return SamplingArrays(full(params.temperature, jnp.float32), full(top_k, jnp.int32),
                              full(params.top_p, jnp.float32), full(params.repetition_penalty, jnp.float32))


def row_keys(seed: int, batch: int) -> jax.Array:
    """The per-row base keys ``fold_in(key(seed), row)`` (typed key array ``[B]``)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(batch, dtype=jnp.uint32))


def step_keys(keys: jax.Array, draw_index: jax.Array) -> jax.Array:
    """The keys of draw number ``draw_index`` (0 = the first generated token; a scalar or one
    index per row) of every row."""
    draws = jnp.broadcast_to(jnp.asarray(draw_index, jnp.uint32), keys.shape)
    return jax.vmap(jax.random.fold_in)(keys, draws)


# ---------------------------------------------------------------------------------- steps

def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    """Step 1: ``logits [B, V]`` (any float) -> f32 scores with the penalty on ``seen`` tokens."""
    z = logits.astype(jnp.float32)
    rho = penalty[:, None]
    penalised = jnp.where(z > 0, z / rho, z * rho)
    return jnp.where(seen & (rho != 1.0), penalised, z)


def greedy_tokens(scores: jax.Array) -> jax.Array:
    """Step 2: ``argmax`` per row, ties to the lowest index (int32 ``[B]``)."""
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


class _Kept(NamedTuple):
    scores: jax.Array  # [B, n] temperature-scaled scores in descending order, -inf where dropped
    ids: jax.Array     # [B, n] their token ids


def _nucleus(sorted_scores: jax.Array, ids: jax.Array, threshold: jax.Array, lse: jax.Array,
             top_p: jax.Array) -> tuple[_Kept, jax.Array]:
    """Steps 4-5 on a descending prefix of the scores. Returns the kept set and the
    cumulative probability at the prefix's last position (to tell whether the top-p cut
    was decided inside the prefix)."""
    s = jnp.where(sorted_scores >= threshold[:, None], sorted_scores, -jnp.inf)
    cum = jnp.cumsum(jnp.exp(s - lse[:, None]), axis=-1)
    use_p = (top_p < 1.0)[:, None]
    within = jnp.concatenate([jnp.ones_like(cum[:, :1], bool), cum[:, :-1] <= top_p[:, None]], axis=-1)
    keep = jnp.where(use_p, within, True) & (s > -jnp.inf)
    return _Kept(jnp.where(keep, s, -jnp.inf), ids), cum[:, -1]


def _filter_full(zt: jax.Array, top_k: jax.Array, top_p: jax.Array) -> _Kept:
    """Steps 4-5 with a full stable descending sort (exact for every row, slow on CPU)."""
    B, V = zt.shape
    neg, ids = jax.lax.sort((-zt, jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), zt.shape)),
                            dimension=-1, is_stable=True, num_keys=1)
    s = -neg
    k_on = (top_k > 0) & (top_k < V)
    kth = jnp.take_along_axis(s, jnp.clip(top_k - 1, 0, V - 1)[:, None], axis=-1)[:, 0]
    threshold = jnp.where(k_on, kth, -jnp.inf)
    lse = jax.nn.logsumexp(jnp.where(s >= threshold[:, None], s, -jnp.inf), axis=-1)
    return _nucleus(s, ids, threshold, lse, top_p)[0]


def _filtered(logits: jax.Array, seen: jax.Array, sampling: SamplingArrays, candidates: int, finish):
    """Steps 1 and 3-5, then ``finish(kept)`` (a fixed-shape result per row).

    Works on the ``candidates`` largest scores; when some row's kept set reaches past
    them, the whole batch also runs the full sort (``lax.cond``: only then) and those rows
    take its result. The kept set is the same on both paths.
    """
    z = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
    zt = z / jnp.maximum(sampling.temperature, TEMPERATURE_FLOOR)[:, None]
    B, V = zt.shape
    n = min(int(candidates), V)
    top_k, top_p = sampling.top_k, sampling.top_p
    if n == V:
        return finish(_filter_full(zt, top_k, top_p))

    cand, cand_ids = jax.lax.top_k(zt, n)  # descending; equal scores: lower id first
    k_on = (top_k > 0) & (top_k < V)
    kth = jnp.take_along_axis(cand, jnp.clip(top_k - 1, 0, n - 1)[:, None], axis=-1)[:, 0]
    threshold = jnp.where(k_on & (top_k <= n), kth, -jnp.inf)
    survivors = zt >= threshold[:, None]
    lse = jax.nn.logsumexp(jnp.where(survivors, zt, -jnp.inf), axis=-1)
    kept, cum_last = _nucleus(cand, cand_ids, threshold, lse, top_p)
    # The prefix decides a row when every survivor is in it, or the top-p cut falls inside it.
    cut_inside = (top_p < 1.0) & (cum_last > top_p)
    need_full = (k_on & (top_k > n)) | ((jnp.sum(survivors, axis=-1) > n) & ~cut_inside)
    need_full = need_full & (sampling.temperature > 0)
    prefix_result = finish(kept)

    def with_full(_):
        full_result = finish(_filter_full(zt, top_k, top_p))
        rows = need_full.reshape((B,) + (1,) * (full_result.ndim - 1))
        return jnp.where(rows, full_result, prefix_result)

    return jax.lax.cond(jnp.any(need_full), with_full, lambda _: prefix_result, None)


def filtered_logits(logits: jax.Array, seen: jax.Array, sampling: SamplingArrays, *,
                    candidates: int = DEFAULT_CANDIDATES) -> jax.Array:
    """The scores the draw uses, ``[B, V]``: penalised, temperature-scaled, ``-inf`` where
    top-k / top-p dropped the token (for inspection and tests; rows with ``T <= 0`` are
    filtered as if sampled)."""
    B, V = logits.shape

    def scatter(kept: _Kept) -> jax.Array:
        out = jnp.full((B, V), -jnp.inf, jnp.float32)
        return out.at[jnp.arange(B)[:, None], kept.ids].set(kept.scores)

    return _filtered(logits, seen, sampling, candidates, scatter)


def sample_tokens(logits: jax.Array, seen: jax.Array, sampling: SamplingArrays, keys: jax.Array, *,
                  greedy_only: bool = False, candidates: int = DEFAULT_CANDIDATES) -> jax.Array:
    """The next token of every row (int32 ``[B]``).

    ``logits [B, V]`` are the raw model logits, ``seen [B, V]`` the tokens generated so far
    (repetition history), ``keys [B]`` the keys of this draw (:func:`step_keys`).
    ``greedy_only`` (static) compiles only the greedy path, for batches where every
    ``temperature <= 0``.
    """
    scores = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
    greedy = greedy_tokens(scores)
    if greedy_only:
        return greedy

    def draw(kept: _Kept) -> jax.Array:
        choice = jax.vmap(jax.random.categorical)(keys, kept.scores)
        return jnp.take_along_axis(kept.ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    drawn = _filtered(logits, seen, sampling, candidates, draw)
    return jnp.where(sampling.temperature <= 0, greedy, drawn)


# ---------------------------------------------------------------------- uncertainty stop

class UncertaintyStats(NamedTuple):
    """What the uncertainty stop (spec §8.1) reads from the raw logits of a fed token."""

    nonfinite: jax.Array  # [B] bool: softmax has NaN/Inf
    eos_prob: jax.Array   # [B] f32
    entropy: jax.Array    # [B] f32: -sum p ln(p + 1e-10)
    max_prob: jax.Array   # [B] f32


def uncertainty_stats(logits: jax.Array, eos_id: int) -> UncertaintyStats:
    """Softmax statistics of raw ``logits [B, V]`` (no penalty, no temperature)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    nonfinite = ~jnp.all(jnp.isfinite(probs), axis=-1)
    eos = probs[:, eos_id] if 0 <= eos_id < logits.shape[-1] else jnp.zeros(logits.shape[:1], jnp.float32)
    entropy = -jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
    return UncertaintyStats(nonfinite, eos, entropy, jnp.max(probs, axis=-1))
