"""Shared pytest fixtures for hierarchos-jax.

Only one global setting is made here: 64-bit mode stays off (float32 is the
parity dtype). Matmul precision is deliberately *not* set globally; tests that
need "highest" set it locally.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", False)

# <checkout>/tests/conftest.py -> parents[2] is the folder that holds the
# checkout, next to which the shared/ tree lives (the same in CI's fresh clone).
REFERENCE_TINY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference" / "tiny"


@pytest.fixture(scope="session")
def reference_case_dir() -> Path:
    """The tiny reference case: case.json, golden.npz and the PyTorch model/."""
    if not REFERENCE_TINY.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE_TINY}")
    return REFERENCE_TINY
