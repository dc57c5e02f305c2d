"""Which tokenizer a training run uses (spec/training.md §2 source resolution, local directories only).

First match: ``--tokenizer-path``; else the model source (``--model-path``, else
``--resume-from-ckpt``): a file -> its directory, a directory holding ``tokenizer.json`` (or a
single sub-directory holding one). The reference then falls back to the Hub's
``openai-community/gpt2``; this port never downloads at run time, so no local tokenizer is one
error line naming what to pass.
"""

from __future__ import annotations

from pathlib import Path

from hierarchos_jax.io.tokenizer import Tokenizer, TokenizerError


def tokenizer_source(args) -> Path | None:
    explicit = getattr(args, "tokenizer_path", None)
    if explicit:
        return Path(explicit)
    for name in ("model_path", "resume_from_ckpt"):
        value = getattr(args, name, None)
        if value:
            path = Path(value)
            return path.parent if path.is_file() else path
    return None


def load_tokenizer(args) -> Tokenizer:
    """The run's tokenizer; a missing or Hub-only source is a one-line ``TokenizerError``."""
    source = tokenizer_source(args)
    if source is None:
        raise TokenizerError("no tokenizer: pass --tokenizer-path DIR (a model directory or one made by "
                             "'hierarchos train-tokenizer'); the reference's default openai-community/gpt2 "
                             "would need a download")
    if not source.exists():
        raise TokenizerError(f"{source}: no such tokenizer directory (this port reads local tokenizer.json "
                             "directories, not Hub names)")
    return Tokenizer(source)
