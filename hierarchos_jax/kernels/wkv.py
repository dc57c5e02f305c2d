"""The RWKV-7 WKV state step: pure-JAX oracle, fused XLA FFI kernel, dispatch.

One step of one head (value index ``i`` = row, key index ``j`` = column; spec/model.md §3
step 11)::

    d_j   = exp(-exp(clip(w_j, -60, 30)))
    S'_ij = S_ij d_j + (sum_l S_il a_l) b_j + v_i k_j
    y_i   = sum_j S'_ij r_j

``wkv_step(S, r, w, k, v, a, b) -> (y, S')`` takes the matrix state ``S [..., H, N, N]`` and
float32 vectors ``[..., H, N]`` (any leading axes: rows, heads, vmapped axes) and returns
the readout ``y [..., H, N]`` and the new, unclamped state. It runs one of

* ``"jax"``: :func:`wkv_reference`, the oracle (plain jnp ops, autodiff);
* ``"ffi"``: the fused kernel (``ffi/wkv_math.h``) registered as the XLA FFI targets
  ``hierarchos_wkv_{fwd,bwd}_f32`` for the CPU (``hierarchos_jax._wkv``) and CUDA
  (``hierarchos_jax._wkv_cuda``) platforms, with a hand-written backward through
  ``jax.custom_vjp``; ``vmap`` folds the mapped axis into the kernel's leading axes.

The choice is ``impl=`` if given, else the ``HIERARCHOS_WKV`` environment variable
(``jax`` | ``ffi`` | ``auto``, default ``auto``), read when the caller is traced. ``auto``
takes the FFI kernel on a GPU when the CUDA module is built and the choice in
:data:`AUTO_IMPL` elsewhere (measured with ``benchmarks/bench_wkv.py``).
"""

from __future__ import annotations

import importlib
import os

import jax
import jax.numpy as jnp

ENV_VAR = "HIERARCHOS_WKV"
MODES = ("jax", "ffi", "auto")
FWD_TARGET = "hierarchos_wkv_fwd_f32"
BWD_TARGET = "hierarchos_wkv_bwd_f32"

# What "auto" runs per jax platform when the platform's FFI module is available.
# CPU: the XLA-fused oracle beat the FFI target at every measured size on the 2-core
# build machine (see benchmarks/bench_wkv.py and the H7 report), so it stays on jax.
AUTO_IMPL = {"cpu": "jax", "cuda": "ffi"}

# jax platform name -> the nanobind module holding that platform's FFI handlers.
_MODULES = {"cpu": ("hierarchos_jax._wkv", "cpu"), "cuda": ("hierarchos_jax._wkv_cuda", "CUDA")}
_registered: dict[str, bool] = {}


def wkv_reference(S, r, w, k, v, a, b):
    """The pure-JAX oracle of the WKV step (the model's original formulation)."""
    decay = jnp.exp(-jnp.exp(jnp.clip(w, -60.0, 30.0)))
    sa = jnp.einsum("...ij,...j->...i", S, a)
    S = S * decay[..., None, :] + sa[..., None] * b[..., None, :] + v[..., None] * k[..., None, :]
    y = jnp.einsum("...ij,...j->...i", S, r)
    return y, S


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


def _ffi_forward(S, r, w, k, v, a, b):
    vec = jax.ShapeDtypeStruct(r.shape, jnp.float32)
    state = jax.ShapeDtypeStruct(S.shape, jnp.float32)
    return jax.ffi.ffi_call(FWD_TARGET, (vec, state), vmap_method="broadcast_all")(
        S, r, w, k, v, a, b
    )


def _ffi_backward(S, r, w, k, v, a, b, gy, gS):
    vec = jax.ShapeDtypeStruct(r.shape, jnp.float32)
    state = jax.ShapeDtypeStruct(S.shape, jnp.float32)
    return jax.ffi.ffi_call(BWD_TARGET, (state,) + (vec,) * 6, vmap_method="broadcast_all")(
        S, r, w, k, v, a, b, gy, gS
    )


@jax.custom_vjp
def wkv_ffi(S, r, w, k, v, a, b):
    """The fused kernel (float32 inputs of matching leading axes), differentiable."""
    return tuple(_ffi_forward(S, r, w, k, v, a, b))


def _wkv_ffi_fwd(S, r, w, k, v, a, b):
    return wkv_ffi(S, r, w, k, v, a, b), (S, r, w, k, v, a, b)


def _wkv_ffi_bwd(res, cotangents):
    gy, gS = cotangents
    return tuple(_ffi_backward(*res, gy, gS))


wkv_ffi.defvjp(_wkv_ffi_fwd, _wkv_ffi_bwd)


def wkv_step(S, r, w, k, v, a, b, *, impl: str | None = None):
    """One WKV step, ``(y [..., H, N], S' [..., H, N, N])``, by the dispatch rule above.

    Inputs are cast to float32; the vectors are broadcast to the state's leading axes.
    """
    S = jnp.asarray(S, jnp.float32)
    lead = S.shape[:-1]
    r, w, k, v, a, b = (jnp.broadcast_to(jnp.asarray(t, jnp.float32), lead) for t in (r, w, k, v, a, b))
    if resolve_impl(impl) == "ffi":
        return wkv_ffi(S, r, w, k, v, a, b)
    return wkv_reference(S, r, w, k, v, a, b)
