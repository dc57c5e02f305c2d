"""``hierarchos chunk``: a Kayla dataset -> consolidated chunk directory (and/or JSONL shards).

Two passes over the input as the reference chunker (spec/training.md §11.2): the longest thought
anchor fixes ``MAX_SEQ_LENGTH``, then every sample is chunked. Output formats: ``npy`` (the
reference's ``pt``: ``.npy`` shards + ``manifest.json``, read by ``--train DIR``), ``jsonl``
(``chunked_shard_KKKKK.jsonl`` rows padded to ``MAX_SEQ_LENGTH``, read by ``--pre-chunked-dataset``;
row ``n`` goes to shard ``n mod shards``), or ``both``. Everything is written into a temporary
directory that replaces ``out_dir`` only when complete.
"""

from __future__ import annotations

import contextlib
import json
import os

from hierarchos_jax.data import kayla_chunks as kc
from hierarchos_jax.data.consolidated import ChunkWriter
from hierarchos_jax.data.readers import iter_records
from hierarchos_jax.data.stats import DataStats
from hierarchos_jax.data.tokens import pad_id as tokenizer_pad_id
from hierarchos_jax.data.tokens import require_eos

FORMATS = ("npy", "pt", "jsonl", "both")


def chunk_dataset(dataset, tokenizer, *, out_dir, overlap: int = 1024, reserved: int = kc.RESERVED_CHUNK_SPACE,
                  chunks_per_file: int = 1000, output_format: str = "npy", jsonl_shards: int = 0,
                  mask_prompt: bool = True, progress: bool = True) -> dict:
    """Chunk ``dataset`` into ``out_dir``; returns the summary (``max_seq_length``, rows, ...)."""
    if output_format not in FORMATS:
        raise ValueError(f"--output-format must be one of {', '.join(FORMATS)} (got {output_format!r})")
    if reserved < 1 or chunks_per_file < 1 or overlap < 0:
        raise ValueError("--reserved-chunk-space and --chunks-per-file must be positive, --overlap non-negative")
    write_npy = output_format in ("npy", "pt", "both")
    write_jsonl = output_format in ("jsonl", "both")
    shards = max(1, int(jsonl_shards or min(16, max(1, os.cpu_count() or 1)))) if write_jsonl else 0
    eos, pad = require_eos(tokenizer), tokenizer_pad_id(tokenizer)

    max_seq = kc.max_seq_length(_progress(iter_records(dataset), "analysing", progress), tokenizer,
                                reserved=reserved)
    overlap = kc.effective_overlap(overlap, reserved)
    stats = DataStats()
    meta = {"max_seq_length": max_seq, "pad_id": pad, "eos_id": eos, "vocab_size": len(tokenizer),
            "overlap": overlap, "reserved_chunk_space": reserved, "prompt_masked": bool(mask_prompt), "source": os.fspath(dataset),
            "tokenizer": os.fspath(tokenizer.directory), "made_by": "hierarchos chunk (Kayla anchors)"}
    with ChunkWriter(out_dir, rows_per_shard=chunks_per_file, meta=meta) as writer, contextlib.ExitStack() as files:
        shard_files = [files.enter_context(open(writer.tmp_dir / f"chunked_shard_{k:05d}.jsonl", "w", encoding="utf-8"))
                       for k in range(shards)]
        rows = kc.iter_chunks(_progress(iter_records(dataset), "chunking", progress), tokenizer,
                              max_seq=max_seq, overlap=overlap, reserved=reserved, mask_prompt=mask_prompt,
                              stats=stats)
        n = 0
        for row in rows:
            if write_npy:
                writer.add(row.input_ids, row.labels)
            if shard_files:
                shard_files[n % shards].write(json.dumps(kc.padded_row(row, max_seq, pad)) + "\n")
            n += 1
        files.close()
        if write_jsonl:
            writer.meta["jsonl_shards"] = [f"chunked_shard_{k:05d}.jsonl" for k in range(shards)]
            writer.meta["jsonl_rows"] = n
        if stats.examples == 0:
            raise ValueError(f"{dataset}: no sample could be chunked ({stats.summary()})")
        writer.commit()
    return {"max_seq_length": max_seq, "rows": n, "overlap": overlap, "stats": stats, "out_dir": os.fspath(out_dir)}


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=" samples", leave=False, mininterval=1.0)
