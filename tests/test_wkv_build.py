"""The WKV native sources compile: the CPU module is built, the CUDA sources compile (nvcc).

CI builds with HIERARCHOS_CUDA=OFF, so these compiles are what catch a CUDA-side error there.
"""

from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

import jax
import nanobind
import pytest
from test_native_build import _find_nvcc

from hierarchos_jax import _wkv  # a build failure must fail, not skip

FFI_DIR = Path(__file__).resolve().parents[1] / "ffi"


def _run(cmd: list[str], out: Path) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"compile failed:\n{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert out.stat().st_size > 0


def test_cpu_module_registers_both_targets():
    assert sorted(_wkv.registrations()) == ["hierarchos_wkv_bwd_f32", "hierarchos_wkv_fwd_f32"]
    assert _wkv.PLATFORM == "cpu"


def test_wkv_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    out = tmp_path / "wkv_cuda.o"
    _run([
        nvcc, "-std=c++17", "-O2", "-c", str(FFI_DIR / "wkv_cuda.cu"),
        "-I", str(FFI_DIR), "-I", jax.ffi.include_dir(),
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_90,code=sm_90",
        "-Xcompiler", "-fPIC",
        "-o", str(out),
    ], out)


def test_wkv_cuda_module_compiles_with_host_compiler(tmp_path):
    """The nanobind side of _wkv_cuda (host code, no CUDA headers needed)."""
    cxx = sysconfig.get_config_var("CXX") or "c++"
    out = tmp_path / "wkv_cuda_module.o"
    _run([
        *cxx.split(), "-std=c++17", "-O1", "-fPIC", "-c", str(FFI_DIR / "wkv_cuda_module.cc"),
        "-I", str(FFI_DIR), "-isystem", jax.ffi.include_dir(),
        "-isystem", nanobind.include_dir(), "-isystem", sysconfig.get_paths()["include"],
        "-o", str(out),
    ], out)
