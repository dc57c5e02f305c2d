"""ROSA: a host-side next-token hint computed from each row's token history.

ROSA needs no parameters and no accelerator. It runs in NumPy and plain Python
on the host, and the model receives the result as an integer input
(``rosa_ids``). The model spec covers it in ``/work/shared/spec/model.md`` §5.1–5.2.

The rule
--------
Let ``x_0 … x_i`` be the history up to and including position ``i``. Find the
longest ``L >= 1`` for which the length-``L`` suffix ending at ``i`` also
occurs ending at an earlier position ``j < i``. Occurrences may overlap the
suffix itself. If there is no such ``L``, the id is "no prediction", encoded as
``vocab_size`` (``V``). Otherwise take the largest such ``j`` (the most recent
earlier occurrence) for that ``L``, and the id is the token after it,
``x_{j+1}``. Since ``j <= i-1``, this token is always in the history; when
``j = i-1`` it is ``x_i`` itself. Examples (``-`` = no prediction)::

    [1,2,1,2,3,1,2]     -> [-,-,2,1,-,2,3]
    [4,4,4]             -> [-,4,4]
    [4,4,4,5,4,4,6]     -> [-,4,4,-,5,5,-]
    [0,1,0,1,0,2,0,1,0] -> [-,-,1,0,1,-,2,0,2]

The id at ``i`` depends only on ``x_0..x_i``. So the result is the same
however the history is split into chunks.

How it is computed
------------------
:class:`RosaAutomaton` builds the standard online suffix automaton of the
history, adding one token at a time. Each state groups the substrings that
share the same set of end positions (endpos). The suffix link of a state
points to the state of its longest suffix that has a larger endpos set. After
token ``i`` is appended, let ``r`` be the new state of the whole prefix. Its
suffix link ``s = link(r)`` holds the longest suffix of ``x_0..x_i`` that
also ends somewhere before ``i``, so ``L = len(s)``. Every string in ``s``
has the same end positions, so ``j*`` is the largest end position of ``s``
other than ``i``. If ``s`` is the root, there is no prediction.

To get ``j*`` we track, for every state, the most recent position at which it
was a suffix of the history ("last end position"). Appending token ``i``
makes position ``i`` an end position of exactly the states on the suffix-link
path from ``r`` to the root. So each step is a "set the whole root path to
``i``" update, followed later by point queries. The reference walks that path
on every token, which is quadratic on periodic input such as long runs of
padding or ``abcabc…``. Here the suffix-link tree is stored as a link-cut tree
instead. A preferred path is the chain that the most recent update went
through, and every node on it has the same last end position. So one value
per splay tree (kept at its root) is enough, and each step costs amortised
``O(log n)`` splay rotations on top of the automaton's amortised ``O(1)``.
A clone state (created when a state is split) sits between the split state
``q`` and ``q``'s old suffix-link parent, and starts with ``q``'s last end
position.

Public API
----------
* :class:`RosaAutomaton`: incremental per-row automaton (``extend``,
  ``tokens``, ``copy``).
* :func:`rosa_ids`: ids for one whole sequence.
* :func:`rosa_ids_reference`: brute-force oracle, used by the tests.
* :func:`rosa_step`: the model's batch contract: past tokens plus current
  ``input_ids``, with cached automata.
* :class:`RosaBatch`: a small stateful wrapper around :func:`rosa_step`.
* :func:`rosa_ids_for_padded`: ids for padded data-pipeline batches (``V`` at
  padded positions).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "RosaAutomaton",
    "RosaBatch",
    "rosa_ids",
    "rosa_ids_reference",
    "rosa_step",
    "rosa_ids_for_padded",
]


def _as_token_list(tokens) -> List[int]:
    """Convert a 1-D integer sequence (list, tuple or array) to a list of Python ints."""
    if isinstance(tokens, list) and all(type(t) is int for t in tokens):
        return list(tokens)
    arr = np.asarray(tokens)
    if arr.size == 0:
        return []
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D token sequence, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"tokens must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False).tolist()


class RosaAutomaton:
    """Online suffix automaton over one row's token history.

    ``extend(tokens)`` appends tokens and returns one ROSA id per new position
    (``vocab_size`` meaning "no prediction"). Any split of the history into
    chunks gives the same ids.

    The state lives in plain Python lists and dicts. Index 0 is a null
    sentinel and index 1 is the root (the empty string):

    * ``_next[v]``: dict of outgoing transitions ``token -> state``;
    * ``_link[v]``: suffix link (0 for the root);
    * ``_len[v]``: length of the longest string in ``v``;
    * ``_lc``, ``_rc``, ``_par``: link-cut-tree children and parent.
      ``_par`` is either the splay parent or, at a splay root, the path-parent;
    * ``_val[v]``: last end position of the preferred path. Only valid when
      ``v`` is the root of its splay tree.
    """

    __slots__ = (
        "vocab_size",
        "_next",
        "_link",
        "_len",
        "_lc",
        "_rc",
        "_par",
        "_val",
        "_last",
        "_hist",
        "_buf",
    )

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)
        # index 0: null sentinel, index 1: root state
        self._next: List[dict] = [{}, {}]
        self._link: List[int] = [0, 0]
        self._len: List[int] = [0, 0]
        self._lc: List[int] = [0, 0]
        self._rc: List[int] = [0, 0]
        self._par: List[int] = [0, 0]
        self._val: List[int] = [-1, -1]
        self._last: int = 1
        self._hist: List[int] = []
        self._buf = np.empty(16, dtype=np.int64)

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return len(self._hist)

    @property
    def tokens(self) -> np.ndarray:
        """The full token history as a read-only int64 array (a view)."""
        view = self._buf[: len(self._hist)]
        view.flags.writeable = False
        return view

    def tokens_equal(self, other) -> bool:
        """True if the history equals the 1-D integer sequence ``other``."""
        other = np.asarray(other)
        n = len(self._hist)
        if other.ndim != 1 or other.shape[0] != n:
            return False
        if n == 0:
            return True
        return bool(np.array_equal(self._buf[:n], other))

    @property
    def num_states(self) -> int:
        """Number of automaton states, including the root (at most ``2n``)."""
        return len(self._len) - 1

    def copy(self) -> "RosaAutomaton":
        """Return an independent copy, so that generation can branch."""
        new = RosaAutomaton.__new__(RosaAutomaton)
        new.vocab_size = self.vocab_size
        new._next = [d.copy() for d in self._next]
        new._link = self._link[:]
        new._len = self._len[:]
        new._lc = self._lc[:]
        new._rc = self._rc[:]
        new._par = self._par[:]
        new._val = self._val[:]
        new._last = self._last
        new._hist = self._hist[:]
        new._buf = self._buf.copy()
        return new

    __copy__ = copy

    def __repr__(self) -> str:
        return (
            f"RosaAutomaton(vocab_size={self.vocab_size}, n_tokens={len(self._hist)}, "
            f"n_states={self.num_states})"
        )

    # ----------------------------------------------------------------- extend
    def extend(self, tokens) -> np.ndarray:
        """Append ``tokens`` and return their ROSA ids (int64, shape ``[len(tokens)]``)."""
        toks = _as_token_list(tokens)
        m = len(toks)
        if m == 0:
            return np.empty(0, dtype=np.int64)

        V = self.vocab_size
        nxt = self._next
        link = self._link
        ln = self._len
        lc = self._lc
        rc = self._rc
        par = self._par
        val = self._val
        hist = self._hist
        last = self._last
        out = [V] * m

        def splay(x):
            # Rotate x to the root of its splay tree. The path value stored at
            # the old root moves to x. No lazy tags are needed: values are
            # uniform along a preferred path, and the tree is never re-rooted.
            while True:
                y = par[x]
                if y == 0 or (lc[y] != x and rc[y] != x):
                    return
                z = par[y]
                y_root = z == 0 or (lc[z] != y and rc[z] != y)
                if not y_root:
                    # zig-zig rotates y first, zig-zag rotates x first
                    w = par[z]
                    z_root = w == 0 or (lc[w] != z and rc[w] != z)
                    if (lc[y] == x) == (lc[z] == y):
                        # rotate(y) about z
                        if lc[z] == y:
                            b = rc[y]
                            lc[z] = b
                            rc[y] = z
                        else:
                            b = lc[y]
                            rc[z] = b
                            lc[y] = z
                        if b:
                            par[b] = z
                        par[z] = y
                        par[y] = w
                        if z_root:
                            val[y] = val[z]
                        elif lc[w] == z:
                            lc[w] = y
                        else:
                            rc[w] = y
                        y_root = z_root
                        z = w
                    else:
                        # rotate(x) about y
                        if lc[y] == x:
                            b = rc[x]
                            lc[y] = b
                            rc[x] = y
                        else:
                            b = lc[x]
                            rc[y] = b
                            lc[x] = y
                        if b:
                            par[b] = y
                        par[y] = x
                        par[x] = z
                        if lc[z] == y:
                            lc[z] = x
                        else:
                            rc[z] = x
                        y = z
                        z = w
                        y_root = z_root
                # rotate(x) about its parent y (grand-parent z)
                if lc[y] == x:
                    b = rc[x]
                    lc[y] = b
                    rc[x] = y
                else:
                    b = lc[x]
                    rc[y] = b
                    lc[x] = y
                if b:
                    par[b] = y
                par[y] = x
                par[x] = z
                if y_root:
                    val[x] = val[y]
                elif lc[z] == y:
                    lc[z] = x
                else:
                    rc[z] = x

        base = len(hist)
        hist.extend(toks)
        for k in range(m):
            t = toks[k]
            i = base + k
            # ---- online suffix automaton: add state r for the whole prefix
            r = len(ln)
            ln.append(ln[last] + 1)
            nxt.append({})
            link.append(0)
            lc.append(0)
            rc.append(0)
            par.append(0)
            val.append(-1)
            p = last
            while p and t not in nxt[p]:
                nxt[p][t] = r
                p = link[p]
            if not p:
                s = 1
            else:
                q = nxt[p][t]
                if ln[p] + 1 == ln[q]:
                    s = q
                else:
                    # Split q: the clone u takes the strings of q of length
                    # <= len(p)+1. In the suffix-link tree u goes between q
                    # and q's old parent and starts with q's last end position.
                    u = len(ln)
                    ln.append(ln[p] + 1)
                    nxt.append(nxt[q].copy())
                    link.append(link[q])
                    lc.append(0)
                    rc.append(0)
                    # cut q from its parent: splay q; the part of its
                    # preferred path above q becomes a separate path.
                    splay(q)
                    a = lc[q]
                    if a:
                        lc[q] = 0
                        par[a] = par[q]
                        val[a] = val[q]
                    par.append(link[q])  # path-parent of u = old link(q)
                    val.append(val[q])
                    par[q] = u
                    link[q] = u
                    while p and nxt[p].get(t) == q:
                        nxt[p][t] = u
                        p = link[p]
                    s = u
            link[r] = s
            # ---- query: last end position of s before i
            if s != 1:
                splay(s)
                out[k] = hist[val[s] + 1]
            # ---- hang r under s, then access(r) and set the root path to i
            par[r] = s
            x = r
            prev = 0
            while x:
                splay(x)
                c = rc[x]
                if c:
                    val[c] = val[x]
                rc[x] = prev
                prev = x
                x = par[x]
            splay(r)
            val[r] = i
            last = r

        self._last = last
        # keep the numpy mirror of the history in sync
        n = len(hist)
        if n > self._buf.shape[0]:
            cap = max(n, 2 * self._buf.shape[0])
            nb = np.empty(cap, dtype=np.int64)
            nb[:base] = self._buf[:base]
            self._buf = nb
        self._buf[base:n] = toks
        return np.asarray(out, dtype=np.int64)


def rosa_ids(tokens, vocab_size: int) -> np.ndarray:
    """ROSA ids (int64) for one whole sequence, computed with a fresh automaton."""
    return RosaAutomaton(vocab_size).extend(tokens)


def rosa_ids_reference(tokens, vocab_size: int) -> np.ndarray:
    """Brute-force oracle for the ROSA rule. Use it only in tests.

    This is a direct transcription of the rule. For each position ``i`` and
    every earlier end position ``j < i``, count how many tokens match going
    backwards from ``i`` and ``j`` (the common-suffix length ``c(j)`` of
    ``x[..i]`` and ``x[..j]``). The suffix of length ``L`` ending at ``i``
    occurs ending at ``j`` exactly when ``c(j) >= L``. So the longest ``L`` is
    ``max_j c(j)`` and ``j*`` is the largest ``j`` reaching it. If the maximum
    is 0, there is no prediction. Worst case ``O(n^3)``; typically ``O(n^2)``.
    """
    x = _as_token_list(tokens)
    n = len(x)
    out = np.full(n, int(vocab_size), dtype=np.int64)
    for i in range(n):
        best_len, best_j = 0, -1
        for j in range(i):
            c = 0
            while c <= j and x[j - c] == x[i - c]:
                c += 1
            if c >= best_len and c > 0:  # ">=": a later j wins ties
                best_len, best_j = c, j
        if best_len > 0:
            out[i] = x[best_j + 1]
    return out


# ---------------------------------------------------------------------------
# Batch contract
# ---------------------------------------------------------------------------
def _as_int64_2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def rosa_step(
    past_tokens: Optional[np.ndarray],
    input_ids: np.ndarray,
    vocab_size: int,
    automata: Optional[Sequence[Optional[RosaAutomaton]]] = None,
) -> Tuple[np.ndarray, np.ndarray, List[RosaAutomaton]]:
    """Compute ROSA ids for one model call (spec §5.2).

    Args:
      past_tokens: ``[B, P]`` or ``[1, P]`` (broadcast to ``B`` rows) int
        history from earlier calls, a 1-D ``[P]`` array (treated as ``[1, P]``),
        or ``None`` (empty history).
      input_ids: ``[B, T]`` current tokens. Padding tokens are included like
        any other token; the attention mask plays no part.
      vocab_size: ``V``, the "no prediction" id.
      automata: optional cache of per-row automata, either ``B`` entries or a
        single entry broadcast to all rows. Entries may be ``None``. A cached
        automaton is used only if its history equals that row's past tokens and
        its ``vocab_size`` equals ``V``. Otherwise the row is rebuilt from its
        full history. Both ways give the same ids.

    Returns:
      ``(ids, new_past, automata)``:

      * ``ids``: int64 ``[B, T]``, the rule applied at the last ``T`` positions
        of ``past + input``, with values in ``[0, V]`` for tokens in ``[0, V)``;
      * ``new_past``: int64 ``[B, P+T]``, the full history, never truncated;
      * ``automata``: list of ``B`` automata whose histories equal
        ``new_past``.

    Cached automata are extended **in place**. Call ``copy()`` on them first
    if the pre-call state is still needed, e.g. to branch generation. If one
    object serves several rows, each extra row gets its own copy, made before
    anything is changed.
    """
    V = int(vocab_size)
    inp = np.asarray(input_ids)
    if inp.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {inp.shape}")
    inp = _as_int64_2d(inp, "input_ids")
    B, T = inp.shape

    if past_tokens is None:
        past = np.zeros((B, 0), dtype=np.int64)
    else:
        past = _as_int64_2d(past_tokens, "past_tokens")
        if past.shape[0] == 1 and B != 1:
            past = np.broadcast_to(past, (B, past.shape[1]))
        elif past.shape[0] != B:
            raise ValueError(
                f"ROSA past_tokens batch {past.shape[0]} does not match input batch {B}"
            )
    new_past = np.concatenate([past, inp], axis=1)

    cache: List[Optional[RosaAutomaton]]
    if automata is None:
        cache = [None] * B
    else:
        cache = list(automata)
        if len(cache) == 1 and B > 1:
            cache = cache * B
        elif len(cache) < B:
            cache = cache + [None] * (B - len(cache))
        else:
            cache = cache[:B]

    # Pass 1: decide which cached automata are usable. Nothing is mutated
    # yet, so a shared object is still in its pre-call state when copied.
    plan: List[Optional[RosaAutomaton]] = []
    seen = set()
    for b in range(B):
        a = cache[b]
        if (
            isinstance(a, RosaAutomaton)
            and a.vocab_size == V
            and a.tokens_equal(past[b])
        ):
            if id(a) in seen:
                a = a.copy()
            else:
                seen.add(id(a))
            plan.append(a)
        else:
            plan.append(None)

    # Pass 2: extend the usable automata; rebuild the rest from full history.
    ids = np.empty((B, T), dtype=np.int64)
    out_automata: List[RosaAutomaton] = []
    for b in range(B):
        a = plan[b]
        if a is not None:
            ids[b] = a.extend(inp[b])
        else:
            a = RosaAutomaton(V)
            row_ids = a.extend(new_past[b])
            if T:
                ids[b] = row_ids[-T:]
        out_automata.append(a)
    return ids, new_past, out_automata


class RosaBatch:
    """Stateful wrapper: carries ``past_tokens`` and per-row automata across calls."""

    def __init__(
        self,
        vocab_size: int,
        past_tokens: Optional[np.ndarray] = None,
        automata: Optional[Sequence[Optional[RosaAutomaton]]] = None,
    ):
        self.vocab_size = int(vocab_size)
        self.past_tokens = None if past_tokens is None else _as_int64_2d(past_tokens, "past_tokens")
        self.automata = None if automata is None else list(automata)

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Return ids ``[B, T]`` for ``input_ids`` and append them to the carried history."""
        ids, self.past_tokens, self.automata = rosa_step(
            self.past_tokens, input_ids, self.vocab_size, self.automata
        )
        return ids

    def copy(self) -> "RosaBatch":
        """Independent copy (the automata are duplicated), e.g. to branch generation."""
        return RosaBatch(
            self.vocab_size,
            None if self.past_tokens is None else self.past_tokens.copy(),
            None if self.automata is None else [None if a is None else a.copy() for a in self.automata],
        )


def rosa_ids_for_padded(
    input_ids: np.ndarray,
    lengths_or_mask=None,
    vocab_size: Optional[int] = None,
    *,
    lengths=None,
    attention_mask=None,
) -> np.ndarray:
    """ROSA ids for a padded batch, as cached by the data pipeline.

    Each row's ids are computed on its real (unpadded) tokens only, starting
    from an empty history. Padded positions get ``V``.

    ``lengths_or_mask`` (or the keyword ``lengths=`` / ``attention_mask=``) may be:

    * 1-D ``[B]`` lengths: row ``b``'s real tokens are ``input_ids[b, :len_b]``
      (right padding);
    * 2-D ``[B, T]`` attention mask: the real tokens are the positions where
      the mask is nonzero, taken in order, so left or right padding both
      work. Their ids are written back to those positions;
    * ``None``: no padding.
    """
    if vocab_size is None:
        raise TypeError("vocab_size is required")
    V = int(vocab_size)
    inp = np.asarray(input_ids)
    if inp.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {inp.shape}")
    inp = _as_int64_2d(inp, "input_ids")
    B, T = inp.shape
    given = [v for v in (lengths_or_mask, lengths, attention_mask) if v is not None]
    if len(given) > 1:
        raise TypeError("pass only one of lengths_or_mask, lengths=, attention_mask=")
    spec = given[0] if given else None
    out = np.full((B, T), V, dtype=np.int64)
    if spec is None:
        for b in range(B):
            out[b] = rosa_ids(inp[b], V)
        return out
    spec = np.asarray(spec)
    if attention_mask is not None and spec.ndim != 2:
        raise ValueError("attention_mask must be [B, T]")
    if lengths is not None and spec.ndim != 1:
        raise ValueError("lengths must be [B]")
    if spec.ndim == 1:
        if spec.shape[0] != B:
            raise ValueError(f"lengths must have shape [{B}], got {spec.shape}")
        for b in range(B):
            n = int(spec[b])
            if n < 0 or n > T:
                raise ValueError(f"length {n} out of range [0, {T}] for row {b}")
            out[b, :n] = rosa_ids(inp[b, :n], V)
    elif spec.ndim == 2:
        if spec.shape != (B, T):
            raise ValueError(f"attention_mask must have shape {(B, T)}, got {spec.shape}")
        keep = spec != 0
        for b in range(B):
            idx = np.nonzero(keep[b])[0]
            out[b, idx] = rosa_ids(inp[b, idx], V)
    else:
        raise ValueError(f"lengths_or_mask must be 1-D or 2-D, got shape {spec.shape}")
    return out
