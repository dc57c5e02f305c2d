"""Exact resume: a run SIGKILLed after a checkpoint and started again with the same command
reproduces the uninterrupted run's per-step losses and final weights bit for bit (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

from hierarchos_jax.train.records import read_metrics, step_lines

STEPS, SAVE_EVERY = 16, 4
ARGS = ["train", "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--keep-checkpoints", "2",
        "--batch-size", "2", "--max-length", "16", "--heldout-problems", "0", "--seed", "3",
        "--ltm-training-mode", "read-only", "--no-progress"]


def _env(cache):
    env = dict(os.environ)
    # Later runs reuse the first run's compiled executables (same programs, faster start).
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _cmd(out):
    return [sys.executable, "-m", "hierarchos_cli", *ARGS, "--out-dir", str(out)]


def test_sigkill_then_rerun_reproduces_the_uninterrupted_run(tmp_path):
    env = _env(tmp_path / "xla_cache")
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.run(_cmd(full), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    victim = subprocess.Popen(_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / str(2 * SAVE_EVERY)      # a committed step dir appears atomically
    deadline = time.time() + 300
    while not target.is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model").exists()

    again = subprocess.run(_cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout + again.stderr

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
