"""The native XLA FFI module builds, registers with jax and computes fc_m correctly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FFI_DIR = REPO / "ffi"
TARGET = "hierarchos_finite_clamp_f32"

from hierarchos_jax import _native  # noqa: E402  (a build failure must fail, not skip)


def fc_oracle(x: np.ndarray, m: float) -> np.ndarray:
    """Reference fc_m: torch.nan_to_num(x, 0, m, -m).clamp(-m, m), in numpy."""
    x = np.asarray(x, np.float32)
    m = np.float32(m)
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=m, neginf=-m), -m, m).astype(np.float32)


def assert_matches_oracle(got: np.ndarray, x: np.ndarray, m: float) -> None:
    """Exact match, except that subnormal inputs may come out as 0.

    XLA runs its CPU (and GPU) computations with denormals flushed to zero
    (FTZ/DAZ), so a subnormal input is read as 0 inside an FFI handler, just as
    it is by XLA's own ops; the oracle above runs in numpy without flushing.
    """
    want = fc_oracle(x, m)
    x = np.asarray(x, np.float32)
    sub = (x != 0) & (np.abs(x) < np.finfo(np.float32).tiny)
    flushed = fc_oracle(np.where(sub, np.float32(0), x), m)
    ok = (got == want) | (sub & (got == flushed))
    if not ok.all():
        np.testing.assert_array_equal(got, want)


_registered: set[str] = set()


def _register(platform: str, module) -> None:
    if platform in _registered:
        return
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform=platform)
    _registered.add(platform)


def finite_clamp_ffi(x: jax.Array, m: float) -> jax.Array:
    return jax.ffi.ffi_call(
        TARGET,
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        vmap_method="broadcast_all",
    )(x, m=np.float32(m))


def special_values(rng: np.random.Generator) -> np.ndarray:
    vals = np.array(
        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 3.0, -3.0,
         1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, 1e30, -1e30],
        dtype=np.float32,
    )
    noise = (rng.standard_normal(237) * 10).astype(np.float32)
    return np.concatenate([vals, noise])


def test_registrations_are_capsules():
    regs = _native.registrations()
    assert isinstance(regs, dict)
    assert TARGET in regs
    assert type(regs[TARGET]).__name__ == "PyCapsule"


@pytest.mark.parametrize("m", [3.0, 0.5, 1e30, np.inf, 0.0])
def test_header_scalar_matches_oracle(m):
    xs = special_values(np.random.default_rng(0))
    got = np.array([_native.finite_clamp(float(v), float(m)) for v in xs], np.float32)
    np.testing.assert_array_equal(got, fc_oracle(xs, m))


@pytest.mark.parametrize("m", [3.0, 12.0, 0.25, np.inf])
@pytest.mark.parametrize("shape", [(256,), (4, 64), (2, 2, 64)])
def test_cpu_ffi_matches_oracle(m, shape):
    _register("cpu", _native)
    xs = special_values(np.random.default_rng(1))
    x = xs[: int(np.prod(shape))].reshape(shape)
    with jax.default_device(jax.devices("cpu")[0]):
        got = np.asarray(jax.jit(finite_clamp_ffi, static_argnums=1)(jnp.asarray(x), m))
    assert_matches_oracle(got, x, m)
    assert np.isfinite(got).all() or not np.isfinite(m)


def test_cpu_ffi_edge_shapes_and_vmap():
    _register("cpu", _native)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        scalar = np.float32(np.nan)
        assert float(finite_clamp_ffi(jnp.asarray(scalar), 2.0)) == 0.0
        empty = finite_clamp_ffi(jnp.zeros((0, 3), jnp.float32), 2.0)
        assert empty.shape == (0, 3)
        x = special_values(np.random.default_rng(2))[:240].reshape(8, 30)
        got = jax.vmap(lambda r: finite_clamp_ffi(r, 5.0))(jnp.asarray(x))
        assert_matches_oracle(np.asarray(got), x, 5.0)


def _gpu_devices():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


def test_cuda_ffi_matches_oracle():
    if not _gpu_devices():
        pytest.skip("no GPU visible to jax")
    try:
        from hierarchos_jax import _native_cuda
    except ImportError:
        pytest.skip("hierarchos_jax._native_cuda not built (HIERARCHOS_CUDA=OFF or no nvcc at build time)")
    _register("CUDA", _native_cuda)
    xs = special_values(np.random.default_rng(3))
    x = np.concatenate([xs] * 400).reshape(-1, 64)  # > one block-stride of work
    with jax.default_device(_gpu_devices()[0]):
        got = np.asarray(jax.jit(finite_clamp_ffi, static_argnums=1)(jnp.asarray(x), 4.0))
    assert_matches_oracle(got, x, 4.0)


def _find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def test_cuda_source_compiles_with_nvcc(tmp_path):
    """Catches CUDA compile errors on machines without a GPU (CI)."""
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    cmd = [
        nvcc, "-std=c++17", "-O2", "-c", str(FFI_DIR / "cuda_ops.cu"),
        "-I", str(FFI_DIR), "-I", jax.ffi.include_dir(),
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_90,code=sm_90",
        "-Xcompiler", "-fPIC",
        "-o", str(tmp_path / "cuda_ops.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "cuda_ops.o").stat().st_size > 0
