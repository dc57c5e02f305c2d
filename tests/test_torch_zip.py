"""Tests for hierarchos_jax.io.torch_zip (torch.save zip checkpoints without torch).

Tests that compare against real torch use ``pytest.importorskip("torch")``;
the library module itself never imports torch.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import random
import struct
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from hierarchos_jax.io.torch_zip import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    load_torch_file,
    read_state_dict,
    save_torch_file,
)

REFERENCE_MODEL = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference" / "tiny" / "model"
)

# torch dtype name -> numpy dtype, for every dtype the module supports.
DTYPES = {
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype(np.uint8),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def random_bits(dtype: np.dtype, shape, rng: np.random.Generator) -> np.ndarray:
    """An array of ``dtype`` with arbitrary bit patterns (NaN payloads included)."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    raw = rng.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def torch_tensor(torch, array: np.ndarray):
    """A torch tensor with exactly the bits of ``array``."""
    dtype = getattr(torch, next(name for name, d in DTYPES.items() if d == array.dtype))
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy()
    return torch.from_numpy(flat).view(dtype).reshape(array.shape)


def torch_bits(tensor) -> tuple[str, tuple[int, ...], bytes]:
    """(dtype name, shape, raw bytes) of a torch tensor, for bit-exact comparison."""
    import torch

    flat = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), data


def numpy_bits(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    name = next(name for name, d in DTYPES.items() if d == array.dtype)
    return name, array.shape, np.ascontiguousarray(array).tobytes()


def assert_matches_torch(loaded, reference) -> None:
    """Recursively compare a loaded object with what torch.load returned."""
    import torch

    if isinstance(reference, torch.Tensor):
        assert isinstance(loaded, np.ndarray), type(loaded)
        assert numpy_bits(loaded) == torch_bits(reference)
    elif isinstance(reference, dict):
        assert isinstance(loaded, dict)
        assert type(loaded) is type(reference) or not isinstance(reference, collections.OrderedDict)
        assert list(loaded) == list(reference)
        for key in reference:
            assert_matches_torch(loaded[key], reference[key])
    elif isinstance(reference, (list, tuple)):
        assert type(loaded) is type(reference) and len(loaded) == len(reference)
        for a, b in zip(loaded, reference):
            assert_matches_torch(a, b)
    else:
        assert type(loaded) is type(reference) and loaded == reference


def assert_bit_equal(a, b) -> None:
    """Recursively compare two plain-data trees, arrays bit-exactly."""
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray)
        assert numpy_bits(a) == numpy_bits(b)
    elif isinstance(b, dict):
        assert type(a) is type(b) and list(a) == list(b)
        for key in b:
            assert_bit_equal(a[key], b[key])
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_bit_equal(x, y)
    else:
        assert type(a) is type(b) and a == b


def write_zip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def craft_checkpoint(path: Path, obj, storages: dict[str, bytes] | None = None) -> None:
    """Write a torch-style zip whose data.pkl is ``pickle.dumps(obj)``.

    Instances of ``StorageRef`` inside ``obj`` become persistent ids, so
    tests can build tensor records (valid or not) by hand.
    """

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            return value.pid if isinstance(value, StorageRef) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    entries = {"archive/data.pkl": buffer.getvalue(), "archive/byteorder": b"little"}
    for key, data in (storages or {}).items():
        entries[f"archive/data/{key}"] = data
    write_zip(path, entries)


class StorageRef:
    """Becomes the persistent id ``pid`` in ``craft_checkpoint``."""

    def __init__(self, *pid):
        self.pid = pid


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where an entry's bytes start: after its local header, name and extra field."""
    start = info.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[start + 26 : start + 30])
    return start + 30 + name_length + extra_length


def dir_listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------
# loading files written by torch
# --------------------------------------------------------------------------


def test_load_matches_torch_for_every_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    tensors = {
        name: torch_tensor(torch, random_bits(dtype, (3, 5), rng)) for name, dtype in DTYPES.items()
    }
    path = tmp_path / "dtypes.pt"
    torch.save(tensors, path)

    loaded = load_torch_file(path)
    assert_matches_torch(loaded, torch.load(path, weights_only=True))
    for name, dtype in DTYPES.items():
        assert loaded[name].dtype == dtype


def test_load_views_scalars_and_ties(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    emb = torch.randn(7, 4)
    checkpoint = {
        "base": base,
        "transposed": base.t(),
        "strided": base[1::2, 3:9:3],
        "row": base[4],
        "element": base[2, 7],  # 0-d view with a storage offset
        "broadcast": torch.ones(3).expand(4, 3),  # stride 0
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "tok_emb.weight": emb,
        "lm_head.weight": emb,  # tied: the very same tensor
        "parameter": torch.nn.Parameter(torch.randn(2, 2)),
    }
    path = tmp_path / "views.pt"
    torch.save(checkpoint, path)

    loaded = load_torch_file(path)
    assert_matches_torch(loaded, torch.load(path, weights_only=True))
    assert loaded["element"].shape == () and loaded["element"] == 27
    assert loaded["scalar"].shape == () and loaded["scalar"].dtype == np.float64
    assert loaded["tok_emb.weight"] is loaded["lm_head.weight"]
    # Different views of one storage come back as independent arrays.
    views = ["base", "transposed", "strided", "row", "element"]
    for i, a in enumerate(views):
        assert loaded[a].flags.c_contiguous
        for b in views[i + 1 :]:
            assert not np.shares_memory(loaded[a], loaded[b])


def test_load_nested_containers_and_config(tmp_path):
    torch = pytest.importorskip("torch")
    checkpoint = collections.OrderedDict(
        model_state_dict=collections.OrderedDict(w=torch.ones(2, 3), b=torch.zeros(3)),
        config={
            "d_model": 64,
            "lr": 3e-4,
            "name": "tiny ünïcode",
            "flags": [True, False, None],
            "shape": (2, 3),
            "big": 2**70,
            "negative": -(2**40),
            "blob": b"\x00\xffraw",
            "empty": {},
            "ids": {1, 2},
            "z": 1 + 2j,
        },
        completed_epoch=3,
        training_complete=True,
    )
    path = tmp_path / "nested.pt"
    torch.save(checkpoint, path)

    loaded = load_torch_file(path)
    assert type(loaded) is collections.OrderedDict
    assert type(loaded["model_state_dict"]) is collections.OrderedDict
    reference = torch.load(path, weights_only=True)
    assert_matches_torch(loaded["model_state_dict"], reference["model_state_dict"])
    assert loaded["config"] == reference["config"]
    assert loaded["completed_epoch"] == 3 and loaded["training_complete"] is True


def test_load_training_checkpoint_extras(tmp_path, monkeypatch):
    """What Hierarchos training checkpoints hold besides tensors loads as plain data."""
    torch = pytest.importorskip("torch")

    class AttrDict(dict):  # the reference's config class, pickled by reference
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__ = self

    AttrDict.__module__ = "__main__"
    AttrDict.__qualname__ = "AttrDict"
    monkeypatch.setattr(sys.modules["__main__"], "AttrDict", AttrDict, raising=False)

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    np.random.seed(1)
    checkpoint = {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "scaler_state_dict": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "config": AttrDict(d_model=8, amp_dtype="bfloat16"),
        "args": argparse.Namespace(epochs=2, out_dir="runs/x"),
        "rng_state": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.random.get_rng_state(),
        },
        "numpy_scalar": np.float32(0.25),
        "dtype": torch.bfloat16,
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
    }
    path = tmp_path / "training.pt"
    torch.save(checkpoint, path)

    loaded = load_torch_file(path)
    assert_matches_torch(loaded["model_state_dict"], checkpoint["model_state_dict"])
    assert_matches_torch(loaded["optimizer_state_dict"], optimizer.state_dict())
    assert loaded["scheduler_state_dict"] == scheduler.state_dict()
    assert loaded["config"] == {"d_model": 8, "amp_dtype": "bfloat16"}
    assert type(loaded["config"]) is dict
    assert loaded["args"] == {"epochs": 2, "out_dir": "runs/x"} and type(loaded["args"]) is dict
    assert loaded["rng_state"]["python"] == checkpoint["rng_state"]["python"]
    numpy_state = loaded["rng_state"]["numpy"]
    assert numpy_state[0] == "MT19937"
    np.testing.assert_array_equal(numpy_state[1], checkpoint["rng_state"]["numpy"][1])
    assert numpy_bits(loaded["rng_state"]["torch"]) == torch_bits(torch.random.get_rng_state())
    assert loaded["numpy_scalar"] == np.float32(0.25)
    assert loaded["dtype"] == np.dtype(ml_dtypes.bfloat16)
    assert loaded["size"] == (2, 3)
    assert loaded["device"] == "cpu"


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_load_unusual_tensor_encodings(tmp_path):
    """Conjugate/negative views, tensors with attributes and bare storages."""
    torch = pytest.importorskip("torch")
    complex_values = torch.randn(4, dtype=torch.complex64)
    tagged = torch.arange(3.0)
    tagged.note = "python attribute"  # saved through _rebuild_from_type_v2
    checkpoint = {
        "conj": complex_values.conj(),
        "neg": torch._neg_view(torch.randn(3)),
        "tagged": tagged,
        "storage": torch.arange(4, dtype=torch.int16).untyped_storage(),
    }
    path = tmp_path / "unusual.pt"
    torch.save(checkpoint, path)

    loaded = load_torch_file(path)
    reference = torch.load(path, weights_only=False)
    for key in ("conj", "neg", "tagged"):
        assert numpy_bits(loaded[key]) == torch_bits(reference[key]), key
    assert loaded["storage"].dtype == np.uint8
    assert loaded["storage"].tobytes() == bytes(reference["storage"].tolist())


def test_load_big_endian_file(tmp_path):
    """A file recorded as big-endian (as torch writes on such hosts) loads correctly."""
    torch = pytest.importorskip("torch")
    cases = {  # tensor, width of each byte-swapped scalar
        "float32": (torch.randn(3, 2), 4),
        "complex128": (torch.randn(2, dtype=torch.complex128), 8),
        "bfloat16": (torch.randn(4).to(torch.bfloat16), 2),
        "int64": (torch.arange(5, dtype=torch.int64), 8),
    }
    for name, (tensor, width) in cases.items():
        little = tmp_path / f"{name}_little.pt"
        torch.save({"t": tensor}, little)
        entries = zip_entries(little)
        folder = next(iter(entries)).split("/")[0]
        entries[f"{folder}/byteorder"] = b"big"
        data = entries[f"{folder}/data/0"]
        swapped = np.frombuffer(data, np.uint8).reshape(-1, width)[:, ::-1]
        entries[f"{folder}/data/0"] = swapped.tobytes()
        big = tmp_path / f"{name}_big.pt"
        write_zip(big, entries)

        reference = torch.load(big, weights_only=True)  # torch agrees on the meaning
        assert torch_bits(reference["t"]) == torch_bits(tensor)
        assert numpy_bits(load_torch_file(big)["t"]) == torch_bits(tensor), name


def test_reference_fixture_matches_torch():
    path = REFERENCE_MODEL / "hierarchos.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture not found at {path}")
    checkpoint = load_torch_file(path)
    state = read_state_dict(checkpoint)
    assert len(state) == 95
    np.testing.assert_array_equal(state["tok_emb.weight"], state["lm_head.weight"])
    assert all(isinstance(v, np.ndarray) for v in state.values())

    torch = pytest.importorskip("torch")
    reference = torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]
    assert list(state) == list(reference)
    for name, tensor in reference.items():
        assert numpy_bits(state[name]) == torch_bits(tensor), name


# --------------------------------------------------------------------------
# saving files for torch
# --------------------------------------------------------------------------


def sample_numpy_checkpoint():
    rng = np.random.default_rng(7)
    arrays = {name: random_bits(dtype, (2, 3), rng) for name, dtype in DTYPES.items()}
    embedding = rng.standard_normal((5, 4)).astype(np.float32)
    state = collections.OrderedDict(arrays)
    state["tok_emb.weight"] = embedding
    state["lm_head.weight"] = embedding  # tied by identity
    state["copy_of_embedding"] = embedding.copy()  # equal, but not tied
    state["transposed_input"] = embedding.T  # non-contiguous input
    state["big_endian_input"] = np.arange(6, dtype=">i4").reshape(2, 3)
    state["scalar"] = np.array(1.5, dtype=np.float32)
    state["empty"] = np.zeros((0, 4), dtype=np.float16)
    return {
        "model_state_dict": state,
        "config": {"d_model": 4, "lr": 1e-3, "name": "tiny", "flags": [True, None],
                   "dims": (2, 3), "big": -(2**65), "blob": b"\x00\x80"},
        "completed_epoch": 2,
    }


def test_saved_file_loads_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    checkpoint = sample_numpy_checkpoint()
    path = tmp_path / "ours.pt"
    save_torch_file(path, checkpoint)

    for mmap in (False, True):  # mmap loading relies on the 64-byte alignment
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        state = loaded["model_state_dict"]
        assert type(state) is collections.OrderedDict
        for name, array in checkpoint["model_state_dict"].items():
            assert torch_bits(state[name]) == numpy_bits(array), name
        assert loaded["config"] == checkpoint["config"]
        assert loaded["completed_epoch"] == 2

        def storage(name):
            return state[name].untyped_storage().data_ptr()

        assert storage("tok_emb.weight") == storage("lm_head.weight")
        assert storage("tok_emb.weight") != storage("copy_of_embedding")
        assert storage("tok_emb.weight") != storage("transposed_input")


def test_saved_file_layout(tmp_path):
    path = tmp_path / "layout.pt"
    save_torch_file(path, sample_numpy_checkpoint())
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        infos = zf.infolist()
        assert zf.testzip() is None
    assert names[0] == "layout/data.pkl"
    assert {"layout/version", "layout/byteorder", "layout/.format_version",
            "layout/.storage_alignment", "layout/.data/serialization_id"} <= set(names)
    assert all(name.startswith("layout/") for name in names)
    raw = path.read_bytes()
    for info in infos:  # every record's data starts on a 64-byte boundary
        assert data_offset(raw, info) % 64 == 0, info.filename

    named = tmp_path / "named.pt"
    save_torch_file(named, {"x": np.ones(2)}, archive_name="archive")
    with zipfile.ZipFile(named) as zf:
        assert zf.namelist()[0] == "archive/data.pkl"
    with pytest.raises(ValueError):
        save_torch_file(named, {}, archive_name="a/b")


def test_round_trip_is_bit_exact(tmp_path):
    checkpoint = sample_numpy_checkpoint()
    path = tmp_path / "round.pt"
    save_torch_file(path, checkpoint)
    loaded = load_torch_file(path)

    assert_bit_equal(loaded, checkpoint)
    state = loaded["model_state_dict"]
    assert state["tok_emb.weight"] is state["lm_head.weight"]
    assert state["copy_of_embedding"] is not state["tok_emb.weight"]

    again = tmp_path / "again.pt"
    save_torch_file(again, loaded)
    assert_bit_equal(load_torch_file(again), loaded)


def test_save_accepts_jax_arrays(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    weight = jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3)
    path = tmp_path / "jax.pt"
    save_torch_file(path, {"a": weight, "b": weight, "c": jnp.zeros(2)})
    loaded = load_torch_file(path)
    assert loaded["a"] is loaded["b"]  # same jax.Array object: one storage
    assert numpy_bits(loaded["a"]) == numpy_bits(np.asarray(weight))


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "model.pt"
    save_torch_file(path, {"x": np.zeros(3)})
    save_torch_file(path, {"x": np.ones(3)})
    np.testing.assert_array_equal(load_torch_file(path)["x"], np.ones(3))
    assert dir_listing(tmp_path) == ["model.pt"]


@pytest.mark.parametrize(
    "bad_value",
    [object(), {"a": {1, 2}}, [np.zeros(2, dtype=object)], np.int64(3), np.zeros(2, dtype="U3")],
    ids=["object", "set", "object-array", "numpy-scalar", "string-array"],
)
def test_failed_save_leaves_nothing_behind(tmp_path, bad_value):
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match=r"cannot save"):
        save_torch_file(path, {"weights": np.ones(4), "config": {"bad": bad_value}})
    assert dir_listing(tmp_path) == []


def test_failed_write_removes_temp_file_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_torch_file(path, {"x": np.zeros(3)})
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_torch_file(path, {"x": np.ones(3)})
    assert dir_listing(tmp_path) == ["model.pt"]
    assert path.read_bytes() == before


def test_save_rejects_cycles(tmp_path):
    cyclic: list = [np.ones(2)]
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="contains itself"):
        save_torch_file(tmp_path / "c.pt", {"x": cyclic})
    assert dir_listing(tmp_path) == []


# --------------------------------------------------------------------------
# hostile and damaged files
# --------------------------------------------------------------------------


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsExec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload_class", [RunsShell, RunsExec])
def test_reduce_payload_is_refused_without_running(tmp_path, payload_class):
    marker = tmp_path / "pwned"
    path = tmp_path / "hierarchos.pt"
    craft_checkpoint(path, {"model_state_dict": {}, "config": payload_class(marker)})

    refusal = r"refusing to load .*hierarchos\.pt.*(system|exec)"
    with pytest.raises(UnsafeCheckpointError, match=refusal):
        load_torch_file(path)
    assert not marker.exists()


def test_handwritten_global_opcodes_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    # protocol 2: GLOBAL 'os system', (command,), REDUCE
    data_pkl = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."
    path = tmp_path / "evil.pt"
    write_zip(path, {"evil/data.pkl": data_pkl})
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
        load_torch_file(path)

    # protocol 4: STACK_GLOBAL 'subprocess' 'check_call'
    data_pkl = b"\x80\x04\x8c\x0asubprocess\x8c\x0acheck_call\x93\x8c\x04true\x85R."
    write_zip(path, {"evil/data.pkl": data_pkl})
    with pytest.raises(UnsafeCheckpointError, match=r"subprocess\.check_call"):
        load_torch_file(path)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, ValueError)


def test_out_of_range_tensor_view_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    storage = StorageRef("storage", torch.FloatStorage, "0", "cpu", 4)
    hooks = collections.OrderedDict()
    path = tmp_path / "oob.pt"
    views = {
        "offset": (storage, 10**6, (4,), (1,), False, hooks),
        "stride": (storage, 0, (2, 2), (1, 10**6), False, hooks),
        "size": (storage, 0, (5,), (1,), False, hooks),
    }
    for what, args in views.items():
        craft_checkpoint(path, Reduce(torch._utils._rebuild_tensor_v2, args),
                         storages={"0": np.arange(4, dtype=np.float32).tobytes()})
        with pytest.raises(CorruptCheckpointError, match="reaches past the end"):
            load_torch_file(path)


def test_truncated_file_is_corrupt(tmp_path):
    path = tmp_path / "model.pt"
    save_torch_file(path, {"x": np.arange(1000, dtype=np.float32)})
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptCheckpointError, match=r"model\.pt.*truncated"):
            load_torch_file(path)


def test_damaged_archives_are_corrupt(tmp_path):
    good = tmp_path / "good.pt"
    save_torch_file(good, {"x": np.arange(100, dtype=np.float32)})
    entries = zip_entries(good)
    path = tmp_path / "bad.pt"

    write_zip(path, {k: v for k, v in entries.items() if not k.endswith("data.pkl")})
    with pytest.raises(CorruptCheckpointError, match=r"bad\.pt.*no <folder>/data\.pkl"):
        load_torch_file(path)

    write_zip(path, {k: v for k, v in entries.items() if "/data/" not in k})
    with pytest.raises(CorruptCheckpointError, match=r"storage record 'good/data/0' is missing"):
        load_torch_file(path)

    write_zip(path, {k: (v[:-4] if "/data/" in k else v) for k, v in entries.items()})
    with pytest.raises(CorruptCheckpointError, match="holds 396 bytes, the pickle expects 400"):
        load_torch_file(path)

    write_zip(path, {k: (v[:-3] if k.endswith("data.pkl") else v) for k, v in entries.items()})
    with pytest.raises(CorruptCheckpointError, match=r"bad\.pt"):
        load_torch_file(path)

    # A flipped byte inside a storage fails the zip CRC check.
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("good/data/0")
    raw[data_offset(raw, info) + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="CRC"):
        load_torch_file(path)

    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty"):
        load_torch_file(path)
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.pt")


def test_legacy_format_is_reported(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    message = r"legacy \(pre-1\.6\) torch format is not supported"
    with pytest.raises(UnsupportedCheckpointError, match=message):
        load_torch_file(path)


# --------------------------------------------------------------------------
# read_state_dict
# --------------------------------------------------------------------------


def test_read_state_dict_variants():
    weights = collections.OrderedDict(a=np.ones(2), b=np.zeros(3))
    assert read_state_dict({"model_state_dict": weights, "config": {}}) == weights
    assert list(read_state_dict({"state_dict": dict(weights)})) == ["a", "b"]
    flat = read_state_dict(dict(weights))
    assert type(flat) is collections.OrderedDict and flat["a"] is weights["a"]

    with pytest.raises(ValueError, match="entry 'config' is a dict"):
        read_state_dict({"weights": np.ones(2), "config": {}})
    with pytest.raises(ValueError, match="entry 'a' is a list"):
        read_state_dict({"model_state_dict": {"a": [1]}})
    with pytest.raises(TypeError):
        read_state_dict([np.ones(2)])


def test_build_on_admitted_objects_is_refused(tmp_path):
    """Pickle's BUILD must not be able to modify loader or numpy objects."""

    def text(value: str) -> bytes:
        encoded = value.encode()
        return b"X" + struct.pack("<I", len(encoded)) + encoded

    # _codecs.encode.__defaults__ = ("x",) via BUILD's (None, slot-state) form
    build_on_function = (
        b"\x80\x02c_codecs\nencode\nN}" + text("__defaults__") + text("x") + b"\x85s\x86b."
    )
    # torch.float32 (the shared numpy dtype it maps to) given a new state
    build_on_dtype = (
        b"\x80\x02ctorch\nfloat32\n(K\x03" + text(">")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb."
    )
    path = tmp_path / "build.pt"
    for data_pkl in (build_on_function, build_on_dtype):
        write_zip(path, {"archive/data.pkl": data_pkl})
        with pytest.raises(CorruptCheckpointError, match="set state"):
            load_torch_file(path)
    assert np.dtype(np.float32).str == "<f4"


def test_numpy_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pt"
    craft_checkpoint(path, {"x": np.array([None, "a"], dtype=object)})
    with pytest.raises(CorruptCheckpointError, match="not a plain numeric dtype"):
        load_torch_file(path)


def test_library_does_not_import_torch(tmp_path):
    import subprocess

    script = (
        "import sys, numpy as np\n"
        "from hierarchos_jax.io.torch_zip import load_torch_file, save_torch_file\n"
        f"save_torch_file({str(tmp_path / 'x.pt')!r}, {{'w': np.ones(3)}})\n"
        f"load_torch_file({str(tmp_path / 'x.pt')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", script], cwd=repo_root, check=True)
