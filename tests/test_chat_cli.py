"""``hierarchos chat`` as a user runs it: piped stdin, and a pseudo-terminal with Ctrl+C
(SIGINT) in the middle of an answer and Ctrl+D at the prompt."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="module")
def model_dir(reference_case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "tiny"
    shutil.copytree(reference_case_dir / "model", out)
    for p in [out, *out.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The two runs compile the same programs: share them through JAX's persistent cache."""
    e = dict(os.environ)
    e.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")
    return e


def chat_argv(model_dir, *extra):
    return [sys.executable, "-m", "hierarchos_cli", "chat", "--model-path", str(model_dir), *extra]


def test_piped_conversation_with_every_bad_input_exits_cleanly(model_dir, env, tmp_path):
    script = "\n".join([
        "Hello", "", "   ", "/topp 0", "/temp -1", "/foo", "/tempx 0.5", "/topk abc", "/memory source=9",
        "/filter time=abc", "/load_memory " + str(tmp_path / "missing.safetensors"), "/topp 0.5", "Hi again",
        "/temp 0.7", "/status", "/settings",
    ]) + "\n"  # ends at EOF, no exit command
    # greedy, as the terminal test: both runs use one compiled program (shared through the cache)
    proc = subprocess.run(chat_argv(model_dir, "--max-new-tokens", "4", "--temperature", "0"), input=script,
                          capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out and ">>>" not in out
    for expected in ["Start-up check ('Hello'): next tokens",
                     "(empty line: type a message, /help, or exit)", "usage: /topp X with 0 < X <= 1",
                     "usage: /temp X with X a number >= 0", "unknown command /foo", "unknown command /tempx",
                     "usage: /topk N", "unknown source '9'", "bad argument 'time=abc'",
                     "could not load the memory", "top-p = 0.5", "temperature = 0.7", "turns 2,",
                     "temperature 0.7, top-k 40, top-p 0.5"]:
        assert expected in out, expected
    assert out.count("(empty line") == 2


def _read_until(fd, needle: bytes, buf: bytearray, timeout: float) -> bytes:
    end = time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {bytes(buf)[-800:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {needle!r}; got {bytes(buf)[-800:]!r}")
            buf.extend(chunk)
    i = buf.index(needle) + len(needle)
    seen = bytes(buf[:i])
    del buf[:i]
    return seen


def test_terminal_session_survives_ctrl_c_mid_answer_and_ends_on_ctrl_d(model_dir, env):
    master, slave = os.openpty()
    proc = subprocess.Popen(chat_argv(model_dir, "--max-new-tokens", "100000", "--temperature", "0",
                                      "--repetition-penalty", "1.0"),
                            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    buf = bytearray()
    try:
        _read_until(master, b">>> ", buf, 300)
        os.write(master, b"Tell me a long story\n")
        _read_until(master, b"Tell me a long story", buf, 30)  # the terminal's echo
        while len(buf) < 40:  # the answer is streaming
            ready, _, _ = select.select([master], [], [], 300)
            assert ready, "no answer streamed"
            buf.extend(os.read(master, 4096))
        proc.send_signal(signal.SIGINT)
        stopped = _read_until(master, b">>> ", buf, 120)
        assert b"(answer stopped)" in stopped and b"Traceback" not in stopped
        os.write(master, b"/status\n")
        status = _read_until(master, b">>> ", buf, 60)
        assert b"position " in status and b"turns 1," in status
        proc.send_signal(signal.SIGINT)  # at the prompt: a notice, the session goes on
        _read_until(master, b"Ctrl+D to quit", buf, 60)
        _read_until(master, b">>> ", buf, 60)  # as a user: Ctrl+D once the prompt is back
        os.write(master, b"\x04")  # Ctrl+D
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
