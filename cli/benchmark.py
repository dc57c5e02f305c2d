"""``hierarchos benchmark``: score a model on lm-eval tasks and write a results folder."""

from __future__ import annotations

import argparse
import os
import sys

from ._common import CLIError, load

_PRESET_DESTS = ("eval_batch_size", "eval_limit", "max_new_tokens", "benchmark_sequential", "benchmark_out_dir")


def _names(values) -> list[str]:
    """Task/benchmark names given as separate words and/or comma-separated lists."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


class _Explicit(argparse.Action):
    """Store like the default action and remember that the option was given (presets only
    fill options that were not)."""

    def __init__(self, *args, flag: bool = False, **kw):
        if flag:
            kw["nargs"] = 0
        self.flag = flag
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True if self.flag else values)
        namespace.explicit = set(getattr(namespace, "explicit", set())) | {self.dest}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="score a model on lm-eval tasks (results.json, manifest, summary.md)",
        description="Score a model directory on lm-eval tasks, registry benchmarks or suites and write "
                    "results.json, manifest.json and summary.md under --benchmark-out-dir/<run name>. "
                    "Scoring is batch-invariant: --batch-size changes speed, not results. Without network "
                    "access, tasks whose data is on local disk (--include-path) or in the local cache run; "
                    "others fail with one line.")
    p.add_argument("--model-path", "--model_path", dest="model_path", help="model directory (required)")
    p.add_argument("--tasks", "--eval-tasks", "--eval_tasks", dest="eval_tasks", nargs="+", action=_Explicit,
                   metavar="TASK", help="lm-eval task ids or registry names (space- or comma-separated); used "
                                        "when no suite or benchmark is given")
    p.add_argument("--benchmark-suite", "--benchmark_suite", dest="benchmark_suite", nargs="+", metavar="SUITE",
                   action=_Explicit, help="named suites (smoke, rog-ally, commonsense, ...; see --list-benchmarks)")
    p.add_argument("--benchmark", dest="benchmark", nargs="+", metavar="NAME", action=_Explicit,
                   help="registry benchmark keys or raw lm-eval task ids")
    p.add_argument("--benchmark-all", "--benchmark_all", dest="benchmark_all", action=_Explicit, flag=True,
                   default=False, help="every registered benchmark, sequentially")
    p.add_argument("--benchmark-sequential", "--benchmark_sequential", dest="benchmark_sequential",
                   action=_Explicit, flag=True, default=False, help="run tasks one at a time and merge the scores")
    p.add_argument("--benchmark-preset", "--benchmark_preset", dest="benchmark_preset", metavar="PRESET",
                   help="rog-ally (aliases ally, handheld, local): suite rog-ally, batch 1, limit 25, sequential, "
                        "out dir ./benchmark_results/rog_ally; explicit options win")
    p.add_argument("--benchmark-out-dir", "--benchmark_out_dir", "--output-path", "--output_path",
                   dest="benchmark_out_dir", action=_Explicit, default="./benchmark_results", metavar="DIR",
                   help="report directory (default ./benchmark_results)")
    p.add_argument("--benchmark-run-name", "--benchmark_run_name", dest="benchmark_run_name", metavar="NAME",
                   help="run folder name (default hierarchos-benchmark-<date>-<time>)")
    p.add_argument("--list-benchmarks", "--list_benchmarks", dest="list_benchmarks", action="store_true",
                   help="print the registry and suites, then exit")
    p.add_argument("--strict-benchmarks", "--strict_benchmarks", dest="strict_benchmarks", action="store_true",
                   help="fail before running if a task id is unknown to lm-eval")
    p.add_argument("--batch-size", "--eval-batch-size", "--eval_batch_size", dest="eval_batch_size", type=int,
                   action=_Explicit, default=1, metavar="N", help="scoring batch size (default 1)")
    p.add_argument("--limit", "--eval-limit", "--eval_limit", dest="eval_limit", type=int, action=_Explicit,
                   metavar="N", help="first N documents per task")
    p.add_argument("--include-path", "--include_path", dest="include_path", metavar="DIR",
                   help="folder of local lm-eval task YAMLs")
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, metavar="N",
                   help="scoring window (default: the checkpoint's max_length, else 1024)")
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, action=_Explicit,
                   default=512, metavar="N", help="accepted for compatibility (ARC-AGI generation; not run here)")
    p.add_argument("--temperature", type=float, default=1.0, help=argparse.SUPPRESS)
    for flag in ("--arc-agi-path", "--arc_agi_path", "--arc-agi-max-tasks", "--arc-agi-max-test-items"):
        p.add_argument(flag, dest=flag.lstrip("-").replace("-", "_"), help=argparse.SUPPRESS)
    p.add_argument("--device", choices=("cpu", "cuda", "gpu", "dml"), help="accepted; JAX picks the platform")
    p.add_argument("--threads", type=int, help="accepted for compatibility")
    p.set_defaults(func=run, explicit=set())


def apply_preset(args) -> None:
    if not args.benchmark_preset:
        return
    from hierarchos_jax.eval.benchmark import PRESET_ALIASES, PRESETS

    name = PRESET_ALIASES.get(args.benchmark_preset.strip().lower())
    if name is None:
        raise CLIError(f"unknown --benchmark-preset {args.benchmark_preset!r} (choose rog-ally, ally, handheld "
                       "or local)")
    preset = PRESETS[name]
    given = args.explicit
    if not ({"benchmark_suite", "benchmark", "eval_tasks", "benchmark_all"} & given):
        args.benchmark_suite = list(preset["suite"])
    for dest in _PRESET_DESTS:
        if dest not in given:
            setattr(args, dest, preset[dest])


def run(args) -> int:
    bench = load("hierarchos_jax.eval.benchmark", "benchmark")
    if args.list_benchmarks:
        print(load("hierarchos_jax.eval.registry", "benchmark").catalog())
        return 0
    if not args.model_path:
        raise CLIError("benchmark needs --model-path DIR")
    if not os.path.exists(args.model_path):
        raise CLIError(f"{args.model_path}: no such model directory")
    apply_preset(args)
    if args.eval_batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.eval_batch_size}")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.eval_limit}")
    if getattr(args, "arc_agi_path", None):
        print("note: the local ARC-AGI runner is not part of this version; --arc-agi-path is ignored",
              file=sys.stderr)
    from hierarchos_jax.eval.lm import HierarchosLM

    lm = HierarchosLM(pretrained=args.model_path, batch_size=args.eval_batch_size, max_length=args.max_length)
    suites, benchmarks = _names(args.benchmark_suite), _names(args.benchmark)
    raw = _names(args.eval_tasks) if not (suites or benchmarks or args.benchmark_all) else None
    result = bench.run_benchmark(
        lm, benchmarks=benchmarks, suites=suites, raw_tasks=raw, benchmark_all=args.benchmark_all,
        sequential=args.benchmark_sequential, strict=args.strict_benchmarks, limit=args.eval_limit,
        include_path=args.include_path, out_dir=args.benchmark_out_dir, run_name=args.benchmark_run_name)
    print("\nCombined Benchmark Results")
    print(bench.format_results(result.results))
    if result.manifest["external_or_skipped"]:
        print("Skipped external benchmarks: " + ", ".join(result.manifest["skipped"]))
    print(f"Wrote {result.out_dir / 'results.json'}, manifest.json and summary.md")
    return 0 if not result.manifest["failed_lm_eval_tasks"] else 1
