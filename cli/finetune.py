"""``hierarchos finetune`` (being built: registered so the command list is complete)."""

from __future__ import annotations

from ._common import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a model with LoRA adapters (not available yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'finetune' is not available yet in this version")
