"""JAX operations on packed quantized weights.

* :func:`qmatmul` — ``x [..., K] @ dequantize(packed [N, bytes_per_row])^T -> [..., N]``.
* :func:`qembed` — row gather + dequantize: ``ids [...] -> [..., K]``.
* :func:`dequantize` — the whole matrix in XLA (``float32 [N, K]``).

On CPU the first two run the native kernels of ``hierarchos_jax._quant`` (XLA FFI custom
calls, AVX2+FMA when the CPU has it, threaded over output features / ids); on other
platforms (or when the native module is not built) they lower to dequantize + XLA dot /
gather. Both are ``vmap``-able: a batch axis of the activations or ids is folded into the
kernel's leading axes; a batched weight matrix falls back to a loop.

The kernel's thread count comes from ``HIERARCHOS_QUANT_THREADS`` (default 0 = every
hardware thread) or :func:`set_threads`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from hierarchos_jax.quant.formats import GGUF_QTYPES, Format, get_format

MATMUL_TARGET = "hierarchos_quant_matmul_f32"
EMBED_TARGET = "hierarchos_quant_embed_f32"

_registered: bool | None = None
_threads = int(os.environ.get("HIERARCHOS_QUANT_THREADS", "0") or 0)


def set_threads(n: int) -> None:
    """Threads used by later-compiled kernel calls (0 = all hardware threads)."""
    global _threads
    if int(n) < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    _threads = int(n)


def native_available() -> bool:
    """Register the CPU FFI targets once; False when ``hierarchos_jax._quant`` is not built."""
    global _registered
    if _registered is None:
        try:
            from hierarchos_jax import _quant
        except ImportError:
            _registered = False
        else:
            for name, capsule in _quant.registrations().items():
                jax.ffi.register_ffi_target(name, capsule, platform="cpu")
            _registered = True
    return _registered


# --- dequantization in XLA (any platform) --------------------------------------


def _f32_at(b: jax.Array, start: int) -> jax.Array:
    return jax.lax.bitcast_convert_type(b[..., start:start + 4], jnp.float32)


def dequantize(packed: jax.Array, qtype: str, k: int) -> jax.Array:
    """``uint8 [..., N, bytes_per_row] -> float32 [..., N, K]`` (same values as the NumPy
    reference up to XLA's choice of fusing Q2_K's ``q*step + dmin``)."""
    fmt = get_format(qtype)
    nb = fmt.bytes_per_row(k) // fmt.block_bytes
    lead = packed.shape[:-1]
    b = packed.reshape(*lead, nb, fmt.block_bytes)
    if fmt.name in GGUF_QTYPES:
        return _dequantize_gguf(b, fmt.name).reshape(*lead, k)
    d = _f32_at(b, 0)[..., None]
    if fmt.name == "REF_Q8_0":
        w = jax.lax.bitcast_convert_type(b[..., 4:], jnp.int8).astype(jnp.float32) * d
    elif fmt.name == "REF_Q2_K":
        dmin = _f32_at(b, 4)[..., None, None]
        sc = b[..., 8:16].astype(jnp.int32)
        s = jnp.stack([sc & 15, sc >> 4], axis=-1).reshape(*lead, nb, 16).astype(jnp.float32)
        step = (s / 15.0) * d
        qs = b[..., 24:88].astype(jnp.int32)
        q = jnp.stack([(qs >> (2 * i)) & 3 for i in range(4)], axis=-1).reshape(*lead, nb, 16, 16)
        w = (q.astype(jnp.float32) * step[..., None] + dmin).reshape(*lead, nb, 256)
    else:
        qs = b[..., 4:].astype(jnp.int32)
        nib = jnp.stack([qs & 15, qs >> 4], axis=-1).reshape(*lead, nb, 32)
        flip = 8 if fmt.name == "INT4" else 0
        w = ((nib ^ flip) - 8).astype(jnp.float32) * d
    return w.reshape(*lead, k)


def _f16_at(b: jax.Array, start: int) -> jax.Array:
    return jax.lax.bitcast_convert_type(b[..., start:start + 2], jnp.float16).astype(jnp.float32)


def _dequantize_gguf(b: jax.Array, name: str) -> jax.Array:
    """GGUF blocks ``uint8 [..., nb, block_bytes] -> float32 [..., nb, block]``."""
    if name == "Q8_0":
        return jax.lax.bitcast_convert_type(b[..., 2:], jnp.int8).astype(jnp.float32) * _f16_at(b, 0)[..., None]
    if name == "Q4_0":
        qs = b[..., 2:].astype(jnp.int32)
        code = jnp.concatenate([qs & 15, qs >> 4], axis=-1) - 8
        return code.astype(jnp.float32) * _f16_at(b, 0)[..., None]
    sc = b[..., :16].astype(jnp.int32)                                      # Q2_K
    dl = _f16_at(b, 80)[..., None] * (sc & 15).astype(jnp.float32)        # [..., nb, 16]
    ml = _f16_at(b, 82)[..., None] * (sc >> 4).astype(jnp.float32)
    qs = b[..., 16:80].astype(jnp.int32).reshape(*b.shape[:-1], 2, 1, 32)
    q = (qs >> jnp.array([0, 2, 4, 6]).reshape(4, 1)) & 3                   # [..., nb, 2, 4, 32]
    q = q.reshape(*b.shape[:-1], 16, 16).astype(jnp.float32)
    return (dl[..., None] * q - ml[..., None]).reshape(*b.shape[:-1], 256)


def _xla_matmul(x, packed, fmt: Format, k: int):
    w = dequantize(packed, fmt.name, k)
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


def _xla_embed(ids, packed, fmt: Format, k: int):
    rows = jnp.take(packed, ids, axis=0, mode="clip")
    return dequantize(rows, fmt.name, k)


# --- native kernels ------------------------------------------------------------


def _attrs(fmt: Format, scalar: bool) -> dict:
    return {"qtype": np.int64(fmt.code), "threads": np.int64(_threads), "scalar": np.int64(bool(scalar))}


def _ffi_matmul(x, packed, fmt: Format, scalar: bool):
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (packed.shape[0],), jnp.float32)
    return jax.ffi.ffi_call(MATMUL_TARGET, out)(x, packed, **_attrs(fmt, scalar))


def _ffi_embed(ids, packed, fmt: Format, k: int, scalar: bool):
    out = jax.ShapeDtypeStruct(ids.shape + (k,), jnp.float32)
    return jax.ffi.ffi_call(EMBED_TARGET, out)(ids, packed, **_attrs(fmt, scalar))


def _batched(op):
    """``op(batched_arg, packed)`` with a vmap rule that folds the batch axis of the first
    argument into the kernel's leading axes (one native call), looping only when the
    packed weights themselves are batched."""

    @jax.custom_batching.custom_vmap
    def f(a, packed):
        return op(a, packed)

    @f.def_vmap
    def _rule(axis_size, in_batched, a, packed):
        a_batched, w_batched = in_batched
        if not a_batched:
            a = jnp.broadcast_to(a, (axis_size,) + a.shape)
        if not w_batched:
            return f(a, packed), True
        return jax.lax.map(lambda aw: f(*aw), (a, packed)), True

    return f


def _platform_dependent(cpu, other, *args):
    if not native_available():
        return other(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=other)


def qmatmul(x: jax.Array, packed: jax.Array, qtype: str, *, scalar: bool = False) -> jax.Array:
    """``x [..., K] . W^T`` for packed ``W uint8 [N, bytes_per_row]`` -> float32 ``[..., N]``.
    ``K`` (a whole number of blocks) is read from ``x``; ``scalar`` forces the portable
    CPU path (tests)."""
    fmt = get_format(qtype)
    x = jnp.asarray(x, jnp.float32)
    k = x.shape[-1]
    want = fmt.bytes_per_row(k)
    if packed.ndim != 2 or packed.dtype != jnp.uint8 or packed.shape[1] != want:
        raise ValueError(f"{fmt.name} weights for K={k} must be uint8 [N, {want}], got {packed.dtype} "
                         f"{tuple(packed.shape)}")
    cpu = _batched(lambda a, w: _ffi_matmul(a, w, fmt, scalar))
    other = _batched(lambda a, w: _xla_matmul(a, w, fmt, k))
    return _platform_dependent(cpu, other, x, packed)


def qembed(ids: jax.Array, packed: jax.Array, qtype: str, k: int, *, scalar: bool = False) -> jax.Array:
    """Rows ``ids [...]`` of the packed table ``uint8 [V, bytes_per_row]``, dequantized:
    float32 ``[..., K]``. Out-of-range ids are clamped (as XLA's gather)."""
    fmt = get_format(qtype)
    want = fmt.bytes_per_row(k)
    if packed.ndim != 2 or packed.dtype != jnp.uint8 or packed.shape[1] != want:
        raise ValueError(f"{fmt.name} table for K={k} must be uint8 [V, {want}], got {packed.dtype} "
                         f"{tuple(packed.shape)}")
    ids = jnp.asarray(ids, jnp.int32)
    cpu = _batched(lambda i, w: _ffi_embed(i, w, fmt, k, scalar))
    other = _batched(lambda i, w: _xla_embed(i, w, fmt, k))
    return _platform_dependent(cpu, other, ids, packed)
