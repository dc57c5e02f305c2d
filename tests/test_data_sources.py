"""Data sources: local JSON/JSONL/CSV/Parquet/text, HF datasets (local; Hub offline/unreachable is one
error line), pre-tokenized (§3.6) and pre-chunked (§4.4) rows, consolidated chunk directories, the
refusal of reference .pt chunk directories, --auto-max-length (§3.7), malformed-record reporting."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from hierarchos_jax.data import build_train_data
from hierarchos_jax.data.consolidated import ChunkWriter
from hierarchos_jax.data.hub import load_hf_dataset
from hierarchos_jax.data.readers import Malformed, iter_records
from hierarchos_jax.data.sources import auto_max_length, load_source
from data_fixtures import _token_cache_in_tmp, parse, tok, tok_dir  # noqa: F401  (pytest fixtures)

RECORDS = [{"text": "alpha"}, {"instruction": "Q1", "output": "A1"}, {"prompt": "p", "completion": "c"}]


def load(tok, *argv, max_length=64):
    return load_source(parse(*argv), tok, max_length=max_length, progress=False)


def texts(tok, loaded):
    return [tok.decode(loaded.store[i].input_ids) for i in range(len(loaded.store))]


EXPECTED = ["alpha<|endoftext|>", "### Instruction:\nQ1\n\n### Response:\nA1<|endoftext|>",
            "User: p\n\nAssistant: c<|endoftext|>"]


def test_json_jsonl_csv_parquet_text_give_the_same_examples(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps(RECORDS))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    cols = ["text", "instruction", "output", "prompt", "completion"]
    rows = [",".join(f'"{r.get(c, "")}"' for c in cols) for r in RECORDS]
    (tmp_path / "a.csv").write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in RECORDS]), tmp_path / "a.parquet")
    for name in ("a.json", "a.jsonl", "a.csv", "a.parquet"):
        assert texts(tok, load(tok, "--train", str(tmp_path / name))) == EXPECTED, name
    (tmp_path / "b.txt").write_text("line one\n\n  \nline two\n")
    assert texts(tok, load(tok, "--train", str(tmp_path / "b.txt"))) == ["line one<|endoftext|>",
                                                                      "line two<|endoftext|>"]
    # a single JSON object is one record; a .json that is really JSON lines falls back to lines
    (tmp_path / "one.json").write_text(json.dumps(RECORDS[0]))
    assert texts(tok, load(tok, "--train", str(tmp_path / "one.json"))) == EXPECTED[:1]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in RECORDS))
    assert texts(tok, load(tok, "--train", str(tmp_path / "lines.json"))) == EXPECTED


def test_directory_of_files_sorted_and_manifest_excluded(tok, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "2.jsonl").write_text(json.dumps(RECORDS[2]) + "\n")
    (tmp_path / "1.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file_path": "x"}) + "\n")
    assert texts(tok, load(tok, "--train", str(tmp_path))) == [EXPECTED[0], EXPECTED[2]]


def test_malformed_rows_are_skipped_counted_and_reported(tok, tmp_path, capsys):
    lines = [json.dumps(RECORDS[0]), "{oops", "[1, 2]", json.dumps({"instruction": "q", "output": ""}),
             json.dumps({"nothing": 1}), "{also bad", "{bad again", json.dumps(RECORDS[1])]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    loaded = load(tok, "--train", str(tmp_path / "m.jsonl"))
    s = loaded.stats
    assert (s.records_read, s.examples, s.skipped) == (8, 2, 6)
    assert [w for w, _ in s.first_skipped] == [f"m.jsonl:{n}" for n in (2, 3, 4, 5, 6)]
    assert "invalid JSON" in s.first_skipped[0][1] and "not a JSON object" in s.first_skipped[1][1]
    assert s.reasons["invalid JSON"] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("hierarchos: warning: skipped record m.jsonl:") for line in err)
    assert "6 skipped" in s.summary()
    (tmp_path / "bad.csv").write_text("text,other\nfine,1\nbroken\n")
    loaded = load(tok, "--train", str(tmp_path / "bad.csv"))
    assert loaded.stats.skipped == 1 and "1 fields, the header has 2" in loaded.stats.first_skipped[0][1]


def test_bad_paths_are_one_line_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tok, "--train", str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported data file type '.xml'"):
        load(tok, "--train", str(tmp_path / "x.xml"))
    (tmp_path / "empty.jsonl").write_text("{bad\n")
    with pytest.raises(ValueError, match="no usable records"):
        load(tok, "--train", str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="no training data"):
        load(tok)


def test_local_hf_dataset_saved_to_disk(tok, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # keep ~/.cache clean
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[1:2] * 2),
                          "test": datasets.Dataset.from_list(RECORDS[:1])}).save_to_disk(tmp_path / "ds")
    assert texts(tok, load(tok, "--hf-dataset", str(tmp_path / "ds"))) == [EXPECTED[1]] * 2
    assert texts(tok, load(tok, "--hf_dataset", str(tmp_path / "ds"), "--hf_dataset_split", "test")) == EXPECTED[:1]
    with pytest.raises(ValueError, match="no split 'dev'"):
        load(tok, "--hf-dataset", str(tmp_path / "ds"), "--hf-dataset-split", "dev")
    # a single data file goes through the matching datasets builder (split slices work)
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    assert texts(tok, load(tok, "--hf-dataset", str(tmp_path / "f.jsonl"), "--hf-dataset-split", "train[1:]")) == \
        EXPECTED[1:]


def test_hub_name_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ValueError, match="Hub is offline") as e:
        load_hf_dataset("someone/some-dataset")
    assert time.time() - t0 < 2 and "\n" not in str(e.value)


def test_hub_unreachable_is_one_line_not_a_hang(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HOME": str(tmp_path)}
    code = ("from hierarchos_jax.data.hub import load_hf_dataset\n"
            "try:\n    load_hf_dataset('someone/some-dataset')\nexcept ValueError as e:\n    print('ERR', e)\n")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert time.time() - t0 < 40
    assert out.stdout.startswith("ERR --hf-dataset 'someone/some-dataset': cannot reach it on the Hugging Face Hub")
    assert out.stdout.count("\n") == 1


def test_reference_pt_chunk_dirs_are_refused(tok, tmp_path):
    ref = tmp_path / "ref_chunks"
    ref.mkdir()
    (ref / "manifest.jsonl").write_text(json.dumps({"file_path": "consolidated_chunks_0000000.pt",
                                                    "index_in_file": 0, "length": 3}) + "\n")
    (ref / "consolidated_chunks_0000000.pt").write_bytes(b"PK\x03\x04")
    for argv in (("--pre-pt-dataset", "--train", str(ref)), ("--train", str(ref)), ("--pre_pt_dataset", "--train",
                                                                                     str(ref / "x.pt"))):
        if argv[-1].endswith(".pt"):
            (ref / "x.pt").write_bytes(b"")
        with pytest.raises(ValueError, match="re-create it with 'hierarchos chunk") as e:
            load(tok, *argv)
        assert "\n" not in str(e.value)


def _prechunked_row(n_real, total, pad=50):
    ids = list(range(1, n_real + 1)) + [pad] * (total - n_real)
    return {"input_ids": ids, "labels": ids[:n_real] + [-100] * (total - n_real),
            "attention_mask": [1] * n_real + [0] * (total - n_real)}


def test_prechunked_rows_exact_length_and_stored_padding(tok, tmp_path):
    d = tmp_path / "pc"
    d.mkdir()
    rows = [_prechunked_row(5, 12), _prechunked_row(3, 11), _prechunked_row(9, 12), {"input_ids": [1] * 12},
            _prechunked_row(0, 12)]
    (d / "chunked_shard_00000.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = parse("--pre-chunked-dataset", "--train", str(d))
    loaded = load_source(args, tok, max_length=12, progress=False)
    assert loaded.stats.examples == 2 and loaded.stats.skipped == 3
    reasons = [r for _, r in loaded.stats.first_skipped]
    assert "of 11 tokens (--max-length is 12)" in reasons[0] and "without labels, attention_mask" in reasons[1]
    assert "all-zero attention mask" in reasons[2]
    data = build_train_data(args, tok, vocab_size=len(tok), batch_size=2, seq_len=12, chunk_size=8, seed=0,
                            progress=False)
    b = next(data.iterator())
    order = np.argsort(-b["attention_mask"].sum(1))
    ids = b["input_ids"][order]
    # width 9 (longest effective length) padded to 16; the short row copies its stored padding (50) up to
    # the width, then the chunk padding is id 0
    np.testing.assert_array_equal(ids[0], list(range(1, 10)) + [0] * 7)
    np.testing.assert_array_equal(ids[1], [1, 2, 3, 4, 5, 50, 50, 50, 50] + [0] * 7)
    assert b["attention_mask"].sum() == 14 and np.all(b["labels"][order][1, 5:] == -100)


def test_pretokenized_jsonl_rows(tok, tmp_path):
    rows = [{"input_ids": [3, 4, 5, 6], "labels": [-100, 4], "loss_weights": [0.5]},
            {"input_ids": [7, 8, 9], "attention_mask": [1, 1, 0], "_length": None, "length": 3},
            {"input_ids": [], "text": "hi"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load(tok, "--train", str(tmp_path / "p.jsonl"), max_length=3)
    a, b, c = (loaded.store[i] for i in range(3))
    assert a.input_ids.tolist() == [3, 4, 5] and a.labels.tolist() == [-100, 4, -100]
    np.testing.assert_allclose(a.loss_weights, [0.5, 1.0, 1.0])
    # "_length": null shadows "length": effective length from the mask
    assert b.length == 2 and tok.decode(c.input_ids) == "hi<|endoftext|>"


def test_consolidated_directory_read_back(tok, tmp_path):
    with ChunkWriter(tmp_path / "chunks", rows_per_shard=2, meta={"pad_id": 0, "max_seq_length": 6}) as w:
        for n in (2, 5, 3, 4, 1):
            w.add(np.arange(1, n + 1), np.r_[[-100], np.arange(2, n + 1)])
        w.commit()
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["chunks"]   # no temporary leftovers
    loaded = load(tok, "--train", str(tmp_path / "chunks"))
    assert loaded.preserve_order and loaded.store.lengths.tolist() == [2, 5, 3, 4, 1]
    assert loaded.store[3].input_ids.tolist() == [1, 2, 3, 4] and loaded.store[3].labels.tolist() == [-100, 2, 3, 4]
    (tmp_path / "chunks" / "shard_00001.labels.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="shard shard_00001 is missing or unreadable"):
        load(tok, "--pre-pt-dataset", "--train", str(tmp_path / "chunks"))


def test_supervision_audit_refuses_masked_labels_in_prompt_mode(tok, tmp_path):
    with ChunkWriter(tmp_path / "c", meta={"pad_id": 0}) as w:
        w.add([1, 2, 3], [-100, 2, 3])
        w.commit()
    common = {"vocab_size": len(tok), "batch_size": 1, "seq_len": 8, "chunk_size": 4, "seed": 0, "progress": False}
    with pytest.raises(ValueError, match="have label -100 although prompt tokens are trained"):
        build_train_data(parse("--kayla", "--train", str(tmp_path / "c")), tok, **common)
    build_train_data(parse("--kayla", "--allow-masked-active-labels", "--train", str(tmp_path / "c")), tok, **common)
    build_train_data(parse("--train", str(tmp_path / "c")), tok, **common)


def test_auto_max_length(tok, tmp_path):
    assert auto_max_length(1) == 24 and auto_max_length(8) == 24 and auto_max_length(9) == 32
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": "x" * n}) for n in (3, 40)) + "\n")
    loaded = load(tok, "--auto-max-length", "--train", str(tmp_path / "a.jsonl"), max_length=8)
    assert loaded.max_length == auto_max_length(41) == 64 and loaded.store.lengths.tolist() == [4, 41]


def test_iter_records_yields_malformed_markers(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n\nnot json\n')
    out = list(iter_records(tmp_path / "x.jsonl"))
    assert out[0] == ("x.jsonl:1", {"a": 1}) and isinstance(out[1][1], Malformed) and out[1][0] == "x.jsonl:3"


def test_tokenizer_source_resolution(tok, tmp_path):
    from hierarchos_jax.data.tokenizer_source import load_tokenizer
    from hierarchos_jax.io.tokenizer import TokenizerError

    ns = argparse.Namespace
    assert load_tokenizer(ns(tokenizer_path=str(tok.directory))).directory == tok.directory
    # a model file -> its directory; a directory with one tokenizer sub-directory -> that one
    model = tmp_path / "model"
    model.mkdir()
    (model / "hierarchos.pt").write_bytes(b"")
    shutil.copytree(tok.directory, model / "tok")
    assert load_tokenizer(ns(model_path=str(model / "hierarchos.pt"))).directory == model / "tok"
    assert load_tokenizer(ns(model_path=None, resume_from_ckpt=str(model))).directory == model / "tok"
    with pytest.raises(TokenizerError, match="pass --tokenizer-path"):
        load_tokenizer(ns())
    with pytest.raises(TokenizerError, match="not Hub names"):
        load_tokenizer(ns(tokenizer_path="openai-community/gpt2"))


def test_token_cache_hit_gives_the_same_batches_and_stats(tok, tmp_path, capsys):
    lines = [json.dumps({"instruction": f"q{i}", "output": "a" * (i % 7 + 1)}) for i in range(40)] + ["{bad"]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    argv = ("--train", str(tmp_path / "d.jsonl"), "--local-token-cache-dir", str(cache), "--prompt-loss-weight", "0.5")
    common = {"vocab_size": len(tok), "batch_size": 4, "seq_len": 32, "chunk_size": 8, "seed": 1}

    def batches(*extra, progress=False):
        data = build_train_data(parse(*argv, *extra), tok, progress=progress, **common)
        it = data.iterator()
        return data, [next(it) for _ in range(15)]

    fresh, a = batches()
    assert [p.name.startswith("local-") for p in cache.iterdir()] == [True]
    capsys.readouterr()
    hit, b = batches(progress=True)
    assert "data: token cache" in capsys.readouterr().err
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    assert hit.stats.as_dict() == fresh.stats.as_dict() and hit.stats.skipped == 1
    assert hit.num_tokens == fresh.num_tokens and hit.max_length == 32
    # other options or other data: another cache entry; --no-local-token-cache writes nothing
    batches("--mask-prompt-tokens")
    assert len(list(cache.iterdir())) == 2
    (tmp_path / "d.jsonl").write_text("\n".join(lines[:10]) + "\n")
    assert batches()[0].num_examples == 10 and len(list(cache.iterdir())) == 3
    shutil.rmtree(cache)
    batches("--no-local-token-cache")
    assert not cache.exists()
    # a damaged cache is rebuilt
    batches()
    (entry,) = cache.iterdir()
    (entry / "shard_00000.input_ids.npy").write_bytes(b"broken")
    assert batches()[0].num_examples == 10
    assert np.load(entry / "shard_00000.input_ids.npy").size > 0
