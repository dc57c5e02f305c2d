"""Rows that already hold token ids: pre-tokenized JSONL rows (spec/training.md §3.6) and
pre-chunked rows (§4.4, made by the chunker with ``--output-format jsonl``)."""

from __future__ import annotations

import numpy as np

from hierarchos_jax.data.examples import IGNORE, Example
from hierarchos_jax.data.formatting import Rejected

LENGTH_KEYS = ("_length", "length", "valid_length")


def _ints(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or not (arr.dtype.kind in "iu" or (arr.dtype == bool)):
        raise ValueError(f"{name} is not a list of integers")
    return arr.astype(np.int64)


def _fit(arr: np.ndarray | None, n: int, fill, dtype) -> np.ndarray:
    """Cut to ``n`` or pad with ``fill``."""
    out = np.full(n, fill, dtype)
    if arr is not None:
        k = min(n, arr.shape[0])
        out[:k] = arr[:k]
    return out


def _last_active(mask: np.ndarray) -> int:
    nz = np.flatnonzero(mask)
    return int(nz[-1]) + 1 if nz.size else 0


def has_token_ids(record) -> bool:
    return isinstance(record, dict) and "input_ids" in record


def pretokenized_example(record: dict, max_length: int, fill_id: int) -> Example | Rejected | None:
    """A §3.6 row; ``None`` when ``input_ids`` is empty or not integers (the caller formats the
    record as text instead, as the reference does)."""
    try:
        ids = _ints(record["input_ids"], "input_ids")
    except (ValueError, TypeError):
        return None
    if ids.size == 0:
        return None
    try:
        ids = ids[:max_length]
        n = ids.shape[0]
        labels = _fit(_ints(record["labels"], "labels") if record.get("labels") is not None else ids, n, IGNORE,
                      np.int32)
        mask = _fit(_ints(record["attention_mask"], "attention_mask") if record.get("attention_mask") is not None
                    else None, n, 1, np.int32)
        weights = None
        if record.get("loss_weights") is not None:
            weights = _fit(np.asarray(record["loss_weights"], np.float32).reshape(-1), n, 1.0, np.float32)
    except (ValueError, TypeError) as e:
        return Rejected(f"pre-tokenized row: {e}")
    length = None
    for key in LENGTH_KEYS:
        if key in record:  # the first present key decides, even when it is null
            value = record[key]
            length = int(value) if isinstance(value, int) and not isinstance(value, bool) else None
            break
    if length is None:
        length = _last_active(mask) or n
    length = min(max(length, 1), n)
    return _trimmed(ids.astype(np.int32), labels, weights, mask, length, fill_id)


def prechunked_example(record, max_length: int) -> Example | Rejected:
    """A §4.4 row: ``input_ids``, ``labels``, ``attention_mask`` of exactly ``max_length`` tokens."""
    if not isinstance(record, dict):
        return Rejected(f"not a JSON object ({type(record).__name__})")
    missing = [k for k in ("input_ids", "labels", "attention_mask") if k not in record]
    if missing:
        return Rejected(f"pre-chunked row without {', '.join(missing)}")
    try:
        ids = _ints(record["input_ids"], "input_ids")
        labels = _ints(record["labels"], "labels")
        mask = _ints(record["attention_mask"], "attention_mask")
    except (ValueError, TypeError) as e:
        return Rejected(f"pre-chunked row: {e}")
    if ids.shape[0] != max_length:
        return Rejected(f"pre-chunked row of {ids.shape[0]} tokens (--max-length is {max_length})")
    length = _last_active(mask)
    if length == 0:
        return Rejected("pre-chunked row with an all-zero attention mask")
    n = ids.shape[0]
    labels = _fit(labels, n, IGNORE, np.int32)
    mask = _fit(mask, n, 0, np.int32)
    return _trimmed(ids.astype(np.int32), labels, None, mask, length, None)


def _trimmed(ids, labels, weights, mask, length: int, fill_id) -> Example:
    """Keep the effective part; what the collator would copy of the stored padding beyond it is
    kept as ``fill_id`` when it is one uniform padding (id constant, mask 0, label -100, weight 0),
    else the row keeps its stored tail too (it is still padded from its effective length)."""
    tail = slice(length, ids.shape[0])
    uniform = (ids[tail].size == 0 or (np.all(ids[tail] == ids[tail][0]) and not np.any(mask[tail])
                                        and np.all(labels[tail] == IGNORE)
                                        and (weights is None or not np.any(weights[tail]))))
    if uniform:
        fill = int(ids[tail][0]) if ids[tail].size else fill_id
        keep = length
    else:
        fill, keep = fill_id, ids.shape[0]
    return Example(ids[:keep], labels[:keep], None if weights is None else weights[:keep],
                   None if np.all(mask[:keep]) else mask[:keep], fill, length)
