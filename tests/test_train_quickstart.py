"""A tiny model learns the embedded synthetic task, and the run's outputs are usable."""

from __future__ import annotations

import json

import numpy as np

from hierarchos_jax.io.model_dir import load_model_dir
from hierarchos_jax.io.tokenizer import Tokenizer
from hierarchos_jax.train import synthetic
from hierarchos_jax.train.loop import TrainArgs, train_synthetic


def test_synthetic_task_is_deterministic_and_holds_out_problems():
    task = synthetic.AdditionTask()
    a = next(synthetic.batches(task, batch_size=2, seq_len=32, seed=5))
    b = next(synthetic.batches(task, batch_size=2, seq_len=32, seed=5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ids, labels, mask = a
    assert ((labels == -100) | (mask == 1)).all()          # padding is never supervised
    held = set(task.heldout_problems(50))
    assert all(task.is_heldout(*p) for p in held)
    rng = np.random.default_rng(0)
    assert not any(task.sample(rng) in held for _ in range(2000))


def test_tiny_model_learns_and_saves_an_inference_dir(tmp_path):
    # 60 updates of 16 x 48 tokens: the loss falls by well over 0.5 nats (about 2.2 -> 1.5).
    s = train_synthetic(TrainArgs(out_dir=str(tmp_path), steps=60, eval_problems=8, progress=False, samples=1),
                        log=lambda *_: None)
    assert s["loss_end"] < s["loss_start"] - 0.5, s
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 60
    for key in ("step", "loss", "ce", "z_loss", "ponder", "commitment", "lr", "grad_norm", "tokens_per_s"):
        assert key in lines[0]
    loaded = load_model_dir(tmp_path / "model")
    assert loaded.config.vocab_size == synthetic.CharCodec().vocab_size
    tok = Tokenizer(tmp_path / "model")
    assert tok.eos_token == "<|endoftext|>" and tok.eos_id == 0
    assert tok.decode(tok.encode("12+3=51")) == "12+3=51"
