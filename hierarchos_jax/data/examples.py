"""Tokenized training examples and a compact random-access store of them.

An :class:`Example` is one unpadded row: ``input_ids``, unshifted ``labels`` (-100 = ignored),
optional ``loss_weights`` and ``attention_mask``, and its effective length (what the collator
pads the batch to, spec/training.md §4.3). Rows that were stored padded (pre-chunked JSONL) keep
only their effective part plus the id their stored padding used (``fill_id``), which is what the
collator copies beyond a row's end — the same values as copying the stored padding.

:class:`ExampleStore` keeps all rows back to back in flat arrays with offsets (one allocation per
field; memory-mapped for consolidated chunk directories).
"""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE = -100


@dataclasses.dataclass
class Example:
    input_ids: np.ndarray                       # int32 [n]
    labels: np.ndarray                          # int32 [n]
    loss_weights: np.ndarray | None = None      # float32 [n]
    attention_mask: np.ndarray | None = None    # int32 [n]; None = all ones
    fill_id: int | None = None                  # id of the row's stored padding (None: the loader's pad id)
    effective_length: int | None = None         # None: the stored length

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return len(self) if self.effective_length is None else int(self.effective_length)


class ExampleStore:
    """Rows back to back: ``offsets[i]:offsets[i+1]`` is row ``i`` in every field."""

    def __init__(self, input_ids, labels, offsets, *, loss_weights=None, attention_mask=None, fill_ids=None,
                 effective_lengths=None, pad_id: int = 0):
        self.input_ids = input_ids
        self.labels = labels
        self.offsets = np.asarray(offsets, np.int64)
        self.loss_weights = loss_weights
        self.attention_mask = attention_mask
        self.fill_ids = fill_ids
        self.pad_id = int(pad_id)
        self.stored_lengths = np.diff(self.offsets).astype(np.int64)
        # What batching sorts by and the collator pads to.
        self.lengths = self.stored_lengths if effective_lengths is None else np.asarray(effective_lengths, np.int64)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Example:
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        return Example(
            np.asarray(self.input_ids[s:e], np.int32),
            np.asarray(self.labels[s:e], np.int32),
            None if self.loss_weights is None else np.asarray(self.loss_weights[s:e], np.float32),
            None if self.attention_mask is None else np.asarray(self.attention_mask[s:e], np.int32),
            self.pad_id if self.fill_ids is None else int(self.fill_ids[i]),
            int(self.lengths[i]),
        )

    @classmethod
    def from_examples(cls, examples: list[Example], *, pad_id: int) -> ExampleStore:
        lengths = np.array([len(ex) for ex in examples], np.int64)
        offsets = np.zeros(len(examples) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
        ids = cat([ex.input_ids for ex in examples], np.int32)
        labels = cat([ex.labels for ex in examples], np.int32)
        weights = None
        if any(ex.loss_weights is not None for ex in examples):
            weights = cat([ex.loss_weights if ex.loss_weights is not None else np.ones(len(ex), np.float32)
                           for ex in examples], np.float32)
        mask = None
        if any(ex.attention_mask is not None and not np.all(ex.attention_mask) for ex in examples):
            mask = cat([ex.attention_mask if ex.attention_mask is not None else np.ones(len(ex), np.int8)
                        for ex in examples], np.int8)
        fills = None
        if any(ex.fill_id is not None and ex.fill_id != pad_id for ex in examples):
            fills = np.array([pad_id if ex.fill_id is None else ex.fill_id for ex in examples], np.int32)
        eff = np.array([ex.length for ex in examples], np.int64)
        eff = None if np.array_equal(eff, lengths) else eff
        return cls(ids, labels, offsets, loss_weights=weights, attention_mask=mask, fill_ids=fills,
                   effective_lengths=eff, pad_id=pad_id)
