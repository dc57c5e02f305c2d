"""``hierarchos export-torch SRC OUT``: convert a PyTorch model directory."""

from __future__ import annotations

import argparse

from ._common import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-torch",
        help="convert a PyTorch model directory to a hierarchos-jax one",
        description=(
            "Read a reference (PyTorch) model directory or checkpoint SRC "
            "(hierarchos.pt + hierarchos_config.json + tokenizer files) and write "
            "a hierarchos-jax model directory OUT."
        ),
    )
    p.add_argument("src", metavar="SRC", help="PyTorch model directory or .pt file")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_dir = load("hierarchos_jax.io.model_dir", "export-torch")
    result = model_dir.export_torch_dir(args.src, args.out)
    where = result if result is not None else args.out
    print(f"exported {args.src} -> {where}")
    return 0
