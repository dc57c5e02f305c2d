"""``hierarchos finetune``: LoRA fine-tuning of a model directory (spec: training.md §7)."""

from __future__ import annotations

import argparse

from ._common import CLIError, load


def _add_data_args(p) -> None:
    try:
        from hierarchos_jax.data import add_data_args
    except ImportError:
        return
    add_data_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model with LoRA adapters (writes an adapter directory)",
        description=(
            "LoRA fine-tuning (spec training.md §7): rank-r adapters (A Kaiming-uniform, B = 0, scale "
            "alpha/r, dropout on the adapter input) on the reference's 21 target Linear layers, the LTM "
            "keys/values trained in full, everything else frozen; read-only LTM; AdamW with the "
            "reference's decay rule on the adapter, warm-up + cosine. Unlike the reference (which "
            "fine-tunes in eval mode), the model runs in training mode. Without a data option the "
            "embedded synthetic task is used (the base must have its 13-token vocabulary). Writes "
            "OUT_DIR/adapter_model.safetensors + adapter_config.json (PEFT names), metrics.jsonl and the "
            "tokenizer; 'hierarchos merge-lora' turns base + adapter into an inference directory."),
    )
    p.add_argument("--model-path", "--model_path", dest="model_path", required=True, metavar="DIR",
                   help="base model directory (required)")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", default="./hierarchos_model", metavar="DIR")
    p.add_argument("--tokenizer-path", "--tokenizer_path", dest="tokenizer_path", default=None, metavar="DIR")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_r", "--lora-r", dest="lora_r", type=int, default=8, metavar="R",
                   help="adapter rank (default %(default)s)")
    g.add_argument("--lora_alpha", "--lora-alpha", dest="lora_alpha", type=float, default=16.0, metavar="A",
                   help="adapter alpha; scale alpha/r (default %(default)g)")
    g.add_argument("--lora-dropout", "--lora_dropout", dest="lora_dropout", type=float, default=0.05,
                   metavar="P", help="dropout on the adapter input (default %(default)g)")
    g.add_argument("--finetune-unlock-percent", "--finetune_unlock_percent", dest="finetune_unlock_percent",
                   type=float, default=None, metavar="PCT",
                   help="derive the rank from a trainable-parameter percentage (only with --lora_r 8)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=0, metavar="N",
                   help="optimizer updates (default: epochs x updates per epoch; 60 on the embedded task)")
    o.add_argument("--epochs", type=int, default=3)
    o.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64, metavar="B")
    o.add_argument("--accumulation-steps", "--accumulation_steps", dest="accumulation_steps", type=int, default=1)
    o.add_argument("--starting-lr", "--starting_lr", dest="starting_lr", type=float, default=1e-4, metavar="LR")
    o.add_argument("--min-lr", "--min_lr", dest="min_lr", type=float, default=1e-6, metavar="LR")
    o.add_argument("--warmup-steps", "--warmup_steps", dest="warmup_steps", type=int, default=0)
    o.add_argument("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=float, default=0.0)
    o.add_argument("--disable-lr-schedule", dest="disable_lr_schedule", action="store_true")
    o.add_argument("--rwkv-weight-decay", "--rwkv_weight_decay", dest="weight_decay", type=float, default=0.1)
    o.add_argument("--grad-clip", "--grad_clip", dest="grad_clip", type=float, default=1.0)
    o.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None, metavar="T",
                   help="tokens per row (default 1024 with data, 48 on the embedded task)")
    o.add_argument("--training-chunk-size", "--training_chunk_size", dest="chunk_size", type=int, default=0,
                   metavar="L", help="TBPTT chunk; 0 = one full-sequence forward per row, as the reference")
    o.add_argument("--h_stride", "--h-stride", dest="h_stride", type=int, default=None,
                   help="override the model's planning stride (the reference does this too)")
    o.add_argument("--ponder-loss-weight", dest="ponder_loss_weight", type=float, default=0.01)
    o.add_argument("--commitment-loss-weight", dest="commitment_loss_weight", type=float, default=0.5)
    o.add_argument("--max-commitment-cost-for-backward", dest="max_commitment_cost_for_backward", type=float,
                   default=2.0)
    o.add_argument("--max-ce-loss-for-backward", dest="max_ce_loss_for_backward", type=float, default=0.0)
    o.add_argument("--max-ponder-cost-for-backward", dest="max_ponder_cost_for_backward", type=float, default=0.0)
    o.add_argument("--amp", action="store_true", help="bfloat16 compute (parameters and adapter stay float32)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--save-steps", "--save_steps", "--save-every", dest="save_every", type=int, default=0,
                   metavar="N", help="every N updates save the adapter and a resumable checkpoint "
                                     "(OUT_DIR/checkpoints; 0 = only the final adapter)")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--resume-from-ckpt", "--resume_from_ckpt", dest="resume_from_ckpt", default=None, metavar="CKPT",
                   help="continue a fine-tune from a checkpoint of --save-every (a step directory, its "
                        "checkpoints/ directory or the fine-tune's --out-dir); --model-path names the base")
    o.add_argument("--override-scheduling", "--override_scheduling", dest="override_scheduling", nargs="?",
                   const=True, default=False, type=_bool, metavar="BOOL",
                   help="on resume: fresh optimizer state and schedule (the reference's full-length schedule)")
    _add_data_args(p)
    p.set_defaults(func=run)


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _bool(text: str) -> bool:
    v = str(text).strip().lower()
    if v in _TRUE | _FALSE:
        return v in _TRUE
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0, on/off), got {text!r}")


def run(args) -> int:
    if args.lora_r < 1:
        raise CLIError(f"--lora_r must be >= 1, got {args.lora_r}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise CLIError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    ft = load("hierarchos_jax.train.finetune", "finetune")
    from hierarchos_jax.train.step import LossConfig

    loss = LossConfig(chunk_size=max(args.chunk_size, 0), ponder_loss_weight=args.ponder_loss_weight,
                      commitment_loss_weight=args.commitment_loss_weight,
                      max_commitment_cost_for_backward=args.max_commitment_cost_for_backward,
                      max_ce_loss_for_backward=args.max_ce_loss_for_backward,
                      max_ponder_cost_for_backward=args.max_ponder_cost_for_backward)
    fargs = ft.FinetuneArgs(
        model_path=args.model_path, out_dir=args.out_dir, tokenizer_path=args.tokenizer_path, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        finetune_unlock_percent=args.finetune_unlock_percent, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, accumulation_steps=args.accumulation_steps, max_length=args.max_length,
        chunk_size=args.chunk_size, starting_lr=args.starting_lr, min_lr=args.min_lr,
        warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio,
        disable_lr_schedule=args.disable_lr_schedule, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        h_stride=args.h_stride, seed=args.seed, save_every=args.save_every, progress=not args.no_progress,
        loss=loss, compute_dtype="bfloat16" if args.amp else "float32", resume_from_ckpt=args.resume_from_ckpt,
        override_scheduling=args.override_scheduling)
    ft.finetune(fargs, data_args=args)
    return 0
