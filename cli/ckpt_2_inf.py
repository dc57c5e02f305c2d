"""``hierarchos ckpt-2-inf CKPT --out-dir DIR``: a training checkpoint -> an inference directory."""

from __future__ import annotations

from pathlib import Path

from ._common import CLIError, load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ckpt-2-inf", help="turn a training checkpoint into an inference directory",
        description="Verifies a checkpoint written by 'hierarchos train' (CKPT: a step directory "
                    "RUN/checkpoints/<step>, a checkpoints directory or a run directory: its newest step) "
                    "and writes an inference directory: hierarchos_config.json, model.safetensors, "
                    "hierarchos.pt (loads in PyTorch Hierarchos) and the run's tokenizer.")
    p.add_argument("ckpt", nargs="?", default=None, metavar="CKPT", help="checkpoint to convert")
    p.add_argument("--ckpt-input", "--ckpt_input", dest="ckpt_input", default=None, metavar="CKPT",
                   help="the reference's spelling of CKPT")
    p.add_argument("--out-dir", "--inf-output", "--inf_output", dest="out_dir", default=None, metavar="DIR",
                   help="output directory (default: RUN/model_step_<step>)")
    p.add_argument("--tokenizer-path", "--ckpt-tok-path", "--ckpt_tok_path", dest="tokenizer_path", default=None,
                   metavar="DIR", help="tokenizer to embed (default: the one saved with the checkpoints)")
    p.set_defaults(func=run)


def run(args) -> int:
    src = args.ckpt or args.ckpt_input
    if not src:
        raise CLIError("give the checkpoint to convert (CKPT or --ckpt-input)")
    ck = load("hierarchos_jax.train.checkpoint", "ckpt-2-inf")
    root, step = ck.resolve_step_dir(src)
    run_dir = root.parent if root.name == "checkpoints" else root
    out = Path(args.out_dir) if args.out_dir else run_dir / f"model_step_{step}"
    tok = None
    if args.tokenizer_path:
        from hierarchos_jax.io.tokenizer import TokenizerError, find_tokenizer_dir

        try:
            tok = find_tokenizer_dir(args.tokenizer_path)
        except TokenizerError as e:
            raise CLIError(str(e)) from None
    path = ck.checkpoint_to_inference_dir(root / str(step), out, tokenizer_dir=tok)
    print(path)
    return 0
