"""``hierarchos perplexity``: tokens, NLL and perplexity of a model on a text or JSONL file."""

from __future__ import annotations

import json
import os

from ._common import CLIError, load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "perplexity", help="perplexity of a model on a text or JSONL file",
        description="Score a file with a model: a .jsonl file is one document per line (field --text-field), "
                    "anything else one document. Each document is scored in disjoint windows of --max-length "
                    "tokens from fresh state (lm-eval's loglikelihood_rolling); prints tokens, total and mean "
                    "NLL (nats) and perplexity = exp(mean NLL).")
    p.add_argument("--model-path", "--model_path", dest="model_path", required=True, help="model directory")
    p.add_argument("--data", required=True, help="text file or .jsonl file")
    p.add_argument("--text-field", "--text_field", dest="text_field", default="text",
                   help="JSONL field holding the text (default: text)")
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, metavar="N",
                   help="window length (default: the checkpoint's max_length, else 1024)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8, metavar="N",
                   help="windows scored together (default 8; results do not depend on it)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    ppl_mod = load("hierarchos_jax.eval.perplexity", "perplexity")
    if not os.path.exists(args.model_path):
        raise CLIError(f"{args.model_path}: no such model directory")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 1:
        raise CLIError(f"--max-length must be >= 1, got {args.max_length}")
    docs = ppl_mod.read_documents(args.data, text_field=args.text_field)
    if not docs:
        raise CLIError(f"{args.data}: no text to score")
    from hierarchos_jax.eval.lm import HierarchosLM

    lm = HierarchosLM(pretrained=args.model_path, batch_size=args.batch_size, max_length=args.max_length)
    res = ppl_mod.perplexity(lm, docs)
    if res.tokens == 0:
        raise CLIError(f"{args.data}: the text encodes to no tokens")
    if args.json:
        print(json.dumps({"documents": res.documents, "tokens": res.tokens, "nll": res.nll,
                          "mean_nll": res.mean_nll, "ppl": res.ppl, "max_length": lm.max_length}))
    else:
        print(f"documents: {res.documents}")
        print(f"tokens: {res.tokens}")
        print(f"nll: {res.nll:.4f} nats (mean {res.mean_nll:.6f})")
        print(f"ppl: {res.ppl:.4f}")
    return 0
