"""``hierarchos train-tokenizer``: train a byte-level BPE tokenizer on your data."""

from __future__ import annotations

import sys

from ._common import CLIError, load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train a byte-level BPE tokenizer on your data",
        description=(
            "Train a GPT-2-style byte-level BPE tokenizer (special token <|endoftext|> = EOS, pad = EOS) on "
            "local data files, rendering each record as training does (text column, or the prompt/response "
            "template of its columns). Writes OUT_DIR/tokenizer.json + tokenizer_config.json atomically; "
            "use it with --tokenizer-path."
        ),
    )
    p.add_argument("--data", "--train", dest="data", nargs="+", required=True, metavar="PATH",
                   help="JSON/JSONL/CSV/Parquet/text files or directories of them")
    p.add_argument("--vocab-size", "--vocab_size", dest="vocab_size", type=int, required=True, metavar="N",
                   help="vocabulary size including <|endoftext|> (at least 257)")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", required=True, metavar="DIR",
                   help="tokenizer directory to write")
    p.add_argument("--min-frequency", "--min_frequency", dest="min_frequency", type=int, default=2, metavar="N",
                   help="merges need pairs seen at least N times (default %(default)s)")
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=1024, metavar="N",
                   help="model_max_length written to tokenizer_config.json (default %(default)s)")
    p.add_argument("--text-column", "--text_column", dest="text_column", default=None, metavar="COL")
    p.add_argument("--prompt-column", "--prompt_column", dest="prompt_column", default=None, metavar="COL")
    p.add_argument("--completion-column", "--completion_column", dest="completion_column", default=None,
                   metavar="COL")
    tmpl = p.add_mutually_exclusive_group()
    tmpl.add_argument("--kayla", action="store_true", help="render prompt/completion records with the Kayla template")
    tmpl.add_argument("--alpaca", action="store_true", help="render prompt/completion records with the Alpaca template")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    bpe = load("hierarchos_jax.data.bpe", "train-tokenizer")
    from hierarchos_jax.data.options import FormatOptions
    from hierarchos_jax.data.readers import iter_records
    from hierarchos_jax.data.stats import DataStats

    opts = FormatOptions.from_args(args)
    stats = DataStats()

    def records():
        for path in args.data:
            yield from iter_records(path)

    if args.vocab_size < bpe.BYTE_ALPHABET + 1:
        raise CLIError(f"--vocab-size must be at least {bpe.BYTE_ALPHABET + 1} (256 bytes + <|endoftext|>), "
                       f"got {args.vocab_size}")
    for path in args.data:  # fail on a bad path before training starts
        from hierarchos_jax.data.readers import data_files

        data_files(path)
    tok = bpe.train_bpe(bpe.iter_texts(records(), opts, stats), vocab_size=args.vocab_size,
                        min_frequency=args.min_frequency, show_progress=not args.no_progress)
    if stats.examples == 0:
        raise CLIError(f"no text found in {' '.join(args.data)} ({stats.summary()})")
    out = bpe.save_tokenizer_dir(tok, args.out_dir, model_max_length=args.max_length)
    print(f"{stats.summary()}", file=sys.stderr)
    print(f"wrote a {tok.get_vocab_size()}-token byte-level BPE tokenizer to {out}")
    return 0
