"""``hierarchos generate``: non-interactive text generation, for scripts."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ._common import CLIError, load

# The reference chat CLI's sampling defaults (spec inference.md §7).
DEFAULTS = dict(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.2, max_new_tokens=512, seed=0)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a prompt (non-interactive; --json for scripts)",
        description=(
            "Load a model directory (ours or the reference's), tokenize PROMPT with the model's "
            "tokenizer and generate up to N tokens with the reference's sampling rules "
            "(repetition penalty over generated tokens, then greedy if T <= 0, else temperature, "
            "top-k, top-p). Output streams to stdout; with --json one JSON object is printed at the "
            "end: prompt_ids, ids, text, stop_reason, ms_per_token, prefill_ms. The seed makes "
            "sampling reproducible."
        ),
    )
    p.add_argument("--model-path", required=True, metavar="DIR", help="model directory or checkpoint file")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="prompt text (used as is, no template)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"], metavar="N",
                   help="most tokens to sample, EOS included (default %(default)s)")
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], metavar="T",
                   help="sampling temperature; <= 0 is greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=DEFAULTS["top_k"], metavar="K",
                   help="keep the K best tokens; 0 = off (default %(default)s)")
    p.add_argument("--top-p", type=float, default=DEFAULTS["top_p"], metavar="P",
                   help="nucleus mass, 0 < P <= 1; 1 = off (default %(default)s)")
    p.add_argument("--repetition-penalty", type=float, default=DEFAULTS["repetition_penalty"], metavar="R",
                   help="penalty > 0 on already generated tokens; 1 = off (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], metavar="S", help="random seed (default %(default)s)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when the generated text contains STR (repeatable; STR is not printed)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=run)


def _check(args) -> None:
    if args.max_new_tokens < 0:
        raise CLIError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature):
        raise CLIError(f"--temperature must be a finite number, got {args.temperature}")
    if not (0.0 < args.top_p <= 1.0):
        raise CLIError(f"--top-p must satisfy 0 < P <= 1, got {args.top_p}")
    if not (0.0 < args.repetition_penalty < math.inf):
        raise CLIError(f"--repetition-penalty must be a finite number > 0, got {args.repetition_penalty}")
    if any(s == "" for s in args.stop):
        raise CLIError("--stop needs a non-empty string")


def run(args: argparse.Namespace) -> int:
    _check(args)
    model_dir = load("hierarchos_jax.io.model_dir", "generate")
    tokenizer_mod = load("hierarchos_jax.io.tokenizer", "generate")
    infer = load("hierarchos_jax.infer", "generate")

    loaded = model_dir.load_model_dir(args.model_path)
    directory = loaded.directory if loaded.directory.is_dir() else loaded.directory.parent
    tokenizer = tokenizer_mod.Tokenizer(directory)  # TokenizerError (one line) if missing
    engine = infer.GenerationEngine(loaded.model, loaded.config, tokenizer)  # checks the vocabulary
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise CLIError("the prompt encodes to no tokens")
    sampling = infer.SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                    repetition_penalty=args.repetition_penalty, seed=args.seed)
    stop = infer.StopConditions(max_new_tokens=args.max_new_tokens, stop_strings=tuple(args.stop))
    stream = engine.generate_stream(prompt_ids, sampling, stop)
    for event in stream:
        if not args.json and event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
    result = stream.result
    if args.json:
        print(json.dumps({
            "prompt_ids": result.prompt_ids,
            "ids": result.token_ids,
            "text": result.text,
            "stop_reason": result.stop_reason,
            "ms_per_token": result.ms_per_token,
            "prefill_ms": 1e3 * result.prefill_s,
        }))
    else:
        sys.stdout.write("\n")
        ms = result.ms_per_token
        print(f"[{len(result.token_ids)} tokens, stop: {result.stop_reason}"
              + (f", {ms:.2f} ms/token" if ms is not None else "") + "]", file=sys.stderr)
    return 0
