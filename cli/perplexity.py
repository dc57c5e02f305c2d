"""``hierarchos perplexity`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("perplexity", help="perplexity of a model on a text file (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'perplexity' is not available yet in this version")
