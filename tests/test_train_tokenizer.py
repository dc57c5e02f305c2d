"""``hierarchos train-tokenizer``: a byte-level BPE that our Tokenizer (and HF's fast tokenizer class)
load, GPT-2 conventions (EOS = pad), exact round trips, learned merges, one-line errors."""

from __future__ import annotations

import json

import pytest
from hierarchos_cli.main import main

from hierarchos_jax.data.bpe import EOS
from hierarchos_jax.io.tokenizer import Tokenizer

TEXTS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "ünïcødé and émojis 🙂"]


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS * 20) + "\n{bad\n")
    (tmp_path / "b.csv").write_text("instruction,output\nsay hi,hello there\n")
    return tmp_path


def test_train_tokenizer_round_trip(corpus, capsys):
    out = corpus / "tok"
    assert main(["train-tokenizer", "--data", str(corpus / "d"), str(corpus / "b.csv"), "--vocab-size", "300",
                 "--out-dir", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped record a.jsonl:81: invalid JSON" in captured.err
    tok = Tokenizer(out)
    assert f"wrote a {len(tok)}-token" in captured.out
    assert 290 <= len(tok) <= 300 and tok.eos_id == tok.pad_id == 0 and tok.eos_token == EOS
    for text in TEXTS + ["### Instruction:\nsay hi\n\n### Response:\nhello there", "unseen ✓ text\t\n"]:
        assert tok.decode(tok.encode(text)) == text
    # merges were learned: frequent words take fewer tokens than bytes
    assert len(tok.encode("the cat sat on the mat")) < len(b"the cat sat on the mat")
    assert tok.encode(EOS) == [0]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == EOS and "pad_token" not in config
    assert sorted(p.name for p in corpus.iterdir()) == ["b.csv", "d", "tok"]   # no temporary leftovers


def test_train_tokenizer_loads_in_transformers(corpus):
    transformers = pytest.importorskip("transformers")
    out = corpus / "tok"
    assert main(["train-tokenizer", "--data", str(corpus / "d"), "--vocab-size", "280", "--out-dir", str(out),
                 "--no-progress"]) == 0
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    ours = Tokenizer(out)
    assert hf.eos_token_id == ours.eos_id and len(hf) == len(ours) <= 280
    assert hf.encode("the cat and a dog") == ours.encode("the cat and a dog")


@pytest.mark.parametrize("argv,message", [
    (["--vocab-size", "100"], "--vocab-size must be at least 257"),
    (["--data", "MISSING.jsonl"], "no such file or directory"),
])
def test_train_tokenizer_errors_are_one_line(corpus, capsys, argv, message):
    base = {"--data": str(corpus / "d"), "--vocab-size": "300", "--out-dir": str(corpus / "tok")}
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        base[k] = str(corpus / v) if v.endswith(".jsonl") else v
    assert main(["train-tokenizer", *[x for kv in base.items() for x in kv], "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (corpus / "tok").exists()
