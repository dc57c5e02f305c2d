"""The training input pipeline: Grain datasets over an example store, endless over epochs.

Element ``i`` of the (infinite) Grain ``MapDataset`` is batch ``i mod N_b`` of epoch ``i div N_b``
(the epoch's batch plan comes from :mod:`~hierarchos_jax.data.bucketing`, seeded with
``seed + epoch``). Two Grain maps turn it into arrays: gather + collate, then ROSA ids on the
host; both run in Grain's reader threads. Because every batch is a pure function of its index,
the iterator state is just the next index: restoring it continues the exact same batch sequence.
"""

from __future__ import annotations

import dataclasses
import sys
import threading

import grain
import numpy as np

from hierarchos_jax.data.bucketing import epoch_batches, num_batches
from hierarchos_jax.data.collate import collate
from hierarchos_jax.data.examples import IGNORE
from hierarchos_jax.data.rosa_map import AddRosaIds
from hierarchos_jax.data.stats import DataStats


class EpochBatchPlan(grain.MapDataset):
    """Element ``i``: the example indices of batch ``i mod N_b`` of epoch ``i div N_b``."""

    def __init__(self, lengths: np.ndarray, batch_size: int, *, seed: int, bucketing: bool,
                 window: int | None, preserve_order: bool):
        super().__init__()
        self.lengths = np.asarray(lengths, np.int64)
        self.batch_size = int(batch_size)
        self.kw = {"seed": int(seed), "bucketing": bucketing, "window": window, "preserve_order": preserve_order}
        self.batches_per_epoch = num_batches(len(self.lengths), batch_size)
        self._plans: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize

    def plan(self, epoch: int) -> list[np.ndarray]:
        with self._lock:
            if epoch not in self._plans:
                if len(self._plans) >= 3:
                    self._plans.pop(min(self._plans))
                self._plans[epoch] = epoch_batches(self.lengths, self.batch_size, epoch=epoch, **self.kw)
            return self._plans[epoch]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, step = divmod(int(index), self.batches_per_epoch)
        return self.plan(epoch)[step]

    def __str__(self) -> str:
        return f"EpochBatchPlan(examples={len(self.lengths)}, batch_size={self.batch_size})"


class GatherAndCollate(grain.transforms.Map):
    """Example indices -> padded numpy arrays ``[B, T]`` (T a multiple of the chunk size)."""

    def __init__(self, store, *, pad_id: int, chunk_size: int):
        self.store, self.pad_id, self.chunk_size = store, int(pad_id), int(chunk_size)

    def map(self, indices):
        return collate([self.store[int(i)] for i in indices], pad_id=self.pad_id, chunk_size=self.chunk_size)


class TrainIterator:
    """Endless iterator of batches with a JSON-serialisable state (``get_state``/``set_state``)."""

    def __init__(self, data: TrainData):
        self._data = data
        self._it = data.dataset.to_iter_dataset(data.read_options).__iter__()
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._next += 1
        return batch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._next // self._data.batches_per_epoch

    @property
    def step_in_epoch(self) -> int:
        """Index of the next batch inside its epoch."""
        return self._next % self._data.batches_per_epoch

    def get_state(self) -> dict:
        return {"next_index": self._next, "epoch": self.epoch, "step": self.step_in_epoch,
                **self._data.fingerprint()}

    def set_state(self, state: dict) -> None:
        mine = self._data.fingerprint()
        diff = [k for k, v in mine.items() if k in state and state[k] != v]
        if diff:
            raise ValueError("the saved data position belongs to other data or settings ("
                             + ", ".join(f"{k}: saved {state[k]}, now {mine[k]}" for k in diff) + ")")
        try:
            self._next = int(state["next_index"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a data position (no integer next_index): {state!r}"[:200]) from None
        self._it.set_state({"next_index": self._next})

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


@dataclasses.dataclass
class TrainData:
    """Batches of the training data; ``iterator()`` starts at the first batch of epoch 0."""

    dataset: grain.MapDataset
    batches_per_epoch: int
    stats: DataStats
    num_examples: int
    num_tokens: int
    max_length: int
    batch_size: int
    seed: int
    description: str
    read_options: grain.ReadOptions
    store: object = None        # the examples (ExampleStore / consolidated.ShardedStore)

    def iterator(self) -> TrainIterator:
        return TrainIterator(self)

    def fingerprint(self) -> dict:
        return {"examples": self.num_examples, "tokens": self.num_tokens, "batch_size": self.batch_size,
                "seed": self.seed}


def make_train_data(loaded, *, vocab_size: int, batch_size: int, chunk_size: int, seed: int,
                    bucketing: bool = True, window: int | None = None, threads: int = 2,
                    use_rosa: bool = True) -> TrainData:
    """Wrap a loaded store (:class:`~hierarchos_jax.data.sources.LoadedData`) into Grain datasets."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1 (got {batch_size})")
    store = loaded.store
    plan = EpochBatchPlan(store.lengths, batch_size, seed=seed, bucketing=bucketing, window=window,
                          preserve_order=loaded.preserve_order)
    ds = plan.map(GatherAndCollate(store, pad_id=store.pad_id, chunk_size=chunk_size))
    ds = ds.map(AddRosaIds(vocab_size, enabled=use_rosa))
    threads = max(int(threads), 0)
    return TrainData(ds, plan.batches_per_epoch, loaded.stats, len(store), int(store.num_tokens),
                     int(loaded.max_length), int(batch_size), int(seed), loaded.description,
                     grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 2 * threads)), store)


def check_supervision(data: TrainData, *, prompt_completion_mode: bool, train_prompt_tokens: bool,
                      strict: bool) -> None:
    """The reference's first-batch audit (spec/training.md §5.3 step 4): in prompt/completion mode
    with prompt tokens trained, real tokens labelled -100 mean stale/masked data -> refuse."""
    if not (prompt_completion_mode and train_prompt_tokens and strict):
        return
    batch = data.dataset[0]
    masked = int(np.sum((batch["attention_mask"] != 0) & (batch["labels"] == IGNORE)))
    if masked:
        raise ValueError(f"{data.description}: {masked} real tokens of the first batch have label -100 although "
                         "prompt tokens are trained (masked or pre-chunked data with a prompt/completion template); "
                         "use --mask-prompt-tokens or --allow-masked-active-labels")
