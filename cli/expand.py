"""``hierarchos expand``: grow a model to larger dimensions (spec: training.md §11.1, cli.md §5.2)."""

from __future__ import annotations

import argparse

from ._common import CLIError, load

_INT_KEYS = ("vocab_size", "context_dim", "persistent_dim", "ltm_slots", "ltm_key_dim", "ltm_val_dim", "ltm_topk",
             "h_hidden", "l_hidden", "h_stride", "max_h_steps", "max_l_steps", "detach_every_n_steps",
             "rosa_max_context", "rwkv_head_size")
_FLOAT_KEYS = ("ltm_lr", "l_conv_atol", "commitment_threshold", "h_halt_thresh", "ltm_forget_rate")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "expand",
        help="grow a model to larger dimensions, its trained weights placed block by block",
        description=(
            "Build a model with larger dimensions and place the old weights into it. Unlike the reference's "
            "expand_model.py (a positional corner copy that misaligns concatenated blocks), every "
            "block-structured axis (in_proj's [token | persistent | k value blocks], qproj's and "
            "l_input_proj's [C | C], rosa_emb's no-hint row, the timestamp-code halves of the value axis) is "
            "placed block by block; weights from new inputs start at zero, so growing vocab_size (old "
            "tokens' logits), persistent_dim, ltm_key_dim, ltm_val_dim or ltm_topk keeps the model's "
            "outputs. Widths (context_dim, h/l_hidden) and ltm_slots change the function (norms average "
            "over the new channels; new slots compete in retrieval). --placement reference gives the "
            "reference's positional copy. Dimensions may only grow."),
    )
    p.add_argument("--old-model-path", "--old_model_path", dest="old_model_path", required=True, metavar="DIR")
    p.add_argument("--output-dir", "--output_dir", "--output-path", "--output_path", dest="output_dir",
                   required=True, metavar="DIR", help="output model directory (a *.pt path means its directory)")
    for key in _INT_KEYS:
        p.add_argument(f"--{key}", f"--{key.replace('_', '-')}", dest=key, type=int, default=None)
    for key in _FLOAT_KEYS:
        p.add_argument(f"--{key}", f"--{key.replace('_', '-')}", dest=key, type=float, default=None)
    p.add_argument("--use-deepembed", dest="use_deepembed", action="store_const", const=True, default=None)
    p.add_argument("--no-deepembed", dest="use_deepembed", action="store_const", const=False)
    p.add_argument("--use-rosa", dest="use_rosa", action="store_const", const=True, default=None)
    p.add_argument("--no-rosa", dest="use_rosa", action="store_const", const=False)
    p.add_argument("--new-max-length", "--new_max_length", dest="max_length", type=int, default=None)
    p.add_argument("--auto-max-length", "--auto_max_length", dest="auto_max_length", action="store_true",
                   help=argparse.SUPPRESS)
    p.add_argument("--dataset-for-length", "--dataset_for_length", dest="dataset_for_length", default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--placement", choices=("blocks", "reference"), default="blocks",
                   help="blocks (default) or the reference's positional leading-overlap copy")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.auto_max_length or args.dataset_for_length:
        raise CLIError("--auto-max-length/--dataset-for-length are not supported by expand in this port; "
                       "give --new-max-length")
    out = args.output_dir
    if out.endswith(".pt"):
        from pathlib import Path

        out = str(Path(out).parent)
    changes = {k: getattr(args, k) for k in _INT_KEYS + _FLOAT_KEYS + ("use_deepembed", "use_rosa", "max_length")}
    ex = load("hierarchos_jax.train.expand", "expand")
    ex.expand_model_dir(args.old_model_path, out, changes, seed=args.seed, placement=args.placement)
    return 0
