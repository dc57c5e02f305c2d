"""``hierarchos plot RUN_DIR [--out FILE]``: a run's loss and learning-rate curves as PNG."""

from __future__ import annotations

from ._common import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="plot a run's loss and learning-rate curves as PNG",
        description="Reads RUN_DIR/metrics.jsonl (written by 'hierarchos train' and 'quickstart') and writes the "
                    "loss (raw and smoothed, with CE), the learning rate and any evaluation results per "
                    "optimizer step to one PNG (default RUN_DIR/training_curves.png).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (or its metrics.jsonl)")
    p.add_argument("--out", default=None, metavar="FILE", help="output PNG (default RUN_DIR/training_curves.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    plot = load("hierarchos_jax.train.plot", "plot")
    print(plot.plot_run(args.run_dir, args.out))
    return 0
