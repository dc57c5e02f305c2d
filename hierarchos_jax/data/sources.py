"""Choose the data source from the options and load it into a random-access store of examples
(spec/training.md §4.1, in this port's terms).

* ``--hf-dataset``: records of the split, formatted (§3).
* ``--pre-pt-dataset``/``--train`` on a consolidated chunk directory (``manifest.json`` made by
  ``hierarchos chunk``): memory-mapped, as stored. A reference ``.pt`` chunk directory is refused
  with one line pointing to ``hierarchos chunk``.
* ``--pre-chunked-dataset``: JSONL rows of exactly ``max_length`` tokens (§4.4), read one line at
  a time; only the effective part of each row is kept.
* ``--train`` otherwise: JSON/JSONL/CSV/Parquet/text records, formatted; JSONL rows that carry
  ``input_ids`` are taken as pre-tokenized (§3.6).

Formatted examples of ``--train`` files and ``--hf-dataset`` go through the token cache
(:mod:`~hierarchos_jax.data.token_cache`) unless it is switched off. Skipped records are counted in :class:`~hierarchos_jax.data.stats.DataStats` (first few reported).
With ``--auto-max-length`` (§3.7) records are formatted with a 9999-token limit and the row length
becomes the longest + 16 rounded up to a multiple of 8 (no record is longer, so no re-formatting
is needed).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hierarchos_jax.data import consolidated as chunks
from hierarchos_jax.data import token_cache
from hierarchos_jax.data.examples import ExampleStore
from hierarchos_jax.data.formatting import Rejected, format_records
from hierarchos_jax.data.options import FormatOptions
from hierarchos_jax.data.pretokenized import (
    has_token_ids,
    prechunked_example,
    pretokenized_example,
)
from hierarchos_jax.data.readers import (
    JSONL_SUFFIXES,
    Malformed,
    data_files,
    iter_file,
    iter_records,
)
from hierarchos_jax.data.stats import DataStats
from hierarchos_jax.data.tokens import pad_id as tokenizer_pad_id

AUTO_SCAN_LENGTH = 9999


@dataclasses.dataclass
class LoadedData:
    store: object               # ExampleStore or consolidated.ShardedStore
    stats: DataStats
    max_length: int
    description: str
    preserve_order: bool = False
    cache_dir: Path | None = None   # the token cache these examples were read from or written to


def auto_max_length(longest: int) -> int:
    """``round_up_to_multiple_of_8(longest + 16)``."""
    return (int(longest) + 23) & ~7


def refuse_reference_pt_dir(path) -> ValueError:
    return ValueError(f"{path}: a reference .pt chunk directory (PyTorch pickles) is not read by this port; "
                      f"re-create it with 'hierarchos chunk --dataset YOUR_KAYLA.jsonl --output-dir DIR' "
                      f"and train with --train DIR")


def load_source(args, tokenizer, *, max_length: int, progress: bool = True) -> LoadedData:
    train = getattr(args, "train", None)
    pad = tokenizer_pad_id(tokenizer)
    if getattr(args, "hf_dataset", None):
        from hierarchos_jax.data.hub import iter_hf_records, pin_revision

        name, split = args.hf_dataset, args.hf_dataset_split or "train"
        where = {"config": args.hf_dataset_config, "split": split}
        if Path(name).exists():
            where.update(root=str(Path(name).resolve()), files=token_cache.files_fingerprint(Path(name)))
            revision = None
        else:
            revision = pin_revision(name, args.hf_dataset_revision)
            where.update(hub=name, sha=revision)
        return _format_cached(lambda: iter_hf_records(name, config=args.hf_dataset_config, split=split,
                                                      revision=revision),
                              where, True, tokenizer, args, max_length, pad, f"Hugging Face dataset {name}", progress)
    if not train or train is True:
        raise ValueError("no training data: give --train PATH or --hf-dataset NAME")
    path = Path(train)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (--train)")
    if getattr(args, "pre_chunked_dataset", False):
        return _prechunked(path, max_length, pad, progress)
    if getattr(args, "pre_pt_dataset", False) or chunks.is_consolidated(path):
        if chunks.is_consolidated(path):
            return _consolidated(path, pad, max_length)
        if chunks.is_reference_pt_dir(path) or path.suffix == ".pt":
            raise refuse_reference_pt_dir(path)
        raise ValueError(f"{path}: --pre-pt-dataset needs a directory made by 'hierarchos chunk' (manifest.json)")
    if path.is_dir() and chunks.is_reference_pt_dir(path):
        raise refuse_reference_pt_dir(path)
    source = {"root": str(path.resolve()), "files": token_cache.files_fingerprint(path)}
    return _format_cached(lambda: iter_records(path), source, False,
                          tokenizer, args, max_length, pad, f"{path}", progress)


def _format_cached(records, source: dict, hf: bool, tokenizer, args, max_length, pad, description,
                   progress) -> LoadedData:
    """:func:`_format_all` through the token cache (§4.6) unless it is switched off."""
    root = token_cache.cache_dir_for(args, hf=hf)
    if root is None:
        return _format_all(records(), tokenizer, args, max_length, pad, description, progress)
    auto = bool(getattr(args, "auto_max_length", False))
    key = token_cache.cache_key(source=source, tokenizer=tokenizer, limit=AUTO_SCAN_LENGTH if auto else max_length,
                                auto_max_length=auto, pad_id=pad, opts=FormatOptions.from_args(args))
    directory = root / (("hf-" if hf else "local-") + key)
    hit = None if token_cache.refresh_requested(args, hf=hf) else token_cache.load(directory)
    if hit is not None:
        store, cached_length, stats, _ = hit
        if progress:
            print(f"data: token cache {directory}", file=sys.stderr)
        return LoadedData(store, stats, cached_length, description, cache_dir=directory)
    loaded = _format_all(records(), tokenizer, args, max_length, pad, description, progress)
    if token_cache.cacheable(loaded.store):
        try:
            token_cache.save(directory, loaded.store, stats=loaded.stats, max_length=loaded.max_length,
                             description=description)
            loaded.cache_dir = directory
        except OSError as e:
            print(f"hierarchos: warning: token cache not written ({e})", file=sys.stderr)
    return loaded


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=" records", leave=False, mininterval=1.0)


FORMAT_BATCH = 512


def _batches(iterable, n: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _format_batch(items, tokenizer, limit: int, opts: FormatOptions, pad: int) -> list:
    """``(where, Example | Rejected)`` in input order; pre-tokenized rows taken as they are."""
    results: list = [None] * len(items)
    todo = []
    for k, (_, record) in enumerate(items):
        if isinstance(record, Malformed):
            results[k] = Rejected(record.reason)
        elif has_token_ids(record):
            results[k] = pretokenized_example(record, limit, pad)
        if results[k] is None:
            todo.append(k)
    for k, ex in zip(todo, format_records([items[k][1] for k in todo], tokenizer, limit, opts), strict=True):
        results[k] = ex
    return [(items[k][0], results[k]) for k in range(len(items))]


def _format_all(records, tokenizer, args, max_length, pad, description, progress) -> LoadedData:
    opts = FormatOptions.from_args(args)
    auto = bool(getattr(args, "auto_max_length", False))
    limit = AUTO_SCAN_LENGTH if auto else int(max_length)
    stats, examples = DataStats(), []
    for items in _batches(_progress(records, "formatting", progress), FORMAT_BATCH):
        for where, ex in _format_batch(items, tokenizer, limit, opts, pad):
            if isinstance(ex, Rejected):
                stats.skip(where, ex.reason)
                continue
            stats.kept()
            examples.append(ex)
    if not examples:
        raise ValueError(f"{description}: no usable records ({stats.summary()})")
    store = ExampleStore.from_examples(examples, pad_id=pad)
    if auto:
        max_length = auto_max_length(int(store.lengths.max()))
    return LoadedData(store, stats, int(max_length), description)


def _prechunked(path: Path, max_length: int, pad: int, progress: bool) -> LoadedData:
    stats, examples = DataStats(), []
    for file in data_files(path, JSONL_SUFFIXES):
        for where, record in _progress(iter_file(file), f"reading {file.name}", progress):
            ex = Rejected(record.reason) if isinstance(record, Malformed) else prechunked_example(record, max_length)
            if isinstance(ex, Rejected):
                stats.skip(where, ex.reason)
                continue
            stats.kept()
            examples.append(ex)
    if not examples:
        raise ValueError(f"{path}: no pre-chunked rows of --max-length {max_length} tokens ({stats.summary()})")
    return LoadedData(ExampleStore.from_examples(examples, pad_id=0), stats, int(max_length),
                      f"pre-chunked {path}")


def _consolidated(path: Path, pad: int, max_length: int) -> LoadedData:
    store, manifest = chunks.open_consolidated(path)
    if len(store) == 0:
        raise ValueError(f"{path}: the chunk directory holds no rows"
                         + (" (only JSONL shards: train on them with --pre-chunked-dataset)"
                            if manifest.get("jsonl_shards") else ""))
    stats = DataStats(records_read=len(store), examples=len(store))
    if int(manifest.get("pad_id", pad)) != pad:
        print(f"hierarchos: warning: {path} was padded with id {manifest.get('pad_id')} but the tokenizer pads "
              f"with {pad}; using the directory's", file=sys.stderr)
    longest = int(store.lengths.max())
    if longest > max_length:
        print(f"hierarchos: warning: {path} holds rows of up to {longest} tokens, longer than --max-length "
              f"{max_length} (rows are used whole, as the reference's chunk loader does)", file=sys.stderr)
    return LoadedData(store, stats, int(max_length), f"chunk directory {path}", preserve_order=True)
