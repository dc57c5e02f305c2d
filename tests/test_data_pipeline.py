"""Batches: collation (spec/training.md §4.3), length bucketing (§4.8), ROSA ids on the host, per-seed
determinism, batches per epoch, and exact resume from the iterator state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierarchos_jax.data import build_train_data, has_data_args
from hierarchos_jax.data.bucketing import bucket_window, epoch_batches
from hierarchos_jax.data.collate import collate
from hierarchos_jax.data.examples import Example, ExampleStore
from data_fixtures import _token_cache_in_tmp, parse, tok, tok_dir  # noqa: F401  (pytest fixtures)
from hierarchos_jax.model.rosa import rosa_ids_for_padded


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """37 text records of lengths 1..37 bytes (+ EOS), one malformed line and one blank record."""
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    lines = [json.dumps({"text": "abcdefghij"[i % 10] * (i + 1)}) for i in range(37)]
    lines.insert(5, "{broken")
    lines.insert(9, json.dumps({"text": "  "}))
    path.write_text("\n".join(lines) + "\n")
    return path


def build(tok, path, *argv, batch_size=4, seq_len=64, chunk_size=16, seed=0, **kw):
    return build_train_data(parse("--train", str(path), *argv), tok, vocab_size=len(tok), batch_size=batch_size,
                            seq_len=seq_len, chunk_size=chunk_size, seed=seed, progress=False, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True))


def test_collate_pads_per_spec():
    rows = [Example(np.array([5, 6, 7], np.int32), np.array([5, -100, 7], np.int32)),
            Example(np.array([8], np.int32), np.array([8], np.int32), np.array([0.5], np.float32)),
            # a pre-chunked row stored padded: effective length 2, stored padding id 9
            Example(np.array([1, 2], np.int32), np.array([1, 2], np.int32), None, None, 9, 2)]
    b = collate(rows, pad_id=3, chunk_size=4)
    assert all(v.shape == (3, 4) for v in b.values())
    np.testing.assert_array_equal(b["input_ids"], [[5, 6, 7, 0], [8, 3, 3, 0], [1, 2, 9, 0]])
    np.testing.assert_array_equal(b["labels"], [[5, -100, 7, -100], [8, -100, -100, -100], [1, 2, -100, -100]])
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(b["loss_weights"], [[1, 1, 1, 0], [0.5, 0, 0, 0], [1, 1, 0, 0]])
    assert b["input_ids"].dtype == np.int32 and b["loss_weights"].dtype == np.float32
    assert collate(rows[:1], pad_id=3, chunk_size=2)["input_ids"].shape == (1, 4)


def test_bucket_window_rounding():
    assert bucket_window(3, 7) == 6 and bucket_window(3, 2) == 3 and bucket_window(4, None) == 200


@pytest.mark.parametrize("preserve_order", [False, True])
def test_length_bucketing_invariants(preserve_order):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, size=103)
    B, Wb = 4, 20
    plans = [epoch_batches(lengths, B, seed=7, epoch=e, window=Wb, preserve_order=preserve_order) for e in range(3)]
    for batches in plans:
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(103))           # every example once per epoch
        assert len(batches) == 26 and sum(len(b) < B for b in batches) == 1
        for b in batches:                                           # within a batch: longest first
            assert np.all(np.diff(lengths[b]) <= 0)
    # batches are drawn from length-sorted windows of Wb: each batch lies in one window
    if preserve_order:
        for b in plans[0]:
            assert len({int(i) // Wb for i in b}) == 1
    assert [b.tolist() for b in plans[0]] != [b.tolist() for b in plans[1]]   # reshuffled per epoch
    again = epoch_batches(lengths, B, seed=7, epoch=1, window=Wb, preserve_order=preserve_order)
    assert [b.tolist() for b in again] == [b.tolist() for b in plans[1]]     # a function of (seed, epoch)
    # bucketing lowers padding against a plain shuffle
    pad = lambda bs: sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)
    plain = epoch_batches(lengths, B, seed=7, epoch=0, bucketing=False)
    assert pad(plans[0]) < pad(plain)


def test_pipeline_batches_shapes_rosa_and_epoch_count(tok, corpus):
    data = build(tok, corpus)
    assert data.stats.records_read == 39 and data.stats.examples == 37 and data.stats.skipped == 2
    assert [w for w, _ in data.stats.first_skipped] == ["corpus.jsonl:6", "corpus.jsonl:10"]
    assert data.batches_per_epoch == 10 and data.num_examples == 37
    it = data.iterator()
    epoch = take(it, 10)
    lengths = []
    for b in epoch:
        B, T = b["input_ids"].shape
        assert T % 16 == 0 and B in (4, 1)
        assert {k: v.dtype.name for k, v in b.items()} == {"input_ids": "int32", "labels": "int32",
                                                           "attention_mask": "int32", "loss_weights": "float32",
                                                           "rosa_ids": "int32"}
        real = b["attention_mask"].sum(1)
        assert T == -(-real.max() // 16) * 16
        np.testing.assert_array_equal(b["rosa_ids"], rosa_ids_for_padded(b["input_ids"], attention_mask=b[
            "attention_mask"], vocab_size=len(tok)))
        assert np.all(b["rosa_ids"][b["attention_mask"] == 0] == len(tok))
        ids = b["input_ids"]
        for r in range(B):  # each row: its text + EOS, then pad (EOS = 0)
            n = real[r]
            assert ids[r, n - 1] == tok.eos_id and np.array_equal(b["labels"][r, :n], ids[r, :n])
            assert np.all(b["labels"][r, n:] == -100)
            lengths.append(int(n))
    assert sorted(lengths) == [i + 2 for i in range(37)]   # one epoch = every example once
    assert it.epoch == 1 and it.step_in_epoch == 0


def test_seed_determinism(tok, corpus):
    a = take(build(tok, corpus, seed=3).iterator(), 12)
    b = take(build(tok, corpus, seed=3).iterator(), 12)
    c = take(build(tok, corpus, seed=4).iterator(), 12)
    assert same(a, b) and not same(a, c)


@pytest.mark.parametrize("threads", ["0", "2"])
def test_state_restore_continues_the_same_batches(tok, corpus, threads):
    data = build(tok, corpus, "--length-bucket-size", "8", "--num-workers", threads, batch_size=3)
    assert data.batches_per_epoch == 13
    it = data.iterator()
    take(it, 11)
    state = json.loads(json.dumps(it.get_state()))   # JSON-serialisable
    assert state["next_index"] == 11 and state["epoch"] == 0 and state["step"] == 11
    expected = take(it, 9)                            # crosses into epoch 1
    fresh = build(tok, corpus, "--length-bucket-size", "8", "--num-workers", threads, batch_size=3).iterator()
    fresh.set_state(state)
    assert same(take(fresh, 9), expected)
    assert fresh.epoch == 1 and fresh.step_in_epoch == 7
    other = build(tok, corpus, batch_size=5).iterator()
    with pytest.raises(ValueError, match="batch_size: saved 3, now 5"):
        other.set_state(state)


def test_no_bucketing_and_batch_of_one(tok, corpus):
    data = build(tok, corpus, "--no-length-bucketing", batch_size=1)
    assert data.batches_per_epoch == 37
    rows = take(data.iterator(), 37)
    assert sorted(int(b["attention_mask"].sum()) for b in rows) == [i + 2 for i in range(37)]


def test_custom_weights_flow_into_batches(tok, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"instruction": "Q", "output": "ab"}) + "\n")
    b = next(build(tok, path, "--prompt-loss-weight", "0.25", batch_size=1, chunk_size=8).iterator())
    P = len("### Instruction:\nQ\n\n### Response:\n")
    np.testing.assert_allclose(b["loss_weights"][0, :P + 3], [0.25] * P + [1, 1, 1])
    assert np.all(b["loss_weights"][0, P + 3:] == 0)


def test_store_round_trip():
    rows = [Example(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32)) for n in (3, 1, 4)]
    store = ExampleStore.from_examples(rows, pad_id=7)
    assert len(store) == 3 and store.num_tokens == 8 and store.lengths.tolist() == [3, 1, 4]
    assert store[2].input_ids.tolist() == [0, 1, 2, 3] and store[1].fill_id == 7 and store.loss_weights is None


def test_has_data_args_and_help_parses():
    assert not has_data_args(parse())
    assert has_data_args(parse("--train", "x.jsonl")) and has_data_args(parse("--hf_dataset", "x"))
    a = parse("--mask-prompt-tokens", "--allow-empty-completions", "--response_boundary_tokens", "3",
              "--pre_chunked_dataset", "--hf-token-cache-dir", "/tmp", "--no-hf-token-cache", "--num_workers", "0")
    assert (a.train_prompt_tokens, a.drop_empty_completions, a.response_boundary_tokens, a.pre_chunked_dataset,
            a.num_workers) == (False, False, 3, True, 0)
    with pytest.raises(SystemExit):
        parse("--kayla", "--alpaca")
