"""Train a GPT-2-style byte-level BPE tokenizer on your data (``hierarchos train-tokenizer``).

Texts are the records rendered as training renders them (text column, or the prompt/response
template of the record's columns, spec/training.md §3.1-3.2) — so template markers such as
``### Response:`` become tokens. The tokenizer has GPT-2's conventions: byte-level pre-tokenizer
without a prefix space, one special token ``<|endoftext|>`` serving as EOS, BOS and UNK, no pad
token (the pad is EOS, spec §2). The directory (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``) is written under a temporary name and renamed into place; both
:class:`~hierarchos_jax.io.tokenizer.Tokenizer` and HF ``AutoTokenizer`` load it.
"""

from __future__ import annotations

import json
from pathlib import Path

from hierarchos_jax.data.formatting import (
    Rejected,
    prompt_response_texts,
    resolve_columns,
)
from hierarchos_jax.data.options import FormatOptions
from hierarchos_jax.data.readers import Malformed
from hierarchos_jax.io.atomic import atomic_directory

EOS = "<|endoftext|>"
BYTE_ALPHABET = 256


def record_text(record, opts: FormatOptions) -> str | None:
    """The text a record contributes (``None``: nothing usable)."""
    if not isinstance(record, dict):
        return None
    text_col, prompt_col, completion_col = resolve_columns(record, opts)
    if text_col:
        text = str(record.get(text_col, ""))
        return text if text.strip() else None
    if prompt_col and completion_col:
        texts = prompt_response_texts(record, prompt_col, completion_col, opts)
        if isinstance(texts, Rejected):
            return None
        prompt, pieces = texts
        return prompt + "".join(pieces)
    return None


def iter_texts(records, opts: FormatOptions, stats=None):
    for where, record in records:
        text = None if isinstance(record, Malformed) else record_text(record, opts)
        if text is None:
            if stats is not None:
                stats.skip(where, record.reason if isinstance(record, Malformed) else "no text in this record")
            continue
        if stats is not None:
            stats.kept()
        yield text


def train_bpe(texts, *, vocab_size: int, min_frequency: int = 2, show_progress: bool = True):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` entries at most."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    if vocab_size < BYTE_ALPHABET + 1:
        raise ValueError(f"--vocab-size must be at least {BYTE_ALPHABET + 1} (256 bytes + {EOS}), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                  special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    tok.train_from_iterator(texts, trainer)
    return tok


def save_tokenizer_dir(tok, out_dir, *, model_max_length: int = 1024) -> Path:
    """Write the tokenizer directory atomically (temporary sibling, then rename)."""
    out_dir = Path(out_dir)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir())
                             and not (out_dir / "tokenizer.json").is_file()):
        raise ValueError(f"{out_dir}: exists and is not a tokenizer directory; choose a new --out-dir")
    with atomic_directory(out_dir) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        config = {"tokenizer_class": "GPT2TokenizerFast", "model_max_length": int(model_max_length),
                  "add_prefix_space": False, "bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}, indent=2) + "\n")
    return out_dir
