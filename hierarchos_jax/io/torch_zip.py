"""Read and write PyTorch ``torch.save`` checkpoints without importing torch.

The file format
===============
Since PyTorch 1.6 ``torch.save`` writes an *uncompressed zip archive*. All of
its entries sit in one top-level folder, named after the file being written
(``hierarchos.pt/`` or ``model/``) or ``archive/`` when saving to a buffer:

``<folder>/data.pkl``
    The saved object as a protocol-2 pickle. Tensors carry no numbers in the
    pickle. Each one is a call
    ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
    requires_grad, backward_hooks[, metadata])`` in which ``storage`` is a
    *persistent id*, the tuple ``("storage", StorageClass, key, location,
    numel)``, that the unpickler resolves outside the pickle. Dtypes that
    have no legacy storage class (uint16, float8, ...) use
    ``torch.storage.UntypedStorage`` (``numel`` counts bytes) and
    ``_rebuild_tensor_v3``, which names the dtype as an extra argument.
``<folder>/data/<key>``
    The raw bytes of storage ``key``. Several tensors may view one storage
    (that is how tied weights stay tied, and how ``t.T`` is saved).
``<folder>/byteorder``
    ``little`` or ``big``: the byte order of every storage (``little`` when
    the record is absent, as in files from older torch versions).
``<folder>/version``, ``.format_version``, ``.storage_alignment``, ``.data/serialization_id``
    Small bookkeeping records. torch pads each entry's local zip header so
    that the entry's bytes start at a multiple of 64, and so does this
    module.

Before 1.6 torch wrote a different, non-zip layout (a row of pickles followed
by raw storages). That legacy format is refused with
``UnsupportedCheckpointError``.

Safety
======
A pickle names the functions that rebuild it, so ``pickle.load`` on an
untrusted file runs whatever the file asks for. ``load_torch_file`` resolves
every global through a fixed table (``_RestrictedUnpickler._admitted_globals``)
and raises ``UnsafeCheckpointError`` for any other name before anything could
call it. The table admits

* torch's tensor rebuild functions (``torch._utils._rebuild_tensor``,
  ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state`` and ``torch._tensor._rebuild_from_type_v2``),
  each replaced by a local function that builds a numpy array;
* the names torch pickles next to tensors: storage classes
  (``torch.FloatStorage`` ..., ``torch.storage.UntypedStorage``), dtypes
  (``torch.float32`` ...), ``torch.Size``, ``torch.device``, ``torch.Tensor``
  and ``torch.nn.parameter.Parameter``;
* plain data: ``collections.OrderedDict``, ``builtins`` ``set``,
  ``frozenset``, ``complex``, ``bytes`` and ``bytearray``, and
  ``_codecs.encode`` (how protocol 2 spells a ``bytes`` value);
* what ``np.random.get_state()`` and numpy scalars pickle to:
  ``numpy.dtype``, ``numpy.ndarray`` and ``numpy[._]core.multiarray``'s
  ``_reconstruct`` and ``scalar``, limited to plain numeric dtypes and rebuilt
  from raw bytes here (numpy's own ``__setstate__`` never sees file data);
* ``argparse.Namespace`` and Hierarchos' ``AttrDict`` config class (from
  ``__main__``, ``trainer``, ``hierarchos`` or a ``hierarchos.*`` module),
  both loaded as plain ``dict``.

Functions and tags in the table are inert local stand-ins, not the real
torch/numpy objects, and they refuse pickle's BUILD opcode, so a file can
neither call anything else nor modify the loader's (or numpy's) objects.

What comes back
===============
Tensors load as C-contiguous ``numpy.ndarray`` values (bfloat16 and float8
through ``ml_dtypes``); ``requires_grad``, backward hooks, device locations and
Python attributes set on tensors are dropped. Tensors that are the *same
view* of one storage (same storage, dtype, offset, size and stride, like tied
``tok_emb.weight`` / ``lm_head.weight``) load as one shared ndarray object;
other views into a shared storage load as independent copies, so no two
returned arrays share memory. Torch dtypes load as numpy dtypes,
``torch.Size`` as a tuple, ``torch.device`` as a string such as ``"cuda:0"``.

Saving
======
``save_torch_file`` writes the same layout, so that ``torch.load(path,
weights_only=True)`` reads it: numpy arrays become tensors, one storage per
distinct array object, so arrays that are the same object stay tied.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import secrets
import struct
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "CorruptCheckpointError",
    "TorchFileError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "load_torch_file",
    "read_state_dict",
    "save_torch_file",
]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class TorchFileError(ValueError):
    """Base class: a torch checkpoint could not be read."""


class CorruptCheckpointError(TorchFileError):
    """The file is truncated, not a torch zip checkpoint, or internally inconsistent."""


class UnsafeCheckpointError(TorchFileError):
    """The pickle references a global outside the admitted tensor/container types."""


class UnsupportedCheckpointError(TorchFileError):
    """The file is a valid torch checkpoint in a variant this module does not read."""


class _Malformed(Exception):
    """Internal: a problem found deep inside loading; reported with the file name."""


# --------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
    name: str  # attribute of the torch module, e.g. "float32"
    numpy: np.dtype
    storage_class: str | None  # legacy typed storage class, None: saved via UntypedStorage


_TORCH_DTYPES = (
    _TorchDtype("bool", np.dtype(np.bool_), "BoolStorage"),
    _TorchDtype("uint8", np.dtype(np.uint8), "ByteStorage"),
    _TorchDtype("int8", np.dtype(np.int8), "CharStorage"),
    _TorchDtype("int16", np.dtype(np.int16), "ShortStorage"),
    _TorchDtype("int32", np.dtype(np.int32), "IntStorage"),
    _TorchDtype("int64", np.dtype(np.int64), "LongStorage"),
    _TorchDtype("float16", np.dtype(np.float16), "HalfStorage"),
    _TorchDtype("bfloat16", np.dtype(ml_dtypes.bfloat16), "BFloat16Storage"),
    _TorchDtype("float32", np.dtype(np.float32), "FloatStorage"),
    _TorchDtype("float64", np.dtype(np.float64), "DoubleStorage"),
    _TorchDtype("complex64", np.dtype(np.complex64), "ComplexFloatStorage"),
    _TorchDtype("complex128", np.dtype(np.complex128), "ComplexDoubleStorage"),
    _TorchDtype("uint16", np.dtype(np.uint16), None),
    _TorchDtype("uint32", np.dtype(np.uint32), None),
    _TorchDtype("uint64", np.dtype(np.uint64), None),
    _TorchDtype("float8_e4m3fn", np.dtype(ml_dtypes.float8_e4m3fn), None),
    _TorchDtype("float8_e5m2", np.dtype(ml_dtypes.float8_e5m2), None),
    _TorchDtype("float8_e4m3fnuz", np.dtype(ml_dtypes.float8_e4m3fnuz), None),
    _TorchDtype("float8_e5m2fnuz", np.dtype(ml_dtypes.float8_e5m2fnuz), None),
)
_DTYPE_BY_NUMPY = {d.numpy: d for d in _TORCH_DTYPES}

_STORAGE_ALIGNMENT = 64
_READ_CHUNK = 16 << 20
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


# --------------------------------------------------------------------------
# Loading: stand-ins handed to the pickle
# --------------------------------------------------------------------------


class _StandIn:
    """Base of the inert objects that admitted globals resolve to.

    Pickle's BUILD opcode sets state on whatever object is on its stack; on
    a stand-in it always fails, so a file cannot alter the loader's objects.
    ``resolve`` returns the plain value that replaces a stand-in left in the
    loaded result.
    """

    def __setstate__(self, state: Any) -> None:
        raise _Malformed(f"the pickle tries to set state on {self!r}")

    def resolve(self) -> Any:
        raise _Malformed(f"the pickle stores {self!r} as a value")


@dataclasses.dataclass(frozen=True, eq=False)
class _Admitted(_StandIn):
    """An admitted global function, called with positional arguments only."""

    name: str
    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __repr__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class _TypeTag(_StandIn):
    """A class named only as a tag (``torch.Tensor``, ``numpy.ndarray``)."""

    name: str


@dataclasses.dataclass(frozen=True)
class _StorageType(_StandIn):
    """A torch storage class named inside a persistent id."""

    name: str
    dtype: np.dtype | None  # None for UntypedStorage: raw bytes, dtype given per tensor


@dataclasses.dataclass(frozen=True)
class _TorchDtypeValue(_StandIn):
    """``torch.float32`` and friends; they load as the matching numpy dtype."""

    dtype: np.dtype

    def resolve(self) -> np.dtype:
        return self.dtype


class _NumpyDtype(_StandIn):
    """``numpy.dtype(spec, align, copy)`` plus its pickled state, for plain numeric dtypes."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[1] in ("<", ">", "|", "=")
            and all(part is None for part in (*state[2:5], *state[8:]))
        ):
            raise _Malformed(f"unsupported numpy dtype state {state!r}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])

    def resolve(self) -> np.dtype:
        return self.dtype


class _NumpyArray(_StandIn):
    """A pickled ``numpy.ndarray``, rebuilt from its raw bytes (never numpy's __setstate__)."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Malformed("unsupported numpy array state")
        _version, shape, dtype, fortran_order, data = state
        dtype = _dtype_argument(dtype)
        shape = _int_tuple(shape, "a numpy array's shape")
        expected = math.prod(shape) * dtype.itemsize
        if not isinstance(data, (bytes, bytearray)) or len(data) != expected:
            raise _Malformed(f"a numpy {dtype} array of shape {shape} without its {expected} bytes")
        array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")
        self.array = array.astype(dtype.newbyteorder("="), order="K")  # native byte order, a copy

    def resolve(self) -> np.ndarray:
        if self.array is None:
            raise _Malformed("a numpy array without its data")
        return self.array


def _plain_numeric(dtype: np.dtype) -> np.dtype:
    """``dtype`` if it is a plain number type (no objects, strings or records)."""
    if not (dtype.kind in "biufc" or dtype in _DTYPE_BY_NUMPY) or dtype.fields is not None:
        raise _Malformed(f"{dtype} is not a plain numeric dtype")
    return dtype


def _dtype_argument(value: Any) -> np.dtype:
    if not isinstance(value, (_NumpyDtype, _TorchDtypeValue)):
        raise _Malformed(f"{value!r} is not a dtype")
    return _plain_numeric(value.resolve())


class _AttributeDict(dict):
    """Receives objects whose pickled state is a dict of attributes.

    ``argparse.Namespace`` and Hierarchos' ``AttrDict`` unpickle into this and
    are turned into plain dicts before ``load_torch_file`` returns.
    """

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        if state is None or state is self:
            return
        if not isinstance(state, dict):
            raise _Malformed(f"attribute state is a {type(state).__name__}, not a dict")
        self.update(state)


# Plain-data functions the pickle may call. Each checks its arguments.


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> _NumpyDtype:
    if not isinstance(spec, str):
        raise _Malformed(f"numpy dtype from a {type(spec).__name__}")
    return _NumpyDtype(_plain_numeric(np.dtype(spec)))


def _numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> _NumpyArray:
    if not (isinstance(subtype, _TypeTag) and subtype.name == "numpy.ndarray"):
        raise _Malformed(f"numpy _reconstruct of {subtype!r}: only plain ndarrays are admitted")
    return _NumpyArray()


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    dtype = _dtype_argument(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Malformed(f"a numpy {dtype} scalar without its {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype)[0]


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 stores a bytes object as encode(<latin-1 text>, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Malformed("unexpected _codecs.encode call")
    return text.encode(encoding)


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if args and not isinstance(args[0], (str, bytes, bytearray, list)):
            raise _Malformed(f"{kind.__name__}() from a {type(args[0]).__name__}")
        return kind(*args)

    return build


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return _int_tuple(dims, "torch.Size")


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise _Malformed(f"torch.device({kind!r}, {index!r})")
    return kind if index is None else f"{kind}:{index}"


def _is_hierarchos_module(module: str) -> bool:
    return module in ("__main__", "trainer", "hierarchos") or module.startswith("hierarchos.")


# --------------------------------------------------------------------------
# Loading: storages and tensors
# --------------------------------------------------------------------------


class _Storage(_StandIn):
    """One ``data/<key>`` record: raw bytes plus cached typed views of them."""

    def __init__(self, key: str, raw: np.ndarray, storage_type: _StorageType, swap_bytes: bool):
        self.key = key
        self.raw = raw  # writable uint8, backed by a bytearray
        self.storage_type = storage_type
        self._swap_bytes = swap_bytes
        self._typed: dict[np.dtype, np.ndarray] = {}
        # Set once a tensor has been returned as a zero-copy view of ``raw``;
        # later tensors on this storage are then copied, so that no two
        # returned arrays share memory.
        self._handed_out = False

    def __repr__(self) -> str:
        return f"<storage {self.key!r}>"

    def elements(self, dtype: np.dtype) -> np.ndarray:
        """The storage as a 1-D array of native-order ``dtype`` elements."""
        typed = self._typed.get(dtype)
        if typed is None:
            if self.raw.size % dtype.itemsize:
                raise _Malformed(
                    f"storage {self.key!r} holds {self.raw.size} bytes, "
                    f"not a whole number of {dtype} elements"
                )
            if self._swap_bytes and dtype.itemsize > 1:
                # Reverse the bytes of each scalar (of each half of a complex).
                width = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
                swapped = np.ascontiguousarray(self.raw.reshape(-1, width)[:, ::-1])
                typed = swapped.reshape(-1).view(dtype)
            else:
                typed = self.raw.view(dtype)
            self._typed[dtype] = typed
        return typed

    def tensor(
        self, dtype: np.dtype, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
    ) -> np.ndarray:
        """The view ``(offset, shape, strides)``, counted in elements, as its own array."""
        elements = self.elements(dtype)
        numel = math.prod(shape)
        if numel == 0:
            return np.zeros(shape, dtype)
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= elements.size:
            raise _Malformed(
                f"a tensor (offset {offset}, size {shape}, stride {strides}) reaches past "
                f"the end of storage {self.key!r}, which has {elements.size} elements"
            )
        if (
            not self._handed_out
            and offset == 0
            and numel == elements.size
            and strides == _contiguous_strides(shape)
        ):
            self._handed_out = True
            return elements.reshape(shape)
        view = np.lib.stride_tricks.as_strided(
            elements[offset:],
            shape=shape,
            strides=tuple(s * dtype.itemsize for s in strides),
            writeable=False,
        )
        return np.array(view, order="C")

    def resolve(self) -> np.ndarray:
        """A bare storage saved as a value: its elements as a 1-D array."""
        dtype = self.storage_type.dtype
        if dtype is None:
            dtype = np.dtype(np.uint8)
        return self.elements(dtype).copy()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Malformed(f"{what} is {value!r}, not a tuple of non-negative ints")
    return tuple(value)


def _tensor_flags(metadata: Any) -> tuple[bool, bool]:
    """(conj, neg) from the optional metadata dict of ``_rebuild_tensor_v2/v3``."""
    if metadata is None:
        return False, False
    if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
        raise _Malformed(f"unsupported tensor metadata {metadata!r}")
    return bool(metadata.get("conj", False)), bool(metadata.get("neg", False))


class _Archive:
    """The zip side of a checkpoint: locates its records and reads storages."""

    def __init__(self, zf: zipfile.ZipFile):
        self._zf = zf
        top_level_pickles = sorted(
            {name for name in zf.namelist() if name.endswith("/data.pkl") and name.count("/") == 1}
        )
        if not top_level_pickles:
            raise _Malformed("the archive has no <folder>/data.pkl record")
        if len(top_level_pickles) > 1:
            raise _Malformed(f"the archive has several data.pkl records: {top_level_pickles}")
        self.folder = top_level_pickles[0].split("/", 1)[0]
        try:
            byteorder = zf.read(f"{self.folder}/byteorder").strip()
        except KeyError:
            byteorder = b"little"  # files from before torch recorded it
        if byteorder not in (b"little", b"big"):
            raise _Malformed(f"unknown byteorder record {byteorder!r}")
        self.swap_bytes = byteorder.decode() != sys.byteorder

    def read_pickle(self) -> bytes:
        return self._zf.read(f"{self.folder}/data.pkl")

    def read_storage(self, key: str, nbytes: int) -> np.ndarray:
        name = f"{self.folder}/data/{key}"
        try:
            info = self._zf.getinfo(name)
        except KeyError:
            raise _Malformed(f"storage record {name!r} is missing") from None
        if info.file_size != nbytes:
            raise _Malformed(
                f"storage record {name!r} holds {info.file_size} bytes, the pickle expects {nbytes}"
            )
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        filled = 0
        with self._zf.open(info) as stream:  # zipfile checks the CRC on the last read
            while filled < nbytes:
                chunk = stream.read(min(_READ_CHUNK, nbytes - filled))
                if not chunk:
                    raise _Malformed(
                        f"storage record {name!r} ends after {filled} of {nbytes} bytes"
                    )
                view[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
        return np.frombuffer(buffer, dtype=np.uint8)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``, admitting only tensor and plain-data globals."""

    def __init__(self, archive: _Archive, label: str):
        super().__init__(io.BytesIO(archive.read_pickle()))
        self._archive = archive
        self._label = label
        self._storages: dict[str, _Storage] = {}
        self._tensors: dict[tuple, np.ndarray] = {}
        self._globals = self._admitted_globals()

    def _admitted_globals(self) -> dict[str, Any]:
        table: dict[str, Any] = {}

        def admit(name: str, function: Callable[..., Any]) -> _Admitted:
            table[name] = _Admitted(name, function)
            return table[name]

        # Tensors, parameters and the tags torch passes alongside them.
        self._tensor_rebuilders = {
            admit("torch._utils._rebuild_tensor", self._rebuild_tensor_v1),
            admit("torch._utils._rebuild_tensor_v2", self._rebuild_tensor_v2),
            admit("torch._utils._rebuild_tensor_v3", self._rebuild_tensor_v3),
            admit("torch._utils._rebuild_parameter", self._rebuild_parameter),
            admit("torch._utils._rebuild_parameter_with_state", self._rebuild_parameter_with_state),
        }
        admit("torch._tensor._rebuild_from_type_v2", self._rebuild_from_type_v2)
        for tag in ("torch.Tensor", "torch.nn.parameter.Parameter", "numpy.ndarray"):
            table[tag] = _TypeTag(tag)
        for dtype in _TORCH_DTYPES:
            table[f"torch.{dtype.name}"] = _TorchDtypeValue(dtype.numpy)
            if dtype.storage_class is not None:
                storage_type = _StorageType(dtype.storage_class, dtype.numpy)
                table[f"torch.{dtype.storage_class}"] = storage_type
        for name in ("torch.storage.UntypedStorage", "torch.UntypedStorage"):
            table[name] = _StorageType("UntypedStorage", None)
        admit("torch.Size", _torch_size)
        admit("torch.device", _torch_device)

        # Plain containers and scalars. The classes here are immutable C types,
        # or _AttributeDict, whose own __setstate__ guards it.
        table["collections.OrderedDict"] = collections.OrderedDict
        table["argparse.Namespace"] = _AttributeDict
        admit("_codecs.encode", _codecs_encode)
        for module in ("builtins", "__builtin__"):  # protocol 2 spells it __builtin__
            for kind in (set, frozenset, complex):
                table[f"{module}.{kind.__name__}"] = kind
            for kind in (bytes, bytearray):
                admit(f"{module}.{kind.__name__}", _bytes_like(kind))

        # numpy arrays, scalars and dtypes, as in np.random.get_state().
        admit("numpy.dtype", _numpy_dtype)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x, 2.x
            admit(f"{module}._reconstruct", _numpy_reconstruct)
            admit(f"{module}.scalar", _numpy_scalar)
        return table

    # -- pickle hooks ------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        admitted = self._globals.get(qualified)
        if admitted is not None:
            return admitted
        if name == "AttrDict" and _is_hierarchos_module(module):
            return _AttributeDict
        raise UnsafeCheckpointError(
            f"refusing to load {self._label}: it references {qualified}, which is not a "
            "tensor or container type this loader admits (nothing from the file was run)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Malformed(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"persistent id names {storage_type!r}, not a storage class")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _Malformed(f"malformed persistent id {pid!r}")
        storage = self._storages.get(key)
        if storage is None:
            itemsize = 1 if storage_type.dtype is None else storage_type.dtype.itemsize
            raw = self._archive.read_storage(key, numel * itemsize)
            storage = _Storage(key, raw, storage_type, self._archive.swap_bytes)
            self._storages[key] = storage
        elif storage.storage_type != storage_type:
            raise _Malformed(
                f"storage {key!r} is referenced as both {storage.storage_type.name} "
                f"and {storage_type.name}"
            )
        return storage

    # -- tensor reconstruction -----------------------------------------------

    def _rebuild(self, storage, offset, size, stride, dtype=None, metadata=None) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise _Malformed(f"a tensor's storage argument is {storage!r}, not a storage")
        if dtype is None:
            dtype = storage.storage_type.dtype
            if dtype is None:
                raise _Malformed("a tensor on an untyped storage does not name its dtype")
        elif isinstance(dtype, _TorchDtypeValue):
            dtype = dtype.dtype
        else:
            raise _Malformed(f"a tensor names {dtype!r} as its dtype")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise _Malformed(f"a tensor's storage offset is {offset!r}")
        shape = _int_tuple(size, "a tensor's size")
        strides = _int_tuple(stride, "a tensor's stride")
        if len(shape) != len(strides):
            raise _Malformed(f"a tensor has size {shape} but stride {strides}")
        conj, neg = _tensor_flags(metadata)
        # The stride of a length-1 dimension is never used; zeroing it keeps
        # arbitrary values there from overflowing the byte strides.
        strides = tuple(0 if n == 1 else s for n, s in zip(shape, strides))

        cache_key = (storage.key, dtype, offset, shape, strides, conj, neg)
        array = self._tensors.get(cache_key)
        if array is None:
            array = storage.tensor(dtype, offset, shape, strides)
            if conj:
                array = np.conj(array)
            if neg:
                array = np.negative(array)
            self._tensors[cache_key] = array
        return array

    def _rebuild_tensor_v1(self, storage, storage_offset, size, stride):
        return self._rebuild(storage, storage_offset, size, stride)

    def _rebuild_tensor_v2(
        self, storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
    ):
        return self._rebuild(storage, storage_offset, size, stride, None, metadata)

    def _rebuild_tensor_v3(
        self, storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
        metadata=None,
    ):
        if dtype is None:
            raise _Malformed("_rebuild_tensor_v3 without a dtype")
        return self._rebuild(storage, storage_offset, size, stride, dtype, metadata)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        return _require_array(data, "a parameter")

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return _require_array(data, "a parameter")  # Python attributes in ``state`` are dropped

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        # torch's wrapper for tensors that carry Python attributes (``state``,
        # dropped here) or are tensor subclasses (tagged by ``new_type``).
        if func not in self._tensor_rebuilders or not isinstance(new_type, _TypeTag):
            raise _Malformed(f"_rebuild_from_type_v2 called with {func!r}, {new_type!r}")
        if not isinstance(args, tuple):
            raise _Malformed("_rebuild_from_type_v2 arguments are not a tuple")
        return func(*args)


def _require_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _Malformed(f"{what} wraps {value!r}, not a tensor")
    return value


def _replace_stand_ins(root: Any) -> Any:
    """Swap loader objects left in the result for plain values.

    Stand-ins become what ``resolve`` gives (dtypes, numpy arrays, a bare
    storage's elements) and ``_AttributeDict`` becomes ``dict``. Lists and
    dicts are updated in place, so shared references stay shared.
    """
    memo: dict[int, Any] = {}
    atoms = (np.ndarray, np.generic, np.dtype, str, bytes, bytearray, int, float, complex)

    def convert(obj: Any) -> Any:
        if obj is None or isinstance(obj, atoms):
            return obj
        key = id(obj)
        if key in memo:
            return memo[key]
        if isinstance(obj, _StandIn):
            result = memo[key] = obj.resolve()
        elif isinstance(obj, _AttributeDict):
            result = memo[key] = {}
            for k, v in obj.items():
                result[convert(k)] = convert(v)
        elif isinstance(obj, dict):
            result = memo[key] = obj
            items = [(convert(k), convert(v)) for k, v in obj.items()]
            obj.clear()
            obj.update(items)
        elif isinstance(obj, list):
            result = memo[key] = obj
            obj[:] = [convert(v) for v in obj]
        elif isinstance(obj, (tuple, set, frozenset)):
            result = memo[key] = type(obj)(convert(v) for v in obj)
        else:
            result = obj
        return result

    return convert(root)


def _not_a_zip_error(label: str, head: bytes) -> TorchFileError:
    if head.startswith(_LEGACY_MAGIC) or head[257:262] == b"ustar":
        return UnsupportedCheckpointError(
            f"cannot load {label}: legacy (pre-1.6) torch format is not supported; "
            "re-save it with a current torch (torch.save(torch.load(path), path))"
        )
    if not head:
        return CorruptCheckpointError(f"cannot load {label}: the file is empty")
    return CorruptCheckpointError(
        f"cannot load {label}: not a zip archive (the file is truncated or was not "
        "written by torch.save)"
    )


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` zip checkpoint, with tensors as numpy arrays.

    Only tensor and plain-data types are rebuilt (see the module docstring);
    anything else raises ``UnsafeCheckpointError`` without being run. A
    damaged file raises ``CorruptCheckpointError``, the pre-1.6 format
    ``UnsupportedCheckpointError``; a missing file raises the usual
    ``FileNotFoundError``.
    """
    label = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(512)
        file.seek(0)
        try:
            zf = zipfile.ZipFile(file)
        except zipfile.BadZipFile:
            raise _not_a_zip_error(label, head) from None
        except Exception as error:  # e.g. a damaged end-of-archive record
            raise CorruptCheckpointError(f"cannot load {label}: {error}") from error
        with zf:
            try:
                archive = _Archive(zf)
                return _replace_stand_ins(_RestrictedUnpickler(archive, label).load())
            except TorchFileError:
                raise
            except _Malformed as error:
                raise CorruptCheckpointError(f"cannot load {label}: {error}") from None
            except MemoryError:
                raise
            except Exception as error:  # damage in the zip, the pickle stream or its arguments
                raise CorruptCheckpointError(
                    f"cannot load {label}: {type(error).__name__}: {error}"
                ) from error


def read_state_dict(checkpoint: Any) -> collections.OrderedDict[str, np.ndarray]:
    """The model weights of a loaded checkpoint, as an ordered name -> array dict.

    Takes ``checkpoint["model_state_dict"]`` (Hierarchos training and final
    checkpoints), else ``checkpoint["state_dict"]``, else the checkpoint
    itself when it is a flat mapping of names to arrays (a bare
    ``torch.save(model.state_dict())``). Keys are returned unchanged
    (``_orig_mod.`` prefixes from ``torch.compile`` included).
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    for entry in ("model_state_dict", "state_dict"):
        if entry in checkpoint:
            source, where = checkpoint[entry], f"checkpoint[{entry!r}]"
            break
    else:
        source, where = checkpoint, "the checkpoint (it has no 'model_state_dict' or 'state_dict')"
    if not isinstance(source, Mapping):
        raise ValueError(f"{where} is a {type(source).__name__}, not a mapping of names to arrays")
    for name, value in source.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise ValueError(
                f"{where} is not a flat mapping of names to arrays: "
                f"entry {name!r} is a {type(value).__name__}"
            )
    return collections.OrderedDict(source)


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


class _PickleWriter:
    """Emits the protocol-2 ``data.pkl`` that ``torch.save`` would write.

    Written opcode by opcode rather than with ``pickle.Pickler`` because the
    pickle must name torch's own functions (``torch._utils._rebuild_tensor_v2``,
    ``torch.FloatStorage`` ...), which the standard pickler would try to
    import. Arrays are collected into ``storages``: one storage per distinct
    array object, so arrays that are the same object stay tied.
    """

    _BATCH = 1000  # items per APPENDS / SETITEMS, as pickle does

    def __init__(self) -> None:
        self._out = bytearray()
        self.storages: list[tuple[str, np.ndarray]] = []
        self._by_identity: dict[int, tuple[str, np.ndarray, Any]] = {}
        self._path: list[str] = []
        self._open_containers: set[int] = set()

    def dumps(self, obj: Any) -> bytes:
        self._out += pickle.PROTO + b"\x02"
        self._save(obj)
        self._out += pickle.STOP
        return bytes(self._out)

    # -- values --------------------------------------------------------------

    def _save(self, obj: Any) -> None:
        out = self._out
        if obj is None:
            out += pickle.NONE
        elif isinstance(obj, bool):
            out += pickle.NEWTRUE if obj else pickle.NEWFALSE
        elif isinstance(obj, int):
            self._save_int(int(obj))
        elif isinstance(obj, float):
            out += pickle.BINFLOAT + struct.pack(">d", obj)
        elif isinstance(obj, str):
            self._save_str(obj)
        elif isinstance(obj, bytes):
            self._save_global("_codecs", "encode")
            self._save_str(obj.decode("latin-1"))
            self._save_str("latin1")
            out += pickle.TUPLE2 + pickle.REDUCE
        elif isinstance(obj, np.generic):
            raise TypeError(
                f"cannot save numpy scalar {obj!r} at {self._where()}: "
                "convert it with .item() or np.asarray()"
            )
        elif isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
            self._save_tensor(obj)
        elif isinstance(obj, (dict, list, tuple)):
            self._save_container(obj)
        else:
            raise TypeError(
                f"cannot save {type(obj).__name__} at {self._where()}: only dict, list, tuple, "
                "str, int, float, bool, None, bytes and numpy arrays are supported"
            )

    def _save_int(self, value: int) -> None:
        out = self._out
        if 0 <= value < 0x100:
            out += pickle.BININT1 + value.to_bytes(1, "little")
        elif 0 <= value < 0x10000:
            out += pickle.BININT2 + value.to_bytes(2, "little")
        elif -0x80000000 <= value < 0x80000000:
            out += pickle.BININT + value.to_bytes(4, "little", signed=True)
        else:
            encoded = value.to_bytes((value.bit_length() >> 3) + 1, "little", signed=True)
            if len(encoded) < 0x100:
                out += pickle.LONG1 + len(encoded).to_bytes(1, "little") + encoded
            else:
                out += pickle.LONG4 + len(encoded).to_bytes(4, "little", signed=True) + encoded

    def _save_str(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        self._out += pickle.BINUNICODE + len(encoded).to_bytes(4, "little") + encoded

    def _save_global(self, module: str, name: str) -> None:
        self._out += pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")

    def _save_int_tuple(self, values: tuple[int, ...]) -> None:
        self._save_tuple_items(values, self._save_int)

    def _save_tuple_items(self, items, save_item: Callable[[Any], None]) -> None:
        out = self._out
        if not items:
            out += pickle.EMPTY_TUPLE
            return
        if len(items) > 3:
            out += pickle.MARK
        for item in items:
            save_item(item)
        out += {1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}.get(len(items), pickle.TUPLE)

    def _save_empty_ordered_dict(self) -> None:
        self._save_global("collections", "OrderedDict")
        self._out += pickle.EMPTY_TUPLE + pickle.REDUCE

    # -- containers ------------------------------------------------------------

    def _save_container(self, obj: dict | list | tuple) -> None:
        if id(obj) in self._open_containers:
            raise ValueError(f"cannot save a container that contains itself (at {self._where()})")
        self._open_containers.add(id(obj))
        try:
            if isinstance(obj, dict):
                self._save_dict(obj)
            elif isinstance(obj, list):
                self._out += pickle.EMPTY_LIST
                self._save_batched(list(enumerate(obj)), pickle.APPENDS, with_keys=False)
            else:
                self._save_tuple_items(list(enumerate(obj)), self._save_indexed)
        finally:
            self._open_containers.discard(id(obj))

    def _save_indexed(self, item: tuple[Any, Any]) -> None:
        index, value = item
        self._path.append(f"[{index}]")
        self._save(value)
        self._path.pop()

    def _save_dict(self, obj: dict) -> None:
        if isinstance(obj, collections.OrderedDict):
            self._save_empty_ordered_dict()
        else:  # other dict subclasses (AttrDict, defaultdict) are saved as dict
            self._out += pickle.EMPTY_DICT
        self._save_batched(list(obj.items()), pickle.SETITEMS, with_keys=True)

    def _save_batched(self, items: list[tuple[Any, Any]], opcode: bytes, with_keys: bool) -> None:
        for start in range(0, len(items), self._BATCH):
            self._out += pickle.MARK
            for key, value in items[start : start + self._BATCH]:
                if with_keys:
                    self._save(key)
                self._path.append(f"[{key!r}]")
                self._save(value)
                self._path.pop()
            self._out += opcode

    def _where(self) -> str:
        return "obj" + "".join(self._path)

    # -- tensors ---------------------------------------------------------------

    def _save_tensor(self, obj: Any) -> None:
        key, array = self._storage_for(obj)
        torch_dtype = _DTYPE_BY_NUMPY[array.dtype]
        out = self._out
        if torch_dtype.storage_class is not None:
            self._save_global("torch._utils", "_rebuild_tensor_v2")
            out += pickle.MARK
            self._save_storage_id("torch", torch_dtype.storage_class, key, array.size)
        else:
            self._save_global("torch._utils", "_rebuild_tensor_v3")
            out += pickle.MARK
            self._save_storage_id("torch.storage", "UntypedStorage", key, array.nbytes)
        self._save_int(0)  # storage offset
        self._save_int_tuple(array.shape)
        self._save_int_tuple(_contiguous_strides(array.shape))
        out += pickle.NEWFALSE  # requires_grad
        self._save_empty_ordered_dict()  # backward hooks
        if torch_dtype.storage_class is None:
            self._save_global("torch", torch_dtype.name)
        out += pickle.TUPLE + pickle.REDUCE

    def _save_storage_id(self, module: str, storage_class: str, key: str, numel: int) -> None:
        out = self._out
        out += pickle.MARK
        self._save_str("storage")
        self._save_global(module, storage_class)
        self._save_str(key)
        self._save_str("cpu")
        self._save_int(numel)
        out += pickle.TUPLE + pickle.BINPERSID

    def _storage_for(self, obj: Any) -> tuple[str, np.ndarray]:
        known = self._by_identity.get(id(obj))
        if known is not None:
            return known[0], known[1]
        array = np.asarray(obj)
        if array.dtype not in _DTYPE_BY_NUMPY and array.dtype.byteorder in "<>":
            array = array.astype(array.dtype.newbyteorder("="))  # non-native byte order
        if array.dtype not in _DTYPE_BY_NUMPY:
            supported = ", ".join(d.name for d in _TORCH_DTYPES)
            raise TypeError(
                f"cannot save an array of dtype {array.dtype} at {self._where()}; "
                f"supported dtypes: {supported}"
            )
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
        key = str(len(self.storages))
        self.storages.append((key, array))
        # Keep ``obj`` referenced so that its id cannot be reused by another object.
        self._by_identity[id(obj)] = (key, array, obj)
        return key, array


def _alignment_extra(header_offset: int, filename_length: int, zip64: bool) -> bytes:
    """A zip extra field that pads a local header so its data starts 64-byte aligned.

    Like torch, the padding is an extra field with id ``FB`` filled with ``Z``.
    zipfile appends a 20-byte zip64 field to the local header of large entries.
    """
    header_length = 30 + filename_length + 4 + (20 if zip64 else 0)
    padding = -(header_offset + header_length) % _STORAGE_ALIGNMENT
    return b"FB" + struct.pack("<H", padding) + b"Z" * padding


def _write_zip(file, folder: str, records: list[tuple[str, bytes | np.ndarray]]) -> None:
    fixed_time = (1980, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, payload in records:
            if isinstance(payload, np.ndarray):
                payload = memoryview(payload.reshape(-1).view(np.uint8))
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=fixed_time)
            info.file_size = len(payload)
            # The same rule zipfile applies, made explicit so the padding knows.
            zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT
            info.extra = _alignment_extra(file.tell(), len(info.filename.encode("utf-8")), zip64)
            with zf.open(info, mode="w", force_zip64=zip64) as entry:
                entry.write(payload)


def _default_folder_name(path: Path) -> str:
    # torch names the folder after the file's stem; fall back to its buffer name.
    stem = path.stem
    return stem if _valid_folder_name(stem) else "archive"


def _valid_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0\n")


def save_torch_file(
    path: str | os.PathLike, obj: Any, *, archive_name: str | None = None
) -> None:
    """Write ``obj`` as a checkpoint that ``torch.load(path, weights_only=True)`` reads.

    ``obj`` may nest dict (OrderedDict is kept; other dict subclasses are
    written as dict), list, tuple, str, int, float, bool, None and bytes, with
    numpy arrays (or objects with ``__array__``, e.g. ``jax.Array``) as
    tensors. Supported array dtypes are those of ``_TORCH_DTYPES`` (bool,
    (u)int8..64, float16/32/64, bfloat16, float8 variants, complex64/128).
    Arrays that are the same Python object share one storage, so tied weights
    load tied in torch; distinct arrays never share, even if one views the
    other.

    ``archive_name`` is the folder inside the zip; torch's default (the file
    name without its extension) is used when it is None.

    The write is atomic: a temporary file in the same directory is written,
    fsynced and renamed over ``path``. On any error nothing is left behind
    and an existing ``path`` is untouched.
    """
    path = Path(path)
    if archive_name is None:
        folder = _default_folder_name(path)
    elif _valid_folder_name(archive_name):
        folder = archive_name
    else:
        raise ValueError(f"archive_name {archive_name!r} is not a valid zip folder name")

    writer = _PickleWriter()
    data_pkl = writer.dumps(obj)  # type errors surface here, before any file exists
    records: list[tuple[str, bytes | np.ndarray]] = [
        ("data.pkl", data_pkl),
        (".format_version", b"1"),
        (".storage_alignment", str(_STORAGE_ALIGNMENT).encode()),
        ("byteorder", sys.byteorder.encode()),
        *((f"data/{key}", array) for key, array in writer.storages),
        ("version", b"3\n"),
        (".data/serialization_id", f"{secrets.randbelow(10**40):040d}".encode()),
    ]

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as file:
            _write_zip(file, folder, records)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; not possible (nor needed) on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
