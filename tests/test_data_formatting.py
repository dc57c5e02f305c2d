"""Record formatting (spec/training.md §3) against hand-computed expectations.

The tokenizer is byte-level BPE without merges (``hierarchos train-tokenizer --vocab-size 257``):
one token per UTF-8 byte, so token counts are byte counts of the spec's templates and decoding
gives back the rendered text.
"""

from __future__ import annotations

import numpy as np
import pytest

from hierarchos_jax.data.bpe import save_tokenizer_dir, train_bpe
from hierarchos_jax.data.formatting import Rejected, format_record, resolve_columns
from hierarchos_jax.data.options import FormatOptions
from hierarchos_jax.io.tokenizer import Tokenizer

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = save_tokenizer_dir(train_bpe(["abc"], vocab_size=257, show_progress=False),
                              tmp_path_factory.mktemp("tok") / "bytes")
    return Tokenizer(path)


@pytest.fixture(scope="module")
def bos_tok(tmp_path_factory):
    """The same bytes, plus a BOS that the tokenizer adds to every default-special encoding."""
    from tokenizers import processors

    t = train_bpe(["abc"], vocab_size=257, show_progress=False)
    t.add_special_tokens(["<s>"])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 257)])
    return Tokenizer(save_tokenizer_dir(t, tmp_path_factory.mktemp("tok") / "bos"))


def fmt(tok, record, max_length=512, **opts):
    return format_record(record, tok, max_length, FormatOptions(**opts))


def text_of(tok, ids):
    return tok.decode(ids)


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def test_byte_tokenizer_is_one_token_per_byte(tok):
    assert len(tok) == 257 and tok.eos_id == 0 and tok.pad_id == 0
    assert len(tok.encode("### Response:\né")) == nbytes("### Response:\né")


def test_text_record(tok):
    ex = fmt(tok, {"text": "hello world"})
    assert text_of(tok, ex.input_ids) == "hello world" + EOS
    np.testing.assert_array_equal(ex.labels, ex.input_ids)
    assert ex.loss_weights is None and len(ex) == 12


@pytest.mark.parametrize("record,rendered,prompt", [
    ({"instruction": "Add 2+2", "input": "  ctx  ", "output": "four"},
     "### Previous Context:\nctx\n\n### Instruction:\nAdd 2+2\n\n### Response:\nfour",
     "### Previous Context:\nctx\n\n### Instruction:\nAdd 2+2\n\n### Response:\n"),
    ({"instruction": "Add 2+2", "output": "four"},
     "### Instruction:\nAdd 2+2\n\n### Response:\nfour", "### Instruction:\nAdd 2+2\n\n### Response:\n"),
    ({"prompt": "Add 2+2", "completion": "four", "input": "x"},
     "User: x\n\nUser: Add 2+2\n\nAssistant: four", "User: x\n\nUser: Add 2+2\n\nAssistant: "),
    ({"question": "Add 2+2", "answer": "four"}, "User: Add 2+2\n\nAssistant: four", "User: Add 2+2\n\nAssistant: "),
])
def test_templates_and_prompt_masking(tok, record, rendered, prompt):
    ex = fmt(tok, record)
    assert text_of(tok, ex.input_ids) == rendered + EOS
    np.testing.assert_array_equal(ex.labels, ex.input_ids)  # default: every token is a target
    masked = fmt(tok, record, train_prompt_tokens=False)
    P = nbytes(prompt)
    assert np.all(masked.labels[:P] == -100) and np.array_equal(masked.labels[P:], ex.input_ids[P:])


def test_kayla_template(tok):
    rec = {"instruction": "Hi", "feelings": "calm", "thought-process": "think", "output": "yo"}
    ex = fmt(tok, rec, kayla=True)
    assert text_of(tok, ex.input_ids) == ("### Instruction:\nHi\n\n### Feelings:\ncalm\n\n### Thought Process:\n"
                                          "think\n\n### Response:\nyo" + EOS)
    # the thought process belongs to the response: boundary boost lands on its header
    w = fmt(tok, rec, kayla=True, response_boundary_tokens=3, response_boundary_loss_weight=4.0,
            prompt_loss_weight=0.5).loss_weights
    P = nbytes("### Instruction:\nHi\n\n### Feelings:\ncalm\n\n")
    np.testing.assert_allclose(w[:P], 0.5)
    np.testing.assert_allclose(w[P:P + 3], 4.0)
    np.testing.assert_allclose(w[P + 3:], 1.0)
    # missing feelings key: no block; whitespace-only feelings: block kept; null: the text "None"
    no_feel = fmt(tok, {"instruction": "Hi", "output": "yo"}, kayla=True)
    assert text_of(tok, no_feel.input_ids).startswith("### Instruction:\nHi\n\n### Thought Process:\n\n\n")
    blank = fmt(tok, {"instruction": "Hi", "feelings": "  ", "output": "yo"}, kayla=True)
    assert "### Feelings:\n  \n\n" in text_of(tok, blank.input_ids)
    null = fmt(tok, {"instruction": "Hi", "feelings": None, "output": "yo"}, kayla=True)
    assert "### Feelings:\nNone\n\n" in text_of(tok, null.input_ids)


def test_loss_weights_with_boundary(tok):
    # spec §3.5's example with bytes: prompt 0.1, response "four" = 4 tokens -> 2, 2, 1, 1, EOS 1
    rec = {"instruction": "Add 2+2", "output": "four"}
    ex = fmt(tok, rec, prompt_loss_weight=0.1, response_boundary_loss_weight=2.0, response_boundary_tokens=2)
    P = nbytes("### Instruction:\nAdd 2+2\n\n### Response:\n")
    expected = np.array([0.1] * P + [2, 2, 1, 1] + [1], np.float32)
    np.testing.assert_allclose(ex.loss_weights, expected)
    # never the EOS: 10 boundary tokens on a 1-token answer boost only that token
    ex = fmt(tok, {"instruction": "Q", "output": "a"}, response_boundary_tokens=10, response_boundary_loss_weight=3.0)
    np.testing.assert_allclose(ex.loss_weights[-2:], [3.0, 1.0])
    # masked prompt: prompt weight 0; defaults: no weights at all
    ex = fmt(tok, rec, prompt_loss_weight=0.1, train_prompt_tokens=False, response_loss_weight=0.5)
    np.testing.assert_allclose(ex.loss_weights, [0.0] * P + [0.5] * 5)
    assert fmt(tok, rec).loss_weights is None
    # boundary multiplier without boundary tokens is still "default"
    assert fmt(tok, rec, response_boundary_loss_weight=5.0).loss_weights is None
    # text mode: every position gets the response weight
    np.testing.assert_allclose(fmt(tok, {"text": "ab"}, response_loss_weight=0.25).loss_weights, [0.25] * 3)


def test_truncation_keeps_prompt_suffix_and_min_response(tok):
    # spec §3.4: M = 20, min_response_tokens = 4 -> the last 15 prompt tokens, 4 answer tokens + EOS
    rec = {"instruction": "a long instruction", "output": "the answer is long"}
    ex = fmt(tok, rec, max_length=20, min_response_tokens=4)
    prompt = "### Instruction:\na long instruction\n\n### Response:\n"
    assert len(ex) == 20
    assert text_of(tok, ex.input_ids) == prompt[-15:] + "the " + EOS
    np.testing.assert_array_equal(ex.labels, ex.input_ids)
    # response fits: the prompt gives way to the whole answer
    short = {"instruction": "a long instruction", "output": "ok"}
    ex = fmt(tok, short, max_length=20, min_response_tokens=4)
    assert text_of(tok, ex.input_ids) == prompt[-(20 - 3):] + "ok" + EOS
    # min_response_tokens 0: one slot (EOS) reserved
    ex = fmt(tok, rec, max_length=20, min_response_tokens=0)
    assert text_of(tok, ex.input_ids) == prompt[-19:] + EOS


def test_final_safety_truncation_in_text_mode(tok):
    ex = fmt(tok, {"text": "abcdefghij"}, max_length=5, response_loss_weight=0.5)
    assert text_of(tok, ex.input_ids) == "abcd" + EOS
    np.testing.assert_array_equal(ex.labels, ex.input_ids)
    np.testing.assert_allclose(ex.loss_weights, [0.5] * 5)


def test_null_and_blank_fields(tok):
    # JSON null output is the text "None" (reference quirk) and is trained
    ex = fmt(tok, {"instruction": "Q", "output": None})
    assert text_of(tok, ex.input_ids).endswith("### Response:\nNone" + EOS)
    # null text column does not count: the pair is used
    ex = fmt(tok, {"text": None, "instruction": "x", "output": "y"})
    assert text_of(tok, ex.input_ids) == "### Instruction:\nx\n\n### Response:\ny" + EOS
    assert isinstance(fmt(tok, {"instruction": "Q", "output": "  "}), Rejected)
    kept = fmt(tok, {"instruction": "Q", "output": "  "}, drop_empty_completions=False)
    assert text_of(tok, kept.input_ids).endswith("### Response:\n  " + EOS)
    assert isinstance(fmt(tok, {"instruction": "", "output": "", "input": " "}, drop_empty_completions=False),
                      Rejected)
    assert isinstance(fmt(tok, {"text": "   "}), Rejected)
    assert isinstance(fmt(tok, {"other": "x"}), Rejected)
    assert isinstance(fmt(tok, ["not", "a", "dict"]), Rejected)


def test_column_resolution_rules():
    o = FormatOptions
    assert resolve_columns({"instruction": "x", "output": "y"}, o(text_column="body", alpaca=True)) == ("body", None, None)
    assert resolve_columns({"text": "t"}, o(alpaca=True)) == (None, "instruction", "output")
    assert resolve_columns({}, o(prompt_column="q")) == (None, "q", None)
    assert resolve_columns({"text": " ", "content": "c"}, o()) == ("content", None, None)
    assert resolve_columns({"prompt": None, "completion": 0}, o()) == (None, "prompt", "completion")
    # case-sensitive: capital Instruction resolves through "output" (spec §3.1 quirk)
    assert resolve_columns({"Instruction": "a", "output": "b"}, o()) == (None, "instruction", "output")
    assert resolve_columns({"x": 1}, o()) == (None, None, None)


def test_custom_columns_and_one_sided_columns(tok):
    ex = fmt(tok, {"q": "2+2?", "a": "4"}, prompt_column="q", completion_column="a")
    assert text_of(tok, ex.input_ids) == "User: 2+2?\n\nAssistant: 4" + EOS
    assert isinstance(fmt(tok, {"q": "2+2?", "a": "4"}, prompt_column="q"), Rejected)
    # Alpaca template picked case-insensitively by column names
    ex = fmt(tok, {"Instruction": "I", "Output": "O"}, prompt_column="Instruction", completion_column="Output")
    assert text_of(tok, ex.input_ids) == "### Instruction:\nI\n\n### Response:\nO" + EOS


def test_bos_only_on_default_special_encodings(bos_tok):
    bos = bos_tok._tok.token_to_id("<s>")
    ex = fmt(bos_tok, {"instruction": "Q", "output": "A"})
    assert ex.input_ids[0] == bos and int(np.sum(ex.input_ids == bos)) == 1  # prompt only
    txt = fmt(bos_tok, {"text": "hi"})
    assert list(txt.input_ids) == [bos] + list(bos_tok._tok.encode("hi", add_special_tokens=False).ids) + [0]


def test_option_sanitising():
    o = FormatOptions(prompt_loss_weight="x", response_loss_weight=-2, response_boundary_loss_weight=float("nan"),
                      response_boundary_tokens="a", min_response_tokens=None)
    assert (o.prompt_loss_weight, o.response_loss_weight, o.response_boundary_loss_weight) == (1.0, 0.0, 0.0)
    assert o.response_boundary_tokens == 0 and o.min_response_tokens == 0
    assert FormatOptions(min_response_tokens="abc").min_response_tokens == 1
    assert FormatOptions(min_response_tokens=-3).min_response_tokens == 0
    assert FormatOptions(response_boundary_tokens=-1).response_boundary_tokens == 0
