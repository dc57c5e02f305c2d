"""The RWKV-7 WKV state step: pure-JAX oracle, fused XLA FFI kernel, dispatch.

One step of one head (value index ``i`` = row, key index ``j`` = column; spec/model.md §3
step 11)::

    d_j   = exp(-exp(clip(w_j, -60, 30)))
    S'_ij = S_ij d_j + (sum_l S_il a_l) b_j + v_i k_j
    y_i   = sum_j S'_ij r_j                     (the unclamped new state)

The kernel works on the cell's packed state (``hierarchos_jax.model.rwkv``): ``P [..., H,
N, 3 + N]`` is ``[B, W, 3 + N]`` viewed per head, each row ``[slot0, slot1, slot2,
S_i0..S_i(N-1)]``. ``wkv_step(P, r, w, k, v, a, b, clip=m) -> (y, P')`` reads ``S`` from
``P[..., 3:]``, writes ``clip(S', -m, m)`` there and passes the three slots through
unchanged (the cell overwrites them with its new token-shift values); the vectors are
float32 ``[..., H, N]`` with any leading axes (rows, heads, vmapped axes). It runs one of

* ``"jax"``: :func:`wkv_packed_reference`, the oracle (plain jnp ops, autodiff);
* ``"ffi"``: the fused kernel (``ffi/wkv_math.h``) registered as the XLA FFI targets
  ``hierarchos_wkv_{fwd,bwd}_f32`` for the CPU (``hierarchos_jax._wkv``) and CUDA
  (``hierarchos_jax._wkv_cuda``) platforms, with a hand-written backward through
  ``jax.custom_vjp``; ``vmap`` folds the mapped axis into the kernel's leading axes. One
  pass reads the packed state and one writes it (``P'`` reuses ``P``'s buffer when ``P``
  dies there).

The choice is ``impl=`` if given, else the ``HIERARCHOS_WKV`` environment variable
(``jax`` | ``ffi`` | ``auto``, default ``auto``), read when the caller is traced. ``auto``
takes the FFI kernel where :data:`AUTO_IMPL` says so for the platform and its module is
built (measured with ``benchmarks/bench_wkv.py``), else the oracle.
"""

from __future__ import annotations

import functools
import importlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

ENV_VAR = "HIERARCHOS_WKV"
MODES = ("jax", "ffi", "auto")
FWD_TARGET = "hierarchos_wkv_fwd_f32"
BWD_TARGET = "hierarchos_wkv_bwd_f32"
SLOTS = 3  # packed-state slots before the matrix row (see hierarchos_jax.model.rwkv)

# What "auto" runs per jax platform when the platform's FFI module is available.
# CPU (2-core EPYC build VM, heavily shared): the FFI step alone is 1-10x faster than the
# oracle (bench_wkv.py, forward and forward+backward), but inside the RWKV cell the
# forward is a tie (W=448 B=1: ~170-180 us per token-step either way) and the
# forward+backward gains (1.5-4x) did not reproduce run to run on the loaded machine; the
# oracle also keeps CPU results bit-identical to the goldens. So CPU stays on jax until a
# quiet machine says otherwise (HIERARCHOS_WKV=ffi opts in). CUDA: the fused kernel.
AUTO_IMPL = {"cpu": "jax", "cuda": "ffi"}

# jax platform name -> the nanobind module holding that platform's FFI handlers.
_MODULES = {"cpu": ("hierarchos_jax._wkv", "cpu"), "cuda": ("hierarchos_jax._wkv_cuda", "CUDA")}
_registered: dict[str, bool] = {}


def wkv_reference(S, r, w, k, v, a, b):
    """The pure-JAX oracle of the WKV step on a plain state ``S [..., N, N]``: ``(y, S')``."""
    decay = jnp.exp(-jnp.exp(jnp.clip(w, -60.0, 30.0)))
    sa = jnp.einsum("...ij,...j->...i", S, a)
    S = S * decay[..., None, :] + sa[..., None] * b[..., None, :] + v[..., None] * k[..., None, :]
    y = jnp.einsum("...ij,...j->...i", S, r)
    return y, S


def wkv_packed_reference(P, r, w, k, v, a, b, clip: float = math.inf):
    """The oracle on the packed state ``P [..., N, 3 + N]``: ``(y, P')`` as the kernel."""
    y, S = wkv_reference(P[..., SLOTS:], r, w, k, v, a, b)
    return y, jnp.concatenate([P[..., :SLOTS], jnp.clip(S, -clip, clip)], axis=-1)


def ffi_available(platform: str) -> bool:
    """Whether the FFI targets are built and registered for ``platform`` ("cpu"/"cuda")."""
    platform = platform.lower()
    if platform == "gpu":
        platform = "cuda"
    if platform not in _registered:
        ok = False
        if platform in _MODULES:
            name, xla_platform = _MODULES[platform]
            try:
                module = importlib.import_module(name)
            except ImportError:
                module = None
            if module is not None:
                for target, capsule in module.registrations().items():
                    jax.ffi.register_ffi_target(target, capsule, platform=xla_platform)
                ok = True
        _registered[platform] = ok
    return _registered[platform]


def resolve_impl(impl: str | None = None, platform: str | None = None) -> str:
    """``"jax"`` or ``"ffi"``: what :func:`wkv_step` runs for ``impl`` on ``platform``.

    ``impl=None`` reads ``HIERARCHOS_WKV``; ``platform=None`` is jax's default backend.
    ``"ffi"`` without a built module for the platform is an error (one line).
    """
    mode = (impl if impl is not None else os.environ.get(ENV_VAR, "auto")).strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(MODES)}; got {mode!r}")
    platform = (platform or jax.default_backend()).lower()
    platform = "cuda" if platform == "gpu" else platform
    if mode == "jax":
        return "jax"
    if mode == "ffi":
        if not ffi_available(platform):
            raise ValueError(
                f"WKV FFI kernel requested ({ENV_VAR}=ffi) but no FFI module is built for "
                f"platform {platform!r} (rebuild with `pip install -e .`; CUDA needs nvcc)"
            )
        return "ffi"
    if AUTO_IMPL.get(platform, "jax") == "ffi" and ffi_available(platform):
        return "ffi"
    return "jax"


def _ffi_forward(P, r, w, k, v, a, b, clip):
    vec = jax.ShapeDtypeStruct(r.shape, jnp.float32)
    state = jax.ShapeDtypeStruct(P.shape, jnp.float32)
    # P' may overwrite P (every row is read before it is written): no copy when P dies here.
    return jax.ffi.ffi_call(
        FWD_TARGET, (vec, state), vmap_method="broadcast_all", input_output_aliases={0: 1}
    )(P, r, w, k, v, a, b, clip=np.float32(clip))


def _ffi_backward(P, r, w, k, v, a, b, gy, gP, clip):
    vec = jax.ShapeDtypeStruct(r.shape, jnp.float32)
    state = jax.ShapeDtypeStruct(P.shape, jnp.float32)
    # The packed-state cotangent out may overwrite the one in, as P' does P above.
    return jax.ffi.ffi_call(
        BWD_TARGET, (state,) + (vec,) * 6, vmap_method="broadcast_all", input_output_aliases={8: 0}
    )(P, r, w, k, v, a, b, gy, gP, clip=np.float32(clip))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def wkv_packed_ffi(P, r, w, k, v, a, b, clip: float = math.inf):
    """The fused kernel on the packed state (float32, matching leading axes), differentiable."""
    return tuple(_ffi_forward(P, r, w, k, v, a, b, clip))


def _wkv_ffi_fwd(P, r, w, k, v, a, b, clip):
    return wkv_packed_ffi(P, r, w, k, v, a, b, clip), (P, r, w, k, v, a, b)


def _wkv_ffi_bwd(clip, res, cotangents):
    gy, gP = cotangents
    return tuple(_ffi_backward(*res, gy, gP, clip))


wkv_packed_ffi.defvjp(_wkv_ffi_fwd, _wkv_ffi_bwd)


def wkv_step(P, r, w, k, v, a, b, *, clip: float = math.inf, impl: str | None = None):
    """One WKV step on the packed state: ``(y [..., H, N], P' [..., H, N, 3 + N])``.

    Inputs are cast to float32; the vectors are broadcast to the state's leading axes.
    """
    P = jnp.asarray(P, jnp.float32)
    if P.ndim < 2 or P.shape[-1] != P.shape[-2] + SLOTS:
        raise ValueError(f"packed WKV state must be [..., N, N + {SLOTS}], got {P.shape}")
    lead = P.shape[:-1]
    r, w, k, v, a, b = (jnp.broadcast_to(jnp.asarray(t, jnp.float32), lead) for t in (r, w, k, v, a, b))
    if resolve_impl(impl) == "ffi":
        return wkv_packed_ffi(P, r, w, k, v, a, b, float(clip))
    return wkv_packed_reference(P, r, w, k, v, a, b, clip)
