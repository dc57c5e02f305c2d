"""``hierarchos benchmark`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="score a model on lm-eval tasks (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'benchmark' is not available yet in this version")
