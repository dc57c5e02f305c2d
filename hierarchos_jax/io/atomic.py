"""Atomic writes: nothing half-written is ever visible under the final name.

Files are written to a temporary name in the destination folder, flushed to disk and then
renamed over the destination (``os.replace`` is atomic within one file system). Directories
are built in a temporary sibling folder and swapped in at the end; an existing directory is
moved aside first and removed only after the new one is in place. On any error (including
KeyboardInterrupt) the temporary file or folder is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, the file
    written there replaces ``path`` (fsynced first). Use it for writers that want a file name
    (``np.save``, ``safetensors.save_file``, ``matplotlib.savefig``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2, **dumps_kwargs) -> Path:
    """``json.dumps(data, indent=2)`` plus a final newline, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block ends without an error it
    becomes ``out`` (an existing ``out`` is replaced as a whole)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out`` as a whole."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(out, backup)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(backup, out)  # put the old one back
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)
    _fsync_dir(out.parent)
    return out
