"""Exact resume: a run SIGKILLed after a checkpoint and started again with the same command
reproduces the uninterrupted run's per-step losses and final weights bit for bit (CPU).

``reference_run`` (also used by tests/test_train_checkpoint.py) is one uninterrupted run,
made once per session; every subprocess shares a persistent XLA cache, so only the first
one compiles the train step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

from hierarchos_jax.train.records import read_metrics, step_lines

STEPS, SAVE_EVERY = 8, 2
ARGS = ["train", "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--keep-checkpoints", "2",
        "--batch-size", "2", "--max-length", "16", "--heldout-problems", "0", "--seed", "3",
        "--ltm-training-mode", "read-only", "--no-progress"]


def cli_env(tmp_path_factory) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "h1_xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def train_cmd(out, args=ARGS) -> list[str]:
    return [sys.executable, "-m", "hierarchos_cli", *args, "--out-dir", str(out)]


def run_train(tmp_path_factory, out, args=ARGS) -> subprocess.CompletedProcess:
    """``hierarchos train ARGS --out-dir OUT`` in a subprocess; must succeed."""
    r = subprocess.run(train_cmd(out, args), env=cli_env(tmp_path_factory), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def reference_run(tmp_path_factory):
    """The uninterrupted run (made once per test session)."""
    out = tmp_path_factory.getbasetemp() / "h1_reference_run"
    if not (out / "model").is_dir():
        run_train(tmp_path_factory, out)
    return out


def test_sigkill_then_rerun_reproduces_the_uninterrupted_run(tmp_path, tmp_path_factory):
    full = reference_run(tmp_path_factory)
    killed = tmp_path / "killed"
    victim = subprocess.Popen(train_cmd(killed), env=cli_env(tmp_path_factory), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / str(2 * SAVE_EVERY)      # a committed step dir appears atomically
    deadline = time.time() + 300
    while not target.is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model").exists()

    again = run_train(tmp_path_factory, killed)
    assert "resuming from" in again.stdout

    want = step_lines(read_metrics(full))
    got = step_lines(read_metrics(killed))
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]        # bit for bit (JSON keeps float repr)
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in want]
    assert [r["lr"] for r in got] == [r["lr"] for r in want]
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # keep-last-2: only the two newest committed steps remain, no temporary directories
    assert sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name != "tokenizer") == \
        [str(STEPS - SAVE_EVERY), str(STEPS)]
