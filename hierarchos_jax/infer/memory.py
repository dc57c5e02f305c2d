"""The chat's learned LTM working memory: one owner, slot metadata, queries, files.

A :class:`MemoryBank` holds the batch-1 :class:`~hierarchos_jax.model.ltm.WorkingMemory`
the chat reads every turn and writes on feedback (spec inference.md §10), plus, per slot,
the wall-clock time of its last write (``written_at``, Unix seconds, 0 = never) and the
number of writes. The model-visible ``timestamps`` stay 0.0, as the reference writes them
(the sinusoidal time code added to every retrieved value is then the one the model was
trained with); the *queryable* time is ``written_at`` (spec §13 notes the reference's
timestamps are never wall-clock, so its ``time=`` filter cannot work — ours filters on
``written_at``). Sources are the model's own ``sources`` (0 unknown, 1 user interaction,
2 training data / passive response, 3 correction).

Filters (``/filter``) act on retrieval only. The model's retrieval takes a source filter
and a model-timestamp floor; a wall-clock filter is expressed through the source filter:
:meth:`MemoryBank.retrieval_view` returns a copy whose ``sources`` mark eligible slots
with :data:`ELIGIBLE` (others -1) and the filter value to pass is ``ELIGIBLE``. Values,
model timestamps (hence the time code) and the slot order are untouched, so an unfiltered
view retrieves exactly what the memory itself does.

Files: :meth:`MemoryBank.save` writes one ``safetensors`` file (``fast``, ``timestamps``,
``sources``, ``written_at``, ``writes``; metadata: format, slot shape, a fingerprint of the
model's LTM keys) atomically, and a JSON summary beside it (``PATH.json``, atomically too).
The file holds the learned memory itself — not the reference's per-session deltas, which
lose earlier sessions and turn fast steps into slow offsets (spec §11, §18.7) — so loading
it restores exactly what was learned.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from hierarchos_jax.io.atomic import write_bytes_atomic
from hierarchos_jax.model.ltm import WorkingMemory

SOURCE_NAMES = {0: "unknown", 1: "user", 2: "training", 3: "correction"}
SOURCE_IDS = {"unknown": 0, "user": 1, "user_interaction": 1, "training": 2, "training_data": 2, "correction": 3}
ELIGIBLE = 1 << 20  # source id of eligible slots in a filtered retrieval view
FORMAT = "hierarchos-jax-ltm-memory/1"


class MemoryFileError(ValueError):
    """A memory file is missing, unreadable or made for another model."""


def parse_source(text: str) -> int:
    """``"3"`` or ``"correction"`` -> 3; ``ValueError`` otherwise."""
    t = text.strip().lower()
    if t in SOURCE_IDS:
        return SOURCE_IDS[t]
    value = int(t)
    if value not in SOURCE_NAMES:
        raise ValueError(f"unknown source {text!r} (0-3 or {', '.join(sorted(set(SOURCE_NAMES.values())))})")
    return value


@dataclasses.dataclass(frozen=True)
class MemoryFilter:
    """Which slots retrieval may use: written at or after ``since`` (Unix seconds) and,
    if set, last written with ``source``. ``MemoryFilter()`` = no filter."""

    since: float | None = None
    source: int | None = None

    @property
    def active(self) -> bool:
        return self.since is not None or self.source is not None

    def describe(self) -> str:
        if not self.active:
            return "none"
        parts = []
        if self.since is not None:
            parts.append(f"written since {_iso(self.since)}")
        if self.source is not None:
            parts.append(f"source {SOURCE_NAMES[self.source]} ({self.source})")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class SlotRecord:
    """One slot as a query returns it."""

    slot: int
    source: int
    written_at: float
    writes: int
    fast_norm: float

    @property
    def source_name(self) -> str:
        return SOURCE_NAMES.get(self.source, str(self.source))

    def describe(self) -> str:
        return (f"slot {self.slot:5d}  source {self.source_name:<10s}  written {_iso(self.written_at)}  "
                f"writes {self.writes:3d}  |fast| {self.fast_norm:.3e}")


def _iso(t: float) -> str:
    if not t:
        return "never"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def keys_fingerprint(keys) -> str:
    """A short hash of the model's LTM keys: a memory file belongs to the model it learned on."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(keys, np.float32)).tobytes()).hexdigest()[:16]


class MemoryBank:
    """The working memory of a chat session and its per-slot metadata (host copies).

    ``memory`` is a batch-1 :class:`WorkingMemory` (``[1, S, D]`` ...). All updates go
    through :meth:`commit`, which also stamps the touched slots.
    """

    def __init__(self, slots: int, val_dim: int, *, fingerprint: str = ""):
        self.slots, self.val_dim = int(slots), int(val_dim)
        self.fingerprint = fingerprint
        self.memory = WorkingMemory.zeros(1, self.slots, self.val_dim)
        self.written_at = np.zeros((self.slots,), np.float64)
        self.writes = np.zeros((self.slots,), np.int64)
        self.changed = False  # since the last save/load

    @classmethod
    def for_model(cls, model) -> "MemoryBank":
        cfg = model.config
        return cls(cfg.ltm_slots, cfg.ltm_val_dim, fingerprint=keys_fingerprint(model.ltm.keys[...]))

    # ------------------------------------------------------------------------ updates

    def commit(self, memory: WorkingMemory, touched, *, now: float | None = None) -> int:
        """Adopt ``memory`` (the result of an update) and stamp the ``touched [S]`` slots;
        returns how many slots were touched."""
        touched = np.asarray(touched, bool).reshape(self.slots)
        self.memory = WorkingMemory(*(np.asarray(a) for a in memory))
        stamp = time.time() if now is None else float(now)
        self.written_at = np.where(touched, stamp, self.written_at)
        self.writes = self.writes + touched
        self.changed = True
        return int(touched.sum())

    def zero_momentum(self) -> None:
        """End of a generated turn: momentum restarts at zero (spec §10.8)."""
        self.memory = self.memory._replace(mom=np.zeros_like(np.asarray(self.memory.mom)))

    def clear(self) -> None:
        """``/reset_ltm``: fast values, momentum, timestamps, sources and metadata to zero."""
        self.memory = WorkingMemory.zeros(1, self.slots, self.val_dim)
        self.written_at = np.zeros_like(self.written_at)
        self.writes = np.zeros_like(self.writes)
        self.changed = True

    # ------------------------------------------------------------------------ reading

    @property
    def sources(self) -> np.ndarray:
        return np.asarray(self.memory.sources)[0]

    @property
    def fast(self) -> np.ndarray:
        return np.asarray(self.memory.fast)[0]

    def fast_norm(self) -> float:
        return float(np.linalg.norm(self.fast))

    def eligible(self, flt: MemoryFilter) -> np.ndarray:
        ok = np.ones((self.slots,), bool)
        if flt.since is not None:
            ok &= (self.written_at > 0) & (self.written_at >= flt.since)
        if flt.source is not None:
            ok &= self.sources == flt.source
        return ok

    def retrieval_view(self, flt: MemoryFilter) -> tuple[WorkingMemory, int]:
        """``(memory, source_filter)`` for the model's retrieval under ``flt`` (also without
        a filter: every slot marked eligible, so filtered and unfiltered turns run one
        compiled program)."""
        marks = np.where(self.eligible(flt), ELIGIBLE, -1).astype(np.int32)[None]
        return self.memory._replace(sources=marks), ELIGIBLE

    def query(self, *, source: int | None = None, since: float | None = None, until: float | None = None,
              written_only: bool = True, limit: int | None = None) -> list[SlotRecord]:
        """Slots matching the filters, most recently written first."""
        ok = self.writes > 0 if written_only else np.ones((self.slots,), bool)
        if source is not None:
            ok &= self.sources == source
        if since is not None:
            ok &= self.written_at >= since
        if until is not None:
            ok &= self.written_at <= until
        idx = np.flatnonzero(ok)
        idx = idx[np.argsort(-self.written_at[idx], kind="stable")]
        if limit is not None:
            idx = idx[:max(0, limit)]
        norms = np.linalg.norm(self.fast, axis=-1)
        src = self.sources
        return [SlotRecord(int(i), int(src[i]), float(self.written_at[i]), int(self.writes[i]), float(norms[i]))
                for i in idx]

    def summary(self) -> dict:
        written = self.writes > 0
        counts = {SOURCE_NAMES[s]: int(np.sum(written & (self.sources == s))) for s in SOURCE_NAMES}
        return {"slots": self.slots, "written_slots": int(written.sum()), "by_source": counts,
                "fast_norm": self.fast_norm(),
                "last_write": float(self.written_at.max()) if written.any() else 0.0}

    # -------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the memory file (and ``PATH.json``), atomically."""
        from safetensors.numpy import save

        path = Path(path)
        m = self.memory
        tensors = {
            "fast": np.ascontiguousarray(np.asarray(m.fast, np.float32)[0]),
            "timestamps": np.ascontiguousarray(np.asarray(m.timestamps, np.float32)[0]),
            "sources": np.ascontiguousarray(np.asarray(m.sources, np.int32)[0]),
            "written_at": np.ascontiguousarray(self.written_at.astype(np.float64)),
            "writes": np.ascontiguousarray(self.writes.astype(np.int64)),
        }
        meta = {"format": FORMAT, "slots": str(self.slots), "val_dim": str(self.val_dim),
                "keys_fingerprint": self.fingerprint, "saved_at": repr(time.time())}
        write_bytes_atomic(path, save(tensors, metadata=meta))
        info = {**meta, **self.summary(), "val_dim": self.val_dim, "saved_at": float(meta["saved_at"])}
        write_bytes_atomic(path.with_name(path.name + ".json"), (json.dumps(info, indent=2) + "\n").encode())
        self.changed = False
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Replace the memory by a file's (momentum restarts at zero)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MemoryFileError(f"{path}: no such memory file")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise MemoryFileError(f"{path}: not a readable memory file ({e})") from None
        if meta.get("format") != FORMAT:
            raise MemoryFileError(f"{path}: not a hierarchos-jax memory file (format {meta.get('format')!r})")
        need = {"fast": (self.slots, self.val_dim), "timestamps": (self.slots,), "sources": (self.slots,),
                "written_at": (self.slots,), "writes": (self.slots,)}
        for name, shape in need.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = None if name not in tensors else tuple(tensors[name].shape)
                raise MemoryFileError(f"{path}: {name} has shape {got}, this model needs {shape}")
        if self.fingerprint and meta.get("keys_fingerprint") not in ("", None, self.fingerprint):
            raise MemoryFileError(f"{path}: learned on another model (LTM keys differ)")
        fast = tensors["fast"].astype(np.float32)
        if not np.all(np.isfinite(fast)):
            raise MemoryFileError(f"{path}: non-finite values in the memory")
        self.memory = WorkingMemory(fast[None], np.zeros_like(fast)[None],
                                    tensors["timestamps"].astype(np.float32)[None],
                                    tensors["sources"].astype(np.int32)[None])
        self.written_at = tensors["written_at"].astype(np.float64)
        self.writes = tensors["writes"].astype(np.int64)
        self.changed = False


def fold_into_model(model, bank: MemoryBank):
    """A copy of ``model`` whose slow LTM values include the learned fast values
    (``ltm.vals + fast``, the reference's exit-time consolidation, spec §12.1)."""
    from flax import nnx

    fast = bank.fast.astype(np.float32)
    if not np.all(np.isfinite(fast)):
        raise ValueError("the learned memory has non-finite values; not folded")
    new = nnx.clone(model)
    new.ltm.vals[...] = np.asarray(model.ltm.vals[...], np.float32) + fast
    return new
