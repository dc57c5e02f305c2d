"""Token caches: formatted examples saved once, memory-mapped on later runs (spec/training.md §4.6).

A cache is a consolidated chunk directory (:mod:`~hierarchos_jax.data.consolidated`) named by a
key: the first 16 hex digits of the SHA-1 of the sorted-keys JSON of everything the examples
depend on — source files (relative path, size, mtime) or the Hub dataset's pinned commit, the
tokenizer files' contents, the row length limit, the pad id and every formatter option. Any
change gives another key (a rebuild). The manifest keeps the load statistics, which are replayed
on a hit. Rows read back are identical to the freshly formatted ones, so batches are the same.

Roots (as the reference): local sources ``--local-token-cache-dir``, else ``--hf-token-cache-dir``;
HF sources ``--hf-token-cache-dir``, else ``--hf-shard-cache-dir``; else (a port choice, to keep
working directories clean) ``$XDG_CACHE_HOME/hierarchos/token_cache`` or
``~/.cache/hierarchos/token_cache`` instead of ``./.hierarchos_token_cache``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from hierarchos_jax.data import consolidated as chunks
from hierarchos_jax.data.options import FormatOptions
from hierarchos_jax.data.stats import DataStats

KEY_FORMAT = "hierarchos-token-cache"
KEY_VERSION = 1
ROWS_PER_SHARD = 65536


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hierarchos" / "token_cache"


def cache_dir_for(args, *, hf: bool) -> Path | None:
    """The cache directory root for this run, or ``None`` when the cache is switched off."""
    if getattr(args, "hf_token_cache" if hf else "local_token_cache", None) is False:
        return None
    order = ("hf_token_cache_dir", "hf_shard_cache_dir") if hf else ("local_token_cache_dir", "hf_token_cache_dir")
    for name in order:
        if getattr(args, name, None):
            return Path(getattr(args, name))
    return default_root()


def refresh_requested(args, *, hf: bool) -> bool:
    return bool(getattr(args, "refresh_hf_token_cache" if hf else "refresh_local_token_cache", False))


def files_fingerprint(path: Path) -> list:
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for f in files:
        st = f.stat()
        out.append([os.fspath(f.relative_to(path.parent if path.is_file() else path)), st.st_size, st.st_mtime_ns])
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha1()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        p = Path(tokenizer.directory) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def cache_key(*, source: dict, tokenizer, limit: int, auto_max_length: bool, pad_id: int,
              opts: FormatOptions) -> str:
    payload = {"format": KEY_FORMAT, "version": KEY_VERSION, "source": source,
               "tokenizer": tokenizer_fingerprint(tokenizer), "limit": int(limit), "auto": bool(auto_max_length),
               "pad_id": int(pad_id), "options": dataclasses.asdict(opts)}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cacheable(store) -> bool:
    """Only plain formatted rows (no stored masks/padding/effective lengths) go into a cache."""
    return (getattr(store, "attention_mask", None) is None and getattr(store, "fill_ids", None) is None
            and bool((store.lengths == store.stored_lengths).all()))


def save(directory: Path, store, *, stats: DataStats, max_length: int, description: str) -> None:
    meta = {"pad_id": store.pad_id, "max_length": int(max_length), "stats": stats.as_dict(),
            "description": description, "made_by": "hierarchos token cache"}
    with chunks.ChunkWriter(directory, rows_per_shard=ROWS_PER_SHARD, meta=meta, overwrite=True) as writer:
        for i in range(len(store)):
            ex = store[i]
            writer.add(ex.input_ids, ex.labels, ex.loss_weights)
        writer.commit()


def load(directory: Path):
    """``(store, max_length, stats, description)`` of a complete cache, or ``None``."""
    if not chunks.is_consolidated(directory):
        return None
    try:
        store, manifest = chunks.open_consolidated(directory)
    except (OSError, ValueError):
        return None  # damaged: rebuilt by the caller
    s = manifest.get("stats", {})
    stats = DataStats(records_read=int(s.get("records_read", len(store))), examples=len(store),
                      skipped=int(s.get("skipped", 0)),
                      first_skipped=[tuple(x) for x in s.get("first_skipped", [])])
    stats.reasons.update(s.get("reasons", {}))
    return store, int(manifest["max_length"]), stats, str(manifest.get("description", directory))
