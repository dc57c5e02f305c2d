"""Encoding with or without the tokenizer's special tokens (spec/training.md §2).

Prompts and plain texts are encoded with the tokenizer's default special-token behaviour (a
BOS-adding tokenizer adds BOS); response pieces without.
"""

from __future__ import annotations

from hierarchos_jax.io.tokenizer import Tokenizer


def encode(tokenizer: Tokenizer, text: str, *, special: bool = True) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=special)


def encode_batch(tokenizer: Tokenizer, texts: list[str], *, special: bool = True) -> list[list[int]]:
    """Many texts at once (the ``tokenizers`` library encodes them in parallel); same ids as :func:`encode`."""
    return tokenizer.encode_batch(texts, add_special_tokens=special)


def require_eos(tokenizer: Tokenizer) -> int:
    """The EOS id every formatted sequence ends with; a tokenizer without one is refused."""
    if tokenizer.eos_id is None:
        raise ValueError(f"tokenizer at {tokenizer.directory} has no end-of-text token "
                         f"({tokenizer.eos_token!r} is not in its vocabulary)")
    return int(tokenizer.eos_id)


def pad_id(tokenizer: Tokenizer) -> int:
    """The id the collator pads text rows with (pad, else EOS)."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    return int(pad) if pad is not None else 0
