"""``hierarchos ckpt-2-inf`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("ckpt-2-inf", help="turn a training checkpoint into an inference directory (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'ckpt-2-inf' is not available yet in this version")
