"""The chat's learned memory: metadata, queries by time and source, retrieval views, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierarchos_jax.infer.memory import ELIGIBLE, MemoryBank, MemoryFileError, MemoryFilter
from hierarchos_jax.model.ltm import WorkingMemory, retrieve_topk


def _bank():
    bank = MemoryBank(6, 4, fingerprint="abc")
    rng = np.random.default_rng(0)
    fast = rng.normal(size=(1, 6, 4)).astype(np.float32)
    sources = np.array([[1, 1, 3, 0, 2, 0]], np.int32)
    mem = WorkingMemory(fast, np.zeros_like(fast), np.zeros((1, 6), np.float32), sources)
    bank.commit(mem, [True, True, False, False, False, False], now=100.0)
    bank.commit(mem, [False, True, True, False, True, False], now=200.0)
    return bank


def test_commit_stamps_touched_slots_and_queries_filter_them():
    bank = _bank()
    np.testing.assert_array_equal(bank.written_at, [100, 200, 200, 0, 200, 0])
    np.testing.assert_array_equal(bank.writes, [1, 2, 1, 0, 1, 0])
    assert [r.slot for r in bank.query()] == [1, 2, 4, 0]  # newest first, stable
    assert [r.slot for r in bank.query(source=1)] == [1, 0]
    assert [r.slot for r in bank.query(source=3)] == [2]
    assert [r.slot for r in bank.query(since=150)] == [1, 2, 4]
    assert [r.slot for r in bank.query(until=150)] == [0]
    assert len(bank.query(limit=2)) == 2
    assert bank.summary()["by_source"] == {"unknown": 0, "user": 2, "training": 1, "correction": 1}
    rec = bank.query(source=3)[0]
    assert rec.source_name == "correction" and rec.fast_norm == pytest.approx(np.linalg.norm(bank.fast[2]))


def test_retrieval_view_masks_ineligible_slots_only():
    bank = _bank()
    keys = np.eye(6, 3, dtype=np.float32)
    query = np.ones((2, 3), np.float32)
    view, flt = bank.retrieval_view(MemoryFilter())
    assert flt == ELIGIBLE and np.all(view.sources == ELIGIBLE)
    plain = retrieve_topk(keys, np.zeros((6, 4), np.float32), bank.memory, query, 2)
    same = retrieve_topk(keys, np.zeros((6, 4), np.float32), view, query, 2, source_filter=flt)
    for x, y in zip(plain, same):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    view, flt = bank.retrieval_view(MemoryFilter(since=150, source=1))
    assert flt == ELIGIBLE
    np.testing.assert_array_equal(view.sources[0] == ELIGIBLE, [False, True, False, False, False, False])
    np.testing.assert_array_equal(view.fast, bank.memory.fast)
    # the model's retrieval then reads slot 1 only
    got = retrieve_topk(keys, np.zeros((6, 4), np.float32), view, query, 2, source_filter=flt)
    np.testing.assert_array_equal(np.asarray(got.idx), [[1, -1], [1, -1]])


def test_save_and_load_round_trip(tmp_path):
    bank = _bank()
    path = tmp_path / "sub" / "mem.safetensors"
    bank.save(path)
    info = json.loads((tmp_path / "sub" / "mem.safetensors.json").read_text())
    assert info["written_slots"] == 4 and info["keys_fingerprint"] == "abc"
    assert not list((tmp_path / "sub").glob(".*tmp*"))
    other = MemoryBank(6, 4, fingerprint="abc")
    other.load(path)
    for name in ("fast", "timestamps", "sources"):
        np.testing.assert_array_equal(getattr(other.memory, name), getattr(bank.memory, name))
    assert not np.any(other.memory.mom)  # momentum restarts at zero
    np.testing.assert_array_equal(other.written_at, bank.written_at)
    np.testing.assert_array_equal(other.writes, bank.writes)
    assert [r.slot for r in other.query(source=1)] == [1, 0] and not other.changed


def test_bad_memory_files_are_one_line_errors(tmp_path):
    bank = _bank()
    path = tmp_path / "mem.safetensors"
    bank.save(path)
    with pytest.raises(MemoryFileError, match="another model"):
        MemoryBank(6, 4, fingerprint="xyz").load(path)
    with pytest.raises(MemoryFileError, match="shape"):
        MemoryBank(5, 4, fingerprint="abc").load(path)
    with pytest.raises(MemoryFileError, match="no such"):
        bank.load(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"not a safetensors file")
    with pytest.raises(MemoryFileError, match="not a readable"):
        bank.load(tmp_path / "junk")
