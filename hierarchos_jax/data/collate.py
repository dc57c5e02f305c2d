"""Dynamic padding of a batch of examples (spec/training.md §4.3, §5.3).

The batch width is the longest effective length ``W``; each row copies its own stored values up
to ``W`` and is padded beyond them with its fill id (the loader's pad id, or the id of the row's
stored padding), label -100, mask 0, weight 0. The time axis is then padded with id 0 (as the
reference's compile padding) to ``T``, a multiple of the chunk size, so compiled shapes repeat.
Rows without loss weights get 1.0 on their real positions.
"""

from __future__ import annotations

import numpy as np

from hierarchos_jax.data.examples import IGNORE, Example


def padded_width(width: int, chunk_size: int) -> int:
    c = max(int(chunk_size), 1)
    return max(-(-int(width) // c) * c, c)


def collate(examples: list[Example], *, pad_id: int, chunk_size: int) -> dict[str, np.ndarray]:
    """``input_ids``/``labels``/``attention_mask`` int32 and ``loss_weights`` float32, all ``[B, T]``."""
    B = len(examples)
    W = max(ex.length for ex in examples)
    T = padded_width(W, chunk_size)
    ids = np.zeros((B, T), np.int32)
    labels = np.full((B, T), IGNORE, np.int32)
    mask = np.zeros((B, T), np.int32)
    weights = np.zeros((B, T), np.float32)
    for b, ex in enumerate(examples):
        n = min(W, len(ex))
        ids[b, :W] = pad_id if ex.fill_id is None else ex.fill_id
        ids[b, :n] = ex.input_ids[:n]
        labels[b, :n] = ex.labels[:n]
        mask[b, :n] = 1 if ex.attention_mask is None else ex.attention_mask[:n]
        weights[b, :n] = 1.0 if ex.loss_weights is None else ex.loss_weights[:n]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "loss_weights": weights}
