"""``hierarchos quantize`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a model's large matrices (Q8_0, Q4_0, Q2_K, INT4) (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'quantize' is not available yet in this version")
