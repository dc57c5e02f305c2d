"""Consolidated chunk directories: pre-tokenized rows in ``.npy`` shards with a ``manifest.json``.

Layout (written by ``hierarchos chunk``; replaces the reference's ``consolidated_chunks_*.pt`` +
``manifest.jsonl``)::

    DIR/manifest.json                   {"format": "hierarchos-chunks", "version": 1, "rows", "tokens",
                                         "max_seq_length", "pad_id", "eos_id", "vocab_size", "fields",
                                         "shards": [{"name", "rows", "tokens"}], ...}
    DIR/<shard>.offsets.npy             int64 [rows + 1]
    DIR/<shard>.input_ids.npy           int32 [tokens]  (rows back to back, unpadded)
    DIR/<shard>.labels.npy              int32 [tokens]
    DIR/<shard>.loss_weights.npy        float32 [tokens] (only when "loss_weights" is in fields)

Rows are stored without padding; the collator pads them with ``pad_id`` (the reference chunker's
stored padding). Shards are memory-mapped when read. The directory is written under a temporary
name next to the destination and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hierarchos_jax.data.examples import ExampleStore
from hierarchos_jax.io.atomic import replace_directory

FORMAT = "hierarchos-chunks"
VERSION = 1
MANIFEST = "manifest.json"


def is_consolidated(path) -> bool:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return False
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def is_reference_pt_dir(path) -> bool:
    """A reference chunk directory: ``.pt`` files, or a ``manifest.jsonl`` that points to them."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any(path.glob("*.pt")):
        return True
    try:
        with open(path / "manifest.jsonl", encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        return str(json.loads(first).get("file_path", "")).endswith(".pt") if first else False
    except (OSError, ValueError, AttributeError):
        return False


class ChunkWriter:
    """Collect rows, write shards of ``rows_per_shard`` rows, commit the directory atomically."""

    def __init__(self, out_dir, *, rows_per_shard: int = 1000, meta: dict | None = None, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        if (self.out_dir.exists() and not (overwrite or is_consolidated(self.out_dir))
                and (self.out_dir.is_file() or any(self.out_dir.iterdir()))):
            raise ValueError(f"{self.out_dir}: exists and is not a chunk directory; choose a new --output-dir")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=self.out_dir.parent))
        self.rows_per_shard = max(int(rows_per_shard), 1)
        self.meta = dict(meta or {})
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._shards: list[dict] = []
        self._weighted = False
        self.rows = 0
        self.tokens = 0

    @property
    def tmp_dir(self) -> Path:
        """Where the directory is being written (other files may be added here before ``commit``)."""
        return self._tmp

    def add(self, input_ids, labels, loss_weights=None) -> None:
        ids = np.asarray(input_ids, np.int32)
        lab = np.asarray(labels, np.int32)
        if ids.shape != lab.shape or ids.ndim != 1 or ids.size == 0:
            raise ValueError("a chunk row needs non-empty input_ids and labels of the same length")
        w = None if loss_weights is None else np.asarray(loss_weights, np.float32)
        self._weighted |= w is not None
        self._rows.append((ids, lab, w))
        self.rows += 1
        self.tokens += ids.size
        if len(self._rows) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"shard_{len(self._shards):05d}"
        lengths = [r[0].size for r in self._rows]
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(self._tmp / f"{name}.offsets.npy", offsets)
        np.save(self._tmp / f"{name}.input_ids.npy", np.concatenate([r[0] for r in self._rows]))
        np.save(self._tmp / f"{name}.labels.npy", np.concatenate([r[1] for r in self._rows]))
        if self._weighted:
            np.save(self._tmp / f"{name}.loss_weights.npy",
                    np.concatenate([r[2] if r[2] is not None else np.ones(r[0].size, np.float32)
                                    for r in self._rows]))
        self._shards.append({"name": name, "rows": len(lengths), "tokens": int(offsets[-1])})
        self._rows = []

    def commit(self) -> Path:
        self._flush()
        if self._weighted:  # earlier shards written before the first weighted row get all-ones weights
            for shard in self._shards:
                path = self._tmp / f"{shard['name']}.loss_weights.npy"
                if not path.exists():
                    np.save(path, np.ones(shard["tokens"], np.float32))
        fields = ["input_ids", "labels"] + (["loss_weights"] if self._weighted else [])
        manifest = {"format": FORMAT, "version": VERSION, "rows": self.rows, "tokens": self.tokens,
                    "fields": fields, "shards": self._shards, **self.meta}
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return replace_directory(self._tmp, self.out_dir)

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


class ShardedStore:
    """Random access over the shards of a consolidated directory (same interface as ExampleStore)."""

    def __init__(self, stores: list[ExampleStore], pad_id: int):
        self.stores = stores
        self.pad_id = int(pad_id)
        self._starts = np.cumsum([0] + [len(s) for s in stores])
        self.lengths = np.concatenate([s.lengths for s in stores]) if stores else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_tokens(self) -> int:
        return int(sum(s.num_tokens for s in self.stores))

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.stores[k][int(i - self._starts[k])]


def read_manifest(path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {MANIFEST} (not a directory made by 'hierarchos chunk')") from None
    except ValueError as e:
        raise ValueError(f"{path / MANIFEST}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path / MANIFEST}: not a hierarchos chunk manifest (format {manifest.get('format')!r})")
    if int(manifest.get("version", 0)) > VERSION:
        raise ValueError(f"{path / MANIFEST}: format version {manifest['version']} is newer than this reader "
                         f"({VERSION})")
    return manifest


def _load_field(path: Path, shard: str, field: str) -> np.ndarray:
    return np.load(path / f"{shard}.{field}.npy", mmap_mode="r")


def open_consolidated(path, *, pad_id: int | None = None) -> tuple[ShardedStore, dict]:
    """The rows of a consolidated directory (memory-mapped) and its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    pad = int(manifest.get("pad_id", 0) if pad_id is None else pad_id)
    stores = []
    for shard in manifest["shards"]:
        name = shard["name"]
        try:
            offsets = np.asarray(_load_field(path, name, "offsets"))
            ids, labels = _load_field(path, name, "input_ids"), _load_field(path, name, "labels")
            weights = (_load_field(path, name, "loss_weights") if "loss_weights" in manifest.get("fields", ())
                       else None)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: shard {name} is missing or unreadable ({e})") from None
        if offsets.shape[0] != shard["rows"] + 1 or int(offsets[-1]) != ids.shape[0] or ids.shape != labels.shape:
            raise ValueError(f"{path}: shard {name} does not match the manifest (truncated or corrupted)")
        stores.append(ExampleStore(ids, labels, offsets, loss_weights=weights, pad_id=pad))
    return ShardedStore(stores, pad), manifest
