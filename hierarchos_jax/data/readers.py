"""Records from local files: JSON, JSONL, CSV/TSV, Parquet, plain text, or a directory of them.

``iter_records(path)`` yields ``(where, record)`` pairs, ``where`` being ``file:line`` (or
``file:row``) for messages; a line that is not valid JSON yields a :class:`Malformed` instead of
a record. A ``.json`` file holds a list of objects or one object; if it is not valid JSON as a
whole it is read line by line (as the reference). Text files give one ``{"text": line}`` record
per non-blank line. Files are read one record at a time (JSONL, CSV, text) or one Parquet row
group at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".text", ".md")
SUPPORTED = JSONL_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
SKIPPED_NAMES = ("manifest.jsonl", "manifest.json")


@dataclasses.dataclass(frozen=True)
class Malformed:
    reason: str


def data_files(path: str | os.PathLike, suffixes=SUPPORTED) -> list[Path]:
    """``path`` itself, or the supported files under the directory ``path`` (sorted, recursive)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"{path}: unsupported data file type {path.suffix or '(none)'!r} "
                             f"(expected one of {', '.join(suffixes)})")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and p.name not in SKIPPED_NAMES)
        if not files:
            raise ValueError(f"{path}: no data files ({', '.join(suffixes)}) in this directory")
        return files
    raise FileNotFoundError(f"{path}: no such file or directory")


def iter_records(path: str | os.PathLike):
    for file in data_files(path):
        yield from iter_file(file)


def iter_file(file: Path):
    suffix = file.suffix.lower()
    if suffix in JSON_SUFFIXES:
        yield from _json(file)
    elif suffix in JSONL_SUFFIXES:
        yield from _jsonl(file)
    elif suffix in CSV_SUFFIXES:
        yield from _csv(file, "\t" if suffix == ".tsv" else ",")
    elif suffix in PARQUET_SUFFIXES:
        yield from _parquet(file)
    else:
        yield from _text(file)


def _jsonl(file: Path):
    with open(file, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield f"{file.name}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{file.name}:{n}", Malformed(f"invalid JSON ({e.msg} at column {e.colno})")


def _json(file: Path):
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        yield from _jsonl(file)
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(  # noqa: TRY004 - bad data, one line like every data error
            f"{file}: a JSON dataset must be an object, a list of objects, or JSON lines")
    for n, record in enumerate(data, 1):
        yield f"{file.name}[{n - 1}]", record


def _csv(file: Path, delimiter: str):
    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            return
        for row in reader:
            where = f"{file.name}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                yield where, Malformed(f"{len(row)} fields, the header has {len(header)}")
                continue
            yield where, dict(zip(header, row))


def _parquet(file: Path):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid or OSError subclasses
        raise ValueError(f"{file}: not a readable Parquet file ({e})") from None
    n = 0
    for g in range(pf.num_row_groups):
        for record in pf.read_row_group(g).to_pylist():
            yield f"{file.name}[{n}]", record
            n += 1


def _text(file: Path):
    with open(file, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield f"{file.name}:{n}", {"text": line}
