"""Streaming detokenization: pieces add up to the full decode; stop strings are held back."""

from __future__ import annotations

import numpy as np

from hierarchos_jax.infer.detokenize import TextStream
from hierarchos_jax.io.tokenizer import Tokenizer


def test_pieces_add_up_to_the_full_decode(reference_case_dir):
    tok = Tokenizer(reference_case_dir / "model")
    rng = np.random.default_rng(0)
    for _ in range(200):  # random ids: many split / invalid UTF-8 sequences
        ids = [int(i) for i in rng.integers(0, len(tok), rng.integers(1, 40))]
        stream = TextStream(tok)
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True) == stream.text


def test_stop_string_is_never_emitted(reference_case_dir):
    tok = Tokenizer(reference_case_dir / "model")
    text = "Hello world, this is a test of the stream. Ünïcödé ✓ done"
    ids = tok.encode(text)
    stream = TextStream(tok, ["is a", "zzz"])
    pieces = [stream.push(i) for i in ids]
    shown = "".join(pieces) + stream.flush()
    assert shown == stream.text == text[:text.index("is a")]
    assert stream.stop_index == text.index("is a")
    # a possible start of a stop string is held back, then released when it does not complete
    stream = TextStream(tok, ["world peace"])
    shown, held = "", False
    for i in ids:
        shown += stream.push(i)
        if stream.text.rstrip().endswith("world"):
            held = held or "world" not in shown
    assert held and shown + stream.flush() == text and stream.stop_index is None
