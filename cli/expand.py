"""``hierarchos expand`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("expand", help="grow a model to larger dimensions, keeping its weights (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'expand' is not available yet in this version")
