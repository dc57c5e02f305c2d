"""``hierarchos export-torch SRC OUT``: write a model directory PyTorch Hierarchos loads."""

from __future__ import annotations

import argparse

from ._common import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-torch",
        help="write a model directory that PyTorch Hierarchos loads (plus model.safetensors)",
        description=(
            "Read a model directory SRC (ours: hierarchos_config.json + model.safetensors, or the "
            "reference's: hierarchos.pt + hierarchos_config.json, or a bare hierarchos.pt) and write "
            "OUT with hierarchos.pt (torch.save format, loadable with weights_only=True), "
            "model.safetensors, hierarchos_config.json and the tokenizer files. Weights round-trip "
            "bit-exactly. OUT appears only when complete."
        ),
    )
    p.add_argument("src", metavar="SRC", help="model directory (ours or the reference's) or a .pt file")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_dir = load("hierarchos_jax.io.model_dir", "export-torch")
    result = model_dir.export_torch_dir(args.src, args.out)
    where = result if result is not None else args.out
    print(f"exported {args.src} -> {where}")
    return 0
