"""The reference fixture's tokenizer through our reader (no transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierarchos_jax.io.tokenizer import Tokenizer, TokenizerError


def test_fixture_tokenizer_reproduces_the_reference_prompt_ids(reference_case_dir):
    tok = Tokenizer(reference_case_dir / "model")
    case = json.loads((reference_case_dir / "case.json").read_text())
    gen = case["runs"]["gen"]
    assert tok.encode(gen["prompt_text"]) == gen["prompt_ids"]
    golden = np.load(reference_case_dir / "golden.npz")
    np.testing.assert_array_equal(golden["gen_prompt_ids"], gen["prompt_ids"])
    assert tok.decode(gen["prompt_ids"] + gen["generated_ids"]) == gen["decoded_text"]
    assert len(tok) == 512 and tok.eos_id == 0 and tok.pad_id == 0
    tok.check_vocab(512)
    with pytest.raises(TokenizerError, match="512 tokens but the model's vocab_size is 50257"):
        tok.check_vocab(50257)


def test_missing_tokenizer_is_one_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer(tmp_path)



def test_special_tokens_switch_and_batch_encoding(tmp_path):
    """A BOS-adding tokenizer: ``encode`` adds BOS by default and not with
    ``add_special_tokens=False``; ``encode_batch`` gives the same ids as one-by-one encoding."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<|endoftext|>": 1, "a": 2, "b": 3, "ab": 4, "Ġ": 5, "Ġa": 6}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("Ġ", "a")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = Tokenizer(tmp_path)
    assert tok.encode("ab a") == [0, 4, 6]
    assert tok.encode("ab a", add_special_tokens=False) == [4, 6]
    assert tok.eos_id == 1
    texts = ["ab", "a b", "", "ab a"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_special_tokens=False) == [
        tok.encode(t, add_special_tokens=False) for t in texts]
    assert tok.encode_batch([]) == []
