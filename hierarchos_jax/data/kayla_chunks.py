"""The Kayla chunker with thought-process anchors (reference ``dataset_chunk_create.py``,
spec/training.md §11.2): long samples become overlapping fixed-budget chunks, each led by the
sample's thought process.

Per sample: ``anchor = enc("### Thought Process:\\n") + enc(thought) + enc("\\n\\n")`` (the thought
cut to the anchor budget); the stream ``S = enc("### Instruction:\\n" + inst + "\\n\\n") +
[enc("### Feelings:\\n" + feelings + "\\n\\n")] + enc("### Response:\\n" + output)``; chunks of
``a = max_seq - |anchor| - 1`` stream tokens starting every ``a - overlap`` tokens. Row = anchor +
chunk + EOS; labels are -100 on the anchor, on the prompt part of the stream (the spec's rule; the
reference script's own mask is empty, ``mask_prompt=False``), on the first ``overlap`` tokens of
every chunk after the first, and on EOS. Keys are read as the reference
does: ``Instruction`` (capital I), ``output``, ``thought-process``, ``feelings``; a missing or
non-string value is empty. Pieces are encoded without special tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hierarchos_jax.data.examples import IGNORE
from hierarchos_jax.data.readers import Malformed
from hierarchos_jax.data.tokens import encode, require_eos

ANCHOR_SAFETY_MARGIN = 16
RESERVED_CHUNK_SPACE = 2048
THOUGHT_OPEN, THOUGHT_CLOSE = "### Thought Process:\n", "\n\n"


@dataclasses.dataclass(frozen=True)
class ChunkRow:
    input_ids: np.ndarray   # int32, anchor + content + EOS (unpadded)
    labels: np.ndarray      # int32, same length

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def _text(record: dict, key: str) -> str:
    value = record.get(key, "")
    return value if isinstance(value, str) else ""


def max_seq_length(records, tokenizer, *, reserved: int = RESERVED_CHUNK_SPACE) -> int:
    """Pass 1: ``longest anchor + 16 + reserved + 1`` (the reference's ``FINAL MAX_SEQ_LENGTH``)."""
    wrap = len(encode(tokenizer, THOUGHT_OPEN, special=False)) + len(encode(tokenizer, THOUGHT_CLOSE, special=False))
    longest = 0
    for _, record in records:
        if isinstance(record, dict):
            longest = max(longest, wrap + len(encode(tokenizer, _text(record, "thought-process"), special=False)))
    if longest == 0:
        longest = wrap + 5
    return longest + ANCHOR_SAFETY_MARGIN + reserved + 1


def effective_overlap(overlap: int, reserved: int = RESERVED_CHUNK_SPACE) -> int:
    """An overlap of at least the reserved space is reduced to half of it (1024 by default)."""
    return max(1, reserved // 2) if overlap >= reserved else int(overlap)


def chunk_record(record: dict, tokenizer, *, max_seq: int, overlap: int, reserved: int = RESERVED_CHUNK_SPACE,
                 mask_prompt: bool = True):
    """The chunk rows of one sample; ``str`` (the reason) when the sample cannot be chunked.

    ``mask_prompt=False`` trains the prompt part as the reference v0.21 script really does: its
    prompt-mask bounds are computed so that the mask is always empty (spec §11.2 describes the
    intended mask, the default here)."""
    eos = require_eos(tokenizer)
    anchor_budget = max_seq - reserved - 1
    open_ids = encode(tokenizer, THOUGHT_OPEN, special=False)
    close_ids = encode(tokenizer, THOUGHT_CLOSE, special=False)
    thought = encode(tokenizer, _text(record, "thought-process"), special=False)
    if len(open_ids) + len(thought) + len(close_ids) > anchor_budget:
        room = anchor_budget - len(open_ids) - len(close_ids)
        if room <= 0:
            return "no room for the thought-process anchor"
        thought = thought[:room]
    anchor = open_ids + thought + close_ids
    inst = encode(tokenizer, "### Instruction:\n" + _text(record, "Instruction") + "\n\n", special=False)
    feelings_text = _text(record, "feelings")
    feelings = encode(tokenizer, "### Feelings:\n" + feelings_text + "\n\n", special=False) if feelings_text else []
    stream = inst + feelings + encode(tokenizer, "### Response:\n" + _text(record, "output"), special=False)
    prompt_len = len(inst) + len(feelings)
    avail = max_seq - len(anchor) - 1
    if avail <= overlap or avail <= 0:
        return f"chunk room {avail} is not more than the overlap {overlap}"
    rows = []
    start, k = 0, 0
    while start < len(stream):
        content = stream[start:start + avail]
        ids = anchor + content + [eos]
        labels = [IGNORE] * len(anchor) + list(content) + [IGNORE]
        A = len(anchor)
        p_end = min(len(content), prompt_len - start)
        if mask_prompt and p_end > 0:
            labels[A:A + p_end] = [IGNORE] * p_end
        if k > 0:
            o_end = min(overlap, len(content))
            labels[A:A + o_end] = [IGNORE] * o_end
        rows.append(ChunkRow(np.asarray(ids, np.int32), np.asarray(labels, np.int32)))
        start += max(1, avail - overlap)
        k += 1
    return rows


def iter_chunks(records, tokenizer, *, max_seq: int, overlap: int, reserved: int = RESERVED_CHUNK_SPACE,
                mask_prompt: bool = True, stats=None):
    """Chunk rows of every record; malformed or unchunkable records are counted in ``stats``."""
    for where, record in records:
        if isinstance(record, Malformed):
            result = record.reason
        elif not isinstance(record, dict):
            result = f"not a JSON object ({type(record).__name__})"
        else:
            result = chunk_record(record, tokenizer, max_seq=max_seq, overlap=overlap, reserved=reserved,
                                  mask_prompt=mask_prompt)
        if isinstance(result, str):
            if stats is not None:
                stats.skip(where, result)
            continue
        if stats is not None:
            stats.kept()
        yield from result


def padded_row(row: ChunkRow, max_seq: int, pad_id: int) -> dict:
    """The reference's stored row: padded to ``max_seq`` with the pad id (mask 0, label -100)."""
    n = row.length
    pad = max_seq - n
    return {"input_ids": row.input_ids.tolist() + [pad_id] * pad, "labels": row.labels.tolist() + [IGNORE] * pad,
            "attention_mask": [1] * n + [0] * pad, "length": n, "valid_length": n}
