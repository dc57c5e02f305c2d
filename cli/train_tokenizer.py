"""``hierarchos train-tokenizer`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer on your data (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'train-tokenizer' is not available yet in this version")
