"""``hierarchos quantize``: write a quantized copy of a model directory."""

from __future__ import annotations

from pathlib import Path

from ._common import CLIError, load

QTYPES = ("Q8_0", "Q4_0", "Q2_K", "INT4", "REF_Q8_0", "REF_Q4_0", "REF_Q2_K")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="quantize a model's large matrices and lookup tables (GGUF Q8_0, Q4_0, Q2_K; INT4, REF_*)",
        description=(
            "Load a model directory (ours or the reference's), quantize the RWKV and projection "
            "matrices and the embedding tables (the tied LM head is stored once) in the chosen "
            "block format (Q8_0, Q4_0, Q2_K: GGUF/llama.cpp block layouts; INT4, REF_Q8_0, REF_Q4_0, "
            "REF_Q2_K: the reference kernel's own layouts), keep norms, vectors, gates, routers, "
            "low-rank and LTM tensors in float32, "
            "and write OUT (config, quantized.safetensors, quantization.json manifest, tokenizer), "
            "atomically. 'hierarchos generate/chat --model-path OUT' run it directly. Q8_0 is close "
            "to float; Q4_0/INT4 lose ~10% weight precision; Q2_K is very lossy (~30%, REF_Q2_K ~45%)."
        ),
    )
    p.add_argument("--model-path", "--model_path", dest="model_path", required=True, metavar="DIR",
                   help="model directory or checkpoint file to quantize")
    p.add_argument("--qtype", default="Q8_0", type=str.upper, choices=QTYPES,
                   help="block format (default %(default)s)")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", default=None, metavar="OUT",
                   help="output directory (default: DIR-<QTYPE> next to the model)")
    p.add_argument("--gguf", action="store_true",
                   help="also write OUT/model.gguf (llama.cpp's container; Q8_0, Q4_0, Q2_K only; needs the "
                        "'gguf' package)")
    p.set_defaults(func=run)


def run(args) -> int:
    src = Path(args.model_path)
    if not src.exists():
        raise CLIError(f"--model-path {src}: no such file or directory")
    out = Path(args.out_dir) if args.out_dir else src.with_name(f"{src.name}-{args.qtype}")
    if out.resolve() == src.resolve():
        raise CLIError("--out-dir must differ from --model-path")
    if args.gguf and not args.qtype.startswith("Q"):
        raise CLIError(f"--gguf: {args.qtype} has no GGUF equivalent (use Q8_0, Q4_0 or Q2_K)")
    qdir = load("hierarchos_jax.quant.model_dir", "quantization")
    written = qdir.quantize_model_dir(src, out, args.qtype, gguf=args.gguf)
    manifest = qdir.read_summary(written)
    print(f"wrote {written} ({args.qtype}: {manifest['packed']} packed tensors, "
          f"{manifest['bytes'] / 2**20:.1f} MiB of weights, {manifest['ratio']:.2f}x smaller than float32)")
    return 0
