"""Which examples form which batch in an epoch (spec/training.md §4.8).

Length-grouped batching: a random permutation of all examples, each consecutive window of ``Wb``
examples stably sorted by length (longest first), cut into batches of ``B`` (the last may be
short), the batches emitted in a random order. Preserve-order mode (consolidated chunk
directories) skips the global permutation and shuffles the batches within each window. Without
bucketing: one random permutation, batches of ``B``. Every epoch covers every example once; the
generator is seeded with ``seed + epoch`` (NumPy's PCG64, not PyTorch's stream: the structure is
the reference's, the draws are not).
"""

from __future__ import annotations

import numpy as np


def bucket_window(batch_size: int, requested: int | None) -> int:
    """``Wb``: the requested window (``50·B`` if none), at least ``B``, rounded down to a multiple of ``B``."""
    B = int(batch_size)
    w = max(B, int(requested or 50 * B))
    return max(B, (w // B) * B)


def num_batches(n: int, batch_size: int) -> int:
    return -(-int(n) // int(batch_size))


def epoch_batches(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, bucketing: bool = True,
                  window: int | None = None, preserve_order: bool = False) -> list[np.ndarray]:
    """The batches (arrays of example indices) of ``epoch``, in the order they are served."""
    lengths = np.maximum(np.asarray(lengths, np.int64), 1)
    N, B = lengths.shape[0], int(batch_size)
    rng = np.random.Generator(np.random.PCG64((int(seed) + int(epoch)) % (2**63 - 1)))
    if not bucketing or B == 1:
        order = rng.permutation(N) if N > 1 else np.arange(N)
        return [order[s:s + B] for s in range(0, N, B)]
    Wb = bucket_window(B, window)
    order = np.arange(N) if preserve_order else (rng.permutation(N) if N > 1 else np.arange(N))
    batches: list[np.ndarray] = []
    for s in range(0, N, Wb):
        win = order[s:s + Wb]
        win = win[np.argsort(-lengths[win], kind="stable")]
        chunk = [win[k:k + B] for k in range(0, win.shape[0], B)]
        if preserve_order and len(chunk) > 1:
            chunk = [chunk[i] for i in rng.permutation(len(chunk))]
        batches += chunk
    if not preserve_order and len(batches) > 1:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
