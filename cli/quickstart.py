"""``hierarchos quickstart``: train a small model on the embedded synthetic task."""

from __future__ import annotations

from ._common import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="train a tiny model on the built-in addition task (a few minutes on a CPU)",
        description=(
            "Trains the 'tiny' preset on the embedded synthetic task (1-2 digit addition in text, "
            "answer written least-significant digit first, e.g. '12+34=64' means 12+34=46), "
            "generated on the fly from the seed, with a character tokenizer made from it. Shows "
            "a progress bar, writes OUT_DIR/metrics.jsonl, reports the loss and the greedy "
            "accuracy on held-out problems before and after, saves an inference directory in "
            "OUT_DIR/model and prints greedy samples. Checkpoints go to OUT_DIR/checkpoints (at the end and "
            "every --save-every steps); running it again with the same OUT_DIR resumes from the newest one "
            "(use another --out-dir for a fresh run)."
        ),
    )
    p.add_argument("--out-dir", default="hierarchos_quickstart", metavar="DIR",
                   help="run directory (default %(default)s)")
    p.add_argument("--steps", type=int, default=1500, metavar="N", help="optimizer steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the init and the data (default %(default)s)")
    p.add_argument("--preset", default="tiny", help="model preset (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="rows per batch (default %(default)s)")
    p.add_argument("--starting-lr", type=float, default=3e-3, metavar="LR", help="peak LR (default %(default)s)")
    p.add_argument("--max-digits", type=int, default=2, metavar="D",
                   help="largest operand length (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=500, metavar="N",
                   help="held-out accuracy every N steps; 0 = only before/after (default %(default)s)")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also checkpoint every N steps (default: only at the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    loop = load("hierarchos_jax.train.loop", "quickstart")
    targs = loop.TrainArgs(out_dir=args.out_dir, preset=args.preset, steps=args.steps, seed=args.seed,
                           batch_size=args.batch_size, starting_lr=args.starting_lr, max_digits=args.max_digits,
                           eval_every=args.eval_every, save_every=args.save_every, progress=not args.no_progress)
    loop.train_synthetic(targs)
    return 0
