"""``hierarchos chunk`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("chunk", help="pre-tokenize a dataset into consolidated chunks with a manifest (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'chunk' is not available yet in this version")
