"""``hierarchos chunk``: the reference's ``dataset_chunk_create.py`` (Kayla chunker with thought anchors)."""

from __future__ import annotations

import sys

from ._common import CLIError, load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chunk",
        help="pre-tokenize a Kayla dataset into overlapping anchored chunks (consolidated .npy shards + manifest)",
        description=(
            "Chunk a Kayla-style dataset (keys Instruction, output, thought-process, feelings) as the reference's "
            "dataset_chunk_create.py: every chunk starts with the sample's thought process, then a window of "
            "instruction/feelings/response tokens, then EOS; consecutive windows overlap. Prints FINAL "
            "MAX_SEQ_LENGTH, the --max-length to train with. Train on the output with --train OUTPUT_DIR "
            "(npy) or --pre-chunked-dataset --train OUTPUT_DIR (jsonl)."
        ),
    )
    p.add_argument("--dataset", required=True, metavar="PATH", help="input JSONL (or JSON/CSV/Parquet) file")
    p.add_argument("--tokenizer-path", "--tokenizer_path", dest="tokenizer_path", required=True, metavar="DIR",
                   help="tokenizer directory (or a model directory holding one)")
    p.add_argument("--overlap", type=int, default=1024, metavar="N",
                   help="tokens shared by consecutive chunks; reduced to half the reserved space if not smaller "
                        "(default %(default)s)")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", default="train_Hierarchos_chunked_tensors",
                   metavar="DIR", help="output directory (default %(default)s)")
    p.add_argument("--chunks-per-file", "--chunks_per_file", dest="chunks_per_file", type=int, default=1000,
                   metavar="N", help="rows per .npy shard (default %(default)s)")
    p.add_argument("--output-format", "--output_format", dest="output_format", default="npy",
                   choices=("npy", "pt", "jsonl", "both"),
                   help="npy: consolidated .npy shards + manifest.json ('pt' is accepted and means the same); "
                        "jsonl: padded JSONL shards for --pre-chunked-dataset; both (default %(default)s)")
    p.add_argument("--jsonl-shards", "--jsonl_shards", dest="jsonl_shards", type=int, default=0, metavar="N",
                   help="JSONL shard files; 0 = min(16, CPU count) (default %(default)s)")
    p.add_argument("--reserved-chunk-space", "--reserved_chunk_space", dest="reserved_chunk_space", type=int,
                   default=2048, metavar="N",
                   help="stream tokens per chunk beyond the anchor budget (the reference's fixed 2048; a port "
                        "addition; default %(default)s)")
    p.add_argument("--no-prompt-mask", "--no_prompt_mask", dest="mask_prompt", action="store_false",
                   help="train the instruction/feelings part too, as the reference v0.21 script really does (its "
                        "prompt mask never applies); default: prompt labels -100 as spec/training.md 11.2 states")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    lib = load("hierarchos_jax.data.chunk_dataset", "chunk")
    from hierarchos_jax.io.tokenizer import Tokenizer

    if args.overlap < 0 or args.chunks_per_file < 1 or args.reserved_chunk_space < 1:
        raise CLIError("--overlap must be >= 0, --chunks-per-file and --reserved-chunk-space >= 1")
    tokenizer = Tokenizer(args.tokenizer_path)
    summary = lib.chunk_dataset(args.dataset, tokenizer, out_dir=args.output_dir, overlap=args.overlap,
                                reserved=args.reserved_chunk_space, chunks_per_file=args.chunks_per_file,
                                output_format=args.output_format, jsonl_shards=args.jsonl_shards,
                                mask_prompt=args.mask_prompt, progress=not args.no_progress)
    print(summary["stats"].summary(), file=sys.stderr)
    print(f"{summary['rows']} chunks (overlap {summary['overlap']}) written to {summary['out_dir']}")
    print(f"FINAL MAX_SEQ_LENGTH: {summary['max_seq_length']} tokens (train with --max-length "
          f"{summary['max_seq_length']})")
    return 0
