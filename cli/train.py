"""``hierarchos train``: train a model (for now on the embedded synthetic task only)."""

from __future__ import annotations

import sys

from ._common import CLIError, load

# Data options of the reference train mode that this port does not read yet.
_DATA_OPTIONS = ("train", "hf_dataset", "pre_chunked_dataset", "pre_pt_dataset", "kayla", "alpaca")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (without a data option: on the built-in synthetic task)",
        description=(
            "Train a Hierarchos model with the reference's objective (CE + z-loss + ponder + "
            "commitment), TBPTT, AdamW with its parameter groups and warm-up + cosine schedule. "
            "Without a data option the model trains on the embedded synthetic addition task "
            "(see 'hierarchos quickstart'). Writes OUT_DIR/metrics.jsonl and an inference "
            "directory OUT_DIR/model."
        ),
    )
    p.add_argument("--preset", default="tiny", help="model preset (default %(default)s)")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", default="./hierarchos_model", metavar="DIR")
    p.add_argument("--steps", type=int, default=60, metavar="N", help="optimizer updates (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16, metavar="B")
    p.add_argument("--accumulation-steps", "--accumulation_steps", dest="accumulation_steps", type=int, default=1)
    p.add_argument("--starting-lr", type=float, default=3e-3, metavar="LR")
    p.add_argument("--min-lr", type=float, default=1e-4, metavar="LR")
    p.add_argument("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=float, default=0.05)
    p.add_argument("--rwkv-weight-decay", dest="weight_decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=48, metavar="T",
                   help="tokens per training row (default %(default)s)")
    p.add_argument("--training-chunk-size", "--training_chunk_size", dest="chunk_size", type=int, default=0,
                   metavar="L", help="TBPTT chunk length; 0 = one chunk per row (default)")
    p.add_argument("--save-every", "--save-steps", dest="save_every", type=int, default=0, metavar="N",
                   help="checkpoint every N steps (not implemented yet: accepted and ignored with a warning)")
    p.add_argument("--eval-every", type=int, default=0, metavar="N")
    p.add_argument("--no-progress", action="store_true")
    for opt in _DATA_OPTIONS:
        p.add_argument(f"--{opt.replace('_', '-')}", f"--{opt}", dest=opt, default=None, nargs="?", const=True,
                       help=argparse_suppress())
    p.set_defaults(func=run)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def run(args) -> int:
    given = [o for o in _DATA_OPTIONS if getattr(args, o, None) not in (None, False)]
    if given:
        raise CLIError(f"--{given[0].replace('_', '-')}: training on your own data is not implemented yet "
                       "in this port; without a data option 'train' uses the embedded synthetic task")
    if args.save_every:
        print("hierarchos train: warning: --save-every is not implemented yet (no checkpoints are written)",
              file=sys.stderr)
    loop = load("hierarchos_jax.train.loop", "train")
    chunk = args.chunk_size if args.chunk_size > 0 else args.max_length
    targs = loop.TrainArgs(out_dir=args.out_dir, preset=args.preset, steps=args.steps, seed=args.seed,
                           batch_size=args.batch_size, seq_len=args.max_length, chunk_size=chunk,
                           accumulation_steps=args.accumulation_steps, starting_lr=args.starting_lr,
                           min_lr=args.min_lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                           grad_clip=args.grad_clip, eval_every=args.eval_every, progress=not args.no_progress)
    loop.train_synthetic(targs)
    return 0
