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

