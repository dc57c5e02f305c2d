"""A quantized model as a GGUF file (llama.cpp's container), written with ``gguf.GGUFWriter``.

The packed matrices of the GGUF qtypes (``Q4_0``, ``Q8_0``, ``Q2_K``) are GGUF tensors of
that type byte for byte (logical shape ``[rows, padded K]``); every other tensor is F32.
Names are the reference state-dict names (as in ``quantized.safetensors``). Metadata:
``general.architecture = "hierarchos"``, ``hierarchos.config`` (the reference config,
JSON) and ``hierarchos.quantization`` (the directory's manifest, JSON: logical shapes,
padding, tied head). Hierarchos is not a llama.cpp architecture, so the file is an
interchange container (readable by ``gguf.GGUFReader`` and ggml tooling), not something
llama.cpp can run. Requires the optional ``gguf`` package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hierarchos_jax.io.atomic import atomic_path
from hierarchos_jax.quant.formats import GGUF_QTYPES

GGUF_FILE = "model.gguf"
ARCH = "hierarchos"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ValueError("writing a .gguf file needs the 'gguf' package (pip install gguf)") from None
    return gguf


def check_gguf_export(packed_info: dict) -> None:
    """Refuse (one line) packed tensors whose qtype has no GGUF type, or a missing ``gguf``."""
    _gguf()
    other = sorted({info["qtype"] for info in packed_info.values()} - set(GGUF_QTYPES))
    if other:
        raise ValueError(f"qtype {', '.join(other)} has no GGUF equivalent; GGUF export needs "
                         f"{', '.join(GGUF_QTYPES)}")


def write_gguf(path: str | os.PathLike, tensors: dict[str, np.ndarray], manifest: dict, config: dict) -> Path:
    """Write ``tensors`` (from :func:`~hierarchos_jax.quant.model_dir.collect_tensors`) to
    ``path`` atomically (:func:`hierarchos_jax.io.atomic.atomic_path`)."""
    gguf = _gguf()
    packed_info = manifest["tensors"]
    check_gguf_export(packed_info)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        try:
            writer.add_string(f"{ARCH}.config", json.dumps(config, sort_keys=True))
            writer.add_string(f"{ARCH}.quantization", json.dumps(manifest, sort_keys=True))
            for name, value in tensors.items():
                info = packed_info.get(name)
                if info is None:
                    writer.add_tensor(name, np.ascontiguousarray(value, np.float32))
                else:
                    qtype = getattr(gguf.GGMLQuantizationType, info["qtype"])
                    writer.add_tensor(name, np.ascontiguousarray(value, np.uint8), raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return Path(path)
