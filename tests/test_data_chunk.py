"""``hierarchos chunk`` (the reference's Kayla chunker, spec/training.md §11.2): MAX_SEQ_LENGTH, chunk
starts, label masks by hand, both output formats read back by the trainer's data pipeline."""

from __future__ import annotations

import argparse
import json

import numpy as np
from hierarchos_cli.main import main

from hierarchos_jax.data import add_data_args, build_train_data
from hierarchos_jax.data.kayla_chunks import effective_overlap
from hierarchos_jax.io.tokenizer import Tokenizer
from data_fixtures import _token_cache_in_tmp, tok, tok_dir  # noqa: F401  (pytest fixtures)

DIGITS = "".join(str(i % 10) for i in range(60))
RECORDS = [{"Instruction": "ab", "output": DIGITS, "thought-process": "t"},
           {"Instruction": "q", "feelings": "ok", "thought-process": "tt", "output": "y"}]


def n(s: str) -> int:
    return len(s.encode())


def expected_rows(mask_prompt=True):
    """Rows by hand: anchor, content window, EOS; labels -100 on anchor, prompt, overlap and EOS."""
    max_seq = n("### Thought Process:\ntt\n\n") + 16 + 30 + 1          # longest anchor + margin + reserved + 1
    rows = []
    for rec in RECORDS:
        anchor = f"### Thought Process:\n{rec['thought-process']}\n\n"
        prompt = f"### Instruction:\n{rec['Instruction']}\n\n" + (f"### Feelings:\n{rec['feelings']}\n\n"
                                                                   if rec.get("feelings") else "")
        stream = prompt + "### Response:\n" + rec["output"]
        avail = max_seq - n(anchor) - 1
        for k, start in enumerate(range(0, len(stream), avail - 10)):
            content = stream[start:start + avail]
            masked = [(mask_prompt and j < len(prompt) - start) or (k > 0 and j < 10) for j in range(len(content))]
            rows.append((anchor + content, [True] * n(anchor) + masked + [True]))
    return max_seq, rows


def test_chunk_cli_rows_by_hand_and_read_back(tok_dir, tmp_path, capsys):
    src = tmp_path / "kayla.jsonl"
    src.write_text("\n".join([json.dumps(RECORDS[0]), "{broken", json.dumps(RECORDS[1])]) + "\n")
    out = tmp_path / "chunks"
    rc = main(["chunk", "--dataset", str(src), "--tokenizer-path", str(tok_dir), "--overlap", "10",
               "--reserved-chunk-space", "30", "--output-dir", str(out), "--chunks-per-file", "2",
               "--output-format", "both", "--jsonl-shards", "2", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    max_seq, rows = expected_rows()
    assert max_seq == 72 and len(rows) == 5     # 60-digit answer: starts 0, 37, 74; second sample: 0, 36
    assert f"FINAL MAX_SEQ_LENGTH: {max_seq} tokens" in captured.out
    assert "skipped record kayla.jsonl:2: invalid JSON" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 5 and manifest["max_seq_length"] == 72 and len(manifest["shards"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks", "kayla.jsonl"]   # nothing half-written
    tok = Tokenizer(tok_dir)

    def check(store):
        assert len(store) == 5
        got = sorted((tok.decode(store[i].input_ids[:store[i].length]),
                      (store[i].labels[:store[i].length] == -100).tolist()) for i in range(5))
        want = sorted((text + "<|endoftext|>", mask) for text, mask in rows)
        assert got == want

    p = argparse.ArgumentParser()
    add_data_args(p)
    common = {"vocab_size": len(tok), "batch_size": 2, "seq_len": 72, "chunk_size": 8, "seed": 0, "progress": False}
    npy = build_train_data(p.parse_args(["--train", str(out)]), tok, **common)
    check(npy.store)
    jsonl = build_train_data(p.parse_args(["--pre-chunked-dataset", "--train", str(out)]), tok, **common)
    check(jsonl.store)
    # the same batches' contents either way: padded rows of the JSONL shards carry the pad id with mask 0
    b = next(npy.iterator())
    assert b["input_ids"].shape[1] % 8 == 0 and np.all(b["labels"][b["attention_mask"] == 0] == -100)


def test_overlap_reduction_and_errors(tok_dir, tmp_path, capsys):
    assert effective_overlap(1024) == 1024 and effective_overlap(2048) == 1024 and effective_overlap(40, 30) == 15
    assert main(["chunk", "--dataset", str(tmp_path / "missing.jsonl"), "--tokenizer-path", str(tok_dir),
                 "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hierarchos: error:") and "missing.jsonl" in err[0]
    assert not (tmp_path / "o").exists()
    (tmp_path / "notdir").mkdir()
    (tmp_path / "notdir" / "keep.txt").write_text("mine")
    (tmp_path / "k.jsonl").write_text(json.dumps(RECORDS[1]) + "\n")
    assert main(["chunk", "--dataset", str(tmp_path / "k.jsonl"), "--tokenizer-path", str(tok_dir),
                 "--output-dir", str(tmp_path / "notdir"), "--no-progress"]) == 1
    assert "is not a chunk directory" in capsys.readouterr().err
    assert (tmp_path / "notdir" / "keep.txt").read_text() == "mine"


def test_chunk_without_prompt_mask_as_the_reference_script(tok_dir, tmp_path):
    """The reference v0.21 script computes an always-empty prompt mask; --no-prompt-mask reproduces it."""
    src = tmp_path / "kayla.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    out = tmp_path / "chunks"
    assert main(["chunk", "--dataset", str(src), "--tokenizer-path", str(tok_dir), "--overlap", "10",
                 "--reserved-chunk-space", "30", "--output-dir", str(out), "--no-prompt-mask", "--no-progress"]) == 0
    tok = Tokenizer(tok_dir)
    p = argparse.ArgumentParser()
    add_data_args(p)
    data = build_train_data(p.parse_args(["--train", str(out)]), tok, vocab_size=len(tok), batch_size=2, seq_len=72,
                            chunk_size=8, seed=0, progress=False)
    got = sorted((tok.decode(data.store[i].input_ids), (data.store[i].labels == -100).tolist()) for i in range(5))
    assert got == sorted((text + "<|endoftext|>", mask) for text, mask in expected_rows(mask_prompt=False)[1])
    assert json.loads((out / "manifest.json").read_text())["prompt_masked"] is False
