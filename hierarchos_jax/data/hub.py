"""Records of a Hugging Face dataset (``--hf-dataset``): a local dataset or a Hub name.

A local path is read with ``datasets.load_from_disk`` (a directory written by ``save_to_disk``)
or ``datasets.load_dataset`` (a dataset script/data directory or file). A Hub name is first
pinned to its commit SHA with one short metadata request (``--hf-dataset-revision`` may name a
branch/tag/commit, spec/training.md §4.1); offline (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``)
or with the Hub unreachable this is one error line, never a hang.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_TIMEOUT_S = 10.0
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet",
                  ".txt": "text"}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _is_commit(revision: str | None) -> bool:
    return bool(revision) and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower())


def pin_revision(name: str, revision: str | None) -> str:
    """The commit SHA of the Hub dataset ``name`` at ``revision`` (one request, short timeout)."""
    if hub_offline():
        raise ValueError(f"--hf-dataset {name!r}: not a local path, and the Hugging Face Hub is offline "
                         "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); pass a local dataset path or file")
    from huggingface_hub import HfApi

    try:
        info = HfApi().dataset_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - network errors, 404s, auth errors: all one line
        raise ValueError(f"--hf-dataset {name!r}: cannot reach it on the Hugging Face Hub "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    return info.sha or (revision or "main")


def load_hf_dataset(name: str, *, config: str | None = None, split: str = "train", revision: str | None = None):
    """The dataset split (a ``datasets.Dataset``)."""
    import datasets

    path = Path(name)
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"--hf-dataset {name}: no split {split!r} (has {', '.join(ds)})")
                ds = ds[split]
            return ds
        if path.is_file():  # one data file: the matching packaged builder
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"--hf-dataset {name}: unsupported data file type {path.suffix!r} "
                                 f"(expected one of {', '.join(sorted(_FILE_BUILDERS))})")
            return datasets.load_dataset(builder, data_files=str(path), split=split)
        if path.exists():
            return datasets.load_dataset(str(path), config, split=split)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; report one line
        raise ValueError(f"--hf-dataset {name}: cannot load it ({type(e).__name__}: {_first_line(e)})") from None
    sha = revision if _is_commit(revision) else pin_revision(name, revision)
    try:
        return datasets.load_dataset(name, config, split=split, revision=sha)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; report one line
        raise ValueError(f"--hf-dataset {name!r}: cannot load it ({type(e).__name__}: {_first_line(e)})") from None


def iter_hf_records(name: str, **kwargs):
    """``(where, record)`` pairs of the split, as :func:`~hierarchos_jax.data.readers.iter_records`."""
    ds = load_hf_dataset(name, **kwargs)
    for i, record in enumerate(ds):
        yield f"{name}[{i}]", record
