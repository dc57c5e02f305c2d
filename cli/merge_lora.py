"""``hierarchos merge-lora`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("merge-lora", help="merge LoRA adapters into a model's weights (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'merge-lora' is not available yet in this version")
