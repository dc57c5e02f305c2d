"""``hierarchos conformance CASE_DIR --out OUT.npz``: run a reference case."""

from __future__ import annotations

import argparse

from ._common import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "conformance",
        help="run a reference case and save its outputs to an .npz",
        description=(
            "Run the model of a reference case directory (case.json + model/) "
            "and write its outputs to OUT.npz for comparison with golden.npz. "
            "Options not listed here are passed on to hierarchos_jax.conformance."
        ),
    )
    p.add_argument("case_dir", metavar="CASE_DIR", help="reference case directory")
    p.add_argument("--out", required=True, metavar="OUT.npz", help="output .npz file")
    p.set_defaults(func=run, passthrough=True)


def run(args: argparse.Namespace) -> int:
    conformance = load("hierarchos_jax.conformance", "conformance")
    argv = [args.case_dir, "--out", args.out, *getattr(args, "extra", [])]
    rc = conformance.main(argv)
    return 0 if rc is None else int(rc)
