"""``hierarchos plot`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot a run's loss and learning-rate curves as PNG (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'plot' is not available yet in this version")
