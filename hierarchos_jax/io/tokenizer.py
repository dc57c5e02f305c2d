"""Tokenizers of model directories (``tokenizer.json`` + ``tokenizer_config.json``).

The reference saves HuggingFace fast tokenizers; ``tokenizer.json`` is the portable part and is
read here with the ``tokenizers`` library (no ``transformers`` needed). The end-of-text token
comes from ``tokenizer_config.json`` (``eos_token``); as in the reference CLI, a tokenizer
without a pad token pads with its eos token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class TokenizerError(ValueError):
    """A tokenizer directory is missing or unreadable."""


def find_tokenizer_dir(path: str | os.PathLike) -> Path:
    """The directory holding ``tokenizer.json``: ``path`` itself or its single sub-directory."""
    path = Path(path)
    if path.is_file() and path.name == "tokenizer.json":
        return path.parent
    if (path / "tokenizer.json").is_file():
        return path
    nested = [p for p in path.iterdir() if p.is_dir() and (p / "tokenizer.json").is_file()] if path.is_dir() else []
    if len(nested) == 1:
        return nested[0]
    raise TokenizerError(f"{path}: no tokenizer.json here (nor in a single sub-directory)")


class Tokenizer:
    """Text <-> token ids, with the ids the model needs (eos, pad) and the vocabulary size."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer as _HFTokenizer

        self.directory = find_tokenizer_dir(path)
        try:
            self._tok = _HFTokenizer.from_file(str(self.directory / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a plain Exception subclass
            raise TokenizerError(f"{self.directory / 'tokenizer.json'}: cannot read ({e})") from None
        config_path = self.directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.eos_token = _token_text(config.get("eos_token")) or "<|endoftext|>"
        self.eos_id = self._tok.token_to_id(self.eos_token)
        pad = _token_text(config.get("pad_token"))
        self.pad_id = self._tok.token_to_id(pad) if pad else self.eos_id

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens=False`` skips the template's BOS/EOS
        (a literal special-token text such as ``<|endoftext|>`` still becomes its id)."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts, *, add_special_tokens: bool = True) -> list[list[int]]:
        """:meth:`encode` of many texts at once (``tokenizers`` encodes them in parallel)."""
        texts = list(texts)
        if not texts:
            return []
        return [list(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def check_vocab(self, vocab_size: int) -> None:
        """The model's vocabulary must match the tokenizer's (the reference refuses otherwise)."""
        if len(self) != vocab_size:
            raise TokenizerError(f"tokenizer at {self.directory} has {len(self)} tokens but the model's "
                                 f"vocab_size is {vocab_size}")


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        return value.get("content")
    return value
