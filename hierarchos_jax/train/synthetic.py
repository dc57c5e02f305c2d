"""The embedded default task: multi-digit addition in text, generated on the fly.

A problem is ``"{a}+{b}={answer}"`` followed by the end-of-text token. By default the
answer is written least-significant digit first (``"12+345=753"`` means 12 + 345 = 357):
that is the order in which the carries are computed, which makes the task algorithmic
rather than a look-up and lets a tiny recurrent model learn it in minutes. Everything is
deterministic from a seed; a fixed, hash-defined ~10 % of the operand pairs are held out
and never appear in training batches.

The tokenizer is character level (a ``tokenizers`` WordLevel model over single
characters), saved as ``tokenizer.json`` + ``tokenizer_config.json`` so
:class:`hierarchos_jax.io.tokenizer.Tokenizer` reads it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import numpy as np

EOS = "<|endoftext|>"
CHARS = "0123456789+="
IGNORE = -100


# ---------------------------------------------------------------- tokenizer

def build_tokenizer():
    """The task's character-level ``tokenizers.Tokenizer`` (id 0 = ``<|endoftext|>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {EOS: 0}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS])
    return tok


def save_tokenizer(directory) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": EOS, "pad_token": EOS, "model_max_length": 1024,
         "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    return d


class CharCodec:
    """Fast encode/decode for the task alphabet (same ids as :func:`build_tokenizer`)."""

    def __init__(self):
        self.eos_id = 0
        self._to_id = {ch: i + 1 for i, ch in enumerate(CHARS)}
        self._to_ch = {i + 1: ch for i, ch in enumerate(CHARS)}
        self.vocab_size = len(CHARS) + 1

    def encode(self, text: str) -> list[int]:
        return [self._to_id[c] for c in text]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                out.append(EOS)
            else:
                out.append(self._to_ch.get(i, "?"))
        return "".join(out)


# ---------------------------------------------------------------- problems

@dataclasses.dataclass(frozen=True)
class AdditionTask:
    min_digits: int = 1
    max_digits: int = 2
    reverse_answer: bool = True
    heldout_percent: int = 10

    def answer(self, a: int, b: int) -> str:
        s = str(a + b)
        return s[::-1] if self.reverse_answer else s

    def prompt(self, a: int, b: int) -> str:
        return f"{a}+{b}="

    def is_heldout(self, a: int, b: int) -> bool:
        h = (a * 1_000_003 + b * 998_244_353 + 12_345) % 1_000_000_007
        return (h * 2_654_435_761 >> 7) % 100 < self.heldout_percent

    def _operand(self, rng: np.random.Generator) -> int:
        nd = int(rng.integers(self.min_digits, self.max_digits + 1))
        lo = 0 if nd == 1 else 10 ** (nd - 1)
        return int(rng.integers(lo, 10 ** nd))

    def sample(self, rng: np.random.Generator, *, heldout: bool = False) -> tuple[int, int]:
        while True:
            a, b = self._operand(rng), self._operand(rng)
            if self.is_heldout(a, b) == heldout:
                return a, b

    def heldout_problems(self, n: int, seed: int = 1234) -> list[tuple[int, int]]:
        """``n`` distinct held-out pairs (deterministic)."""
        rng = np.random.default_rng(seed)
        seen: dict[tuple[int, int], None] = {}
        tries = 0
        while len(seen) < n and tries < 100 * n:
            seen.setdefault(self.sample(rng, heldout=True))
            tries += 1
        return list(seen)

    def max_problem_len(self) -> int:
        return 2 * self.max_digits + 2 + self.max_digits + 1 + 1


def encode_problem(codec: CharCodec, task: AdditionTask, a: int, b: int) -> tuple[list[int], list[int]]:
    """``(ids, labels)``: labels are -100 on the prompt, the answer and eos are supervised."""
    p = codec.encode(task.prompt(a, b))
    ans = codec.encode(task.answer(a, b)) + [codec.eos_id]
    return p + ans, [IGNORE] * len(p) + ans


def batches(task: AdditionTask, *, batch_size: int, seq_len: int, seed: int,
            codec: CharCodec | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless ``(input_ids, labels, attention_mask)`` batches ``[B, seq_len]``: each row
    packs whole training problems back to back; the rest is padding (eos id, label -100,
    mask 0). Deterministic from ``seed``."""
    codec = codec or CharCodec()
    rng = np.random.default_rng(seed)
    while True:
        ids = np.full((batch_size, seq_len), codec.eos_id, np.int32)
        labels = np.full((batch_size, seq_len), IGNORE, np.int32)
        mask = np.zeros((batch_size, seq_len), np.int32)
        for r in range(batch_size):
            pos = 0
            while True:
                a, b = task.sample(rng)
                x, y = encode_problem(codec, task, a, b)
                if pos + len(x) > seq_len:
                    break
                ids[r, pos:pos + len(x)] = x
                labels[r, pos:pos + len(x)] = y
                mask[r, pos:pos + len(x)] = 1
                pos += len(x)
        yield ids, labels, mask
