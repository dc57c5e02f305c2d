"""``hierarchos chat`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="chat with a model in the terminal (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'chat' is not available yet in this version")
