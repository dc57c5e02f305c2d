"""ROSA ids for a collated batch, on the host, as a Grain map (runs in the reader threads).

Each row's ids come from its real tokens only (attention mask), starting from an empty history,
as :func:`~hierarchos_jax.model.rosa.rosa_ids_for_padded` defines; padding gets the sentinel ``V``
(spec/training.md §4.7). With ROSA disabled the whole array is the sentinel.
"""

from __future__ import annotations

import grain
import numpy as np

from hierarchos_jax.model.rosa import rosa_ids_for_padded


class AddRosaIds(grain.transforms.Map):
    def __init__(self, vocab_size: int, *, enabled: bool = True):
        self.vocab_size = int(vocab_size)
        self.enabled = bool(enabled)

    def map(self, batch: dict) -> dict:
        ids = batch["input_ids"]
        if self.enabled:
            rosa = rosa_ids_for_padded(ids, attention_mask=batch["attention_mask"], vocab_size=self.vocab_size)
        else:
            rosa = np.full(ids.shape, self.vocab_size)
        return {**batch, "rosa_ids": rosa.astype(np.int32)}
