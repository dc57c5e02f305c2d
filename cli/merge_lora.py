"""``hierarchos merge-lora``: base model + LoRA adapter -> a normal inference directory."""

from __future__ import annotations

from ._common import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge-lora",
        help="merge a LoRA adapter into its base model's weights (writes an inference directory)",
        description=(
            "W <- W + (alpha/r)·B·A for every adapted layer (computed in float64, rounded once), the LTM "
            "keys/values replaced by the adapter's trained copy; the result is an ordinary model "
            "directory (model.safetensors, hierarchos.pt, config, tokenizer), written atomically. "
            "Reads adapters of 'hierarchos finetune' and the reference's PEFT adapters "
            "(adapter_model.safetensors). An adapter whose shapes do not fit the base is refused."),
    )
    p.add_argument("--model-path", "--model_path", dest="model_path", required=True, metavar="DIR",
                   help="the base model directory")
    p.add_argument("--lora-path", "--lora_path", "--lora-adapter-path", "--lora_adapter_path", dest="lora_path",
                   required=True, metavar="DIR", help="the adapter directory (adapter_config.json + "
                                                      "adapter_model.safetensors)")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", required=True, metavar="DIR",
                   help="where to write the merged model directory")
    p.set_defaults(func=run)


def run(args) -> int:
    ft = load("hierarchos_jax.train.finetune", "merge-lora")
    ft.merge_adapter_dir(args.model_path, args.lora_path, args.out_dir)
    return 0
