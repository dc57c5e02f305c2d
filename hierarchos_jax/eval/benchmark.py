"""Post-training benchmark runs (``hierarchos benchmark``, spec evaluation.md §3, §5).

Names are resolved through the registry (:mod:`hierarchos_jax.eval.registry`); lm-eval
tasks run one at a time (``sequential``, each failure recorded and the rest continuing) or
all in one ``simple_evaluate``; results are merged and written to
``<out_dir>/<run name>/``: ``results.json`` (lm-eval's output with per-document samples),
``manifest.json`` (what was requested, resolved, run, skipped, failed) and ``summary.md``.
Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hierarchos_jax.io.atomic import write_json_atomic, write_text_atomic
from hierarchos_jax.eval.harness import (
    EvalError,
    run_tasks,
    task_manager,
    unknown_tasks,
)
from hierarchos_jax.eval.registry import resolve, spec_for_task

PRESET_ALIASES = {"rog-ally": "rog-ally", "ally": "rog-ally", "handheld": "rog-ally", "local": "rog-ally"}
# Defaults a preset fills in for options not given explicitly (spec cli.md §3.2).
PRESETS: dict[str, dict[str, Any]] = {
    "rog-ally": {"suite": ["rog-ally"], "eval_batch_size": 1, "eval_limit": 25, "max_new_tokens": 64,
                 "benchmark_sequential": True, "benchmark_out_dir": "./benchmark_results/rog_ally"},
}


@dataclasses.dataclass
class BenchmarkRun:
    results: dict[str, Any]
    manifest: dict[str, Any]
    summary: str
    out_dir: Path


def slugify(name: str) -> str:
    """Runs of characters outside ``[A-Za-z0-9_.-]`` -> ``-``; leading/trailing ``-._`` stripped."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")


def default_run_name() -> str:
    return _dt.datetime.now().strftime("hierarchos-benchmark-%Y%m%d-%H%M%S")


def format_results(results: dict[str, Any] | None, tasks=None) -> str:
    """Per task: metrics whose key contains ``acc`` (``*_stderr`` included) or equals
    ``exact_match,none`` / ``f1,none``; all non-alias keys if none match. 4 decimals."""
    if not results or not results.get("results"):
        return "No results."
    lines = []
    for task, metrics in results["results"].items():
        if tasks and task not in tasks:
            continue
        chosen = {k: v for k, v in metrics.items() if "acc" in k or k in ("exact_match,none", "f1,none")}
        if not chosen:
            chosen = {k: v for k, v in metrics.items() if not k.startswith("alias")}
        lines.append(f"{task}:")
        for k, v in chosen.items():
            lines.append(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    return "\n".join(lines)


def summary_markdown(results: dict[str, Any], skipped: list[dict], failed: list[str]) -> str:
    parts = ["# Hierarchos Benchmark Summary", "", "```", format_results(results), "```", ""]
    parts.append("## Skipped External Benchmarks")
    parts.append("")
    parts += [f"- {s['key']} ({s['display_name']}): {s['modality']}, not an lm-eval task" for s in skipped] or ["- none"]
    if failed:
        parts += ["", "## Failed lm-eval Tasks", ""] + [f"- {t}" for t in failed]
    return "\n".join(parts) + "\n"


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("results", "versions", "configs", "n-shot", "higher_is_better", "n-samples", "samples",
                "group_subtasks", "groups"):
        if isinstance(part.get(key), dict):
            into.setdefault(key, {}).update(part[key])
    if isinstance(part.get("config"), dict):
        into.setdefault("config", {}).update(part["config"])
    for key, value in part.items():
        into.setdefault(key, value)


def run_benchmark(lm, *, benchmarks=None, suites=None, raw_tasks=None, benchmark_all: bool = False,
                  sequential: bool = False, strict: bool = False, limit: int | None = None,
                  include_path=None, out_dir="./benchmark_results", run_name: str | None = None,
                  log: Callable[[str], None] = print) -> BenchmarkRun:
    """Resolve, run and record a benchmark (see the module docstring)."""
    suites = list(suites or [])
    if benchmark_all:
        suites = ["all-common"] + suites
        sequential = True
    requested = list(benchmarks or [])
    if suites or requested:
        resolved = resolve(suites + requested)
    elif raw_tasks:
        resolved = resolve(raw_tasks)
    else:
        resolved = resolve([], default_suite="frontier-text")
    tasks = resolved.tasks
    skipped = [b.to_dict() for b in resolved.external]
    if resolved.unknown:
        log(f"Unknown benchmark names passed to lm-eval as raw task ids: {', '.join(resolved.unknown)}")
    if not tasks:
        raise EvalError("nothing to run: every requested benchmark is external to lm-eval "
                        f"({', '.join(s['key'] for s in skipped)})")
    manager = task_manager(tasks, include_path)
    missing = unknown_tasks(manager, tasks)
    if missing and strict:
        raise EvalError(f"unknown lm-eval task(s): {', '.join(missing)} (--strict-benchmarks)")

    merged: dict[str, Any] = {}
    failed: list[str] = []
    groups = [[t] for t in tasks] if sequential else [tasks]
    for i, group in enumerate(groups, 1):
        if sequential:
            log(f"[{i}/{len(groups)}] Running benchmark: {group[0]}")
        try:
            part = run_tasks(lm, group, limit=limit, include_path=include_path, manager=manager)
        except EvalError as e:
            if not sequential and len(groups) == 1 and len(tasks) == 1:
                raise
            log(f"benchmark {', '.join(group)} failed: {e}")
            failed.extend(group)
            continue
        _merge(merged, part)
    if not merged:
        raise EvalError(f"every lm-eval task failed: {', '.join(failed)}")

    name = slugify(run_name or default_run_name()) or slugify(default_run_name())
    out = Path(out_dir) / name
    manifest = {
        "requested": requested, "suites": suites, "tasks": tasks,
        "benchmarks": [spec_for_task(t).to_dict() for t in tasks],
        "external_or_skipped": skipped,
        "resolved_lm_eval_tasks": tasks, "unknown_raw_tasks": resolved.unknown,
        "runnable_benchmarks": [t for t in tasks if t not in failed],
        "sequential": sequential, "failed_lm_eval_tasks": failed,
        "generated_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "skipped": [s["key"] for s in skipped],
        "batch_size": getattr(lm, "batch_size", None), "limit": limit,
    }
    summary = summary_markdown(merged, skipped, failed)
    write_json_atomic(out / "results.json", merged)
    write_json_atomic(out / "manifest.json", manifest)
    write_text_atomic(out / "summary.md", summary)
    return BenchmarkRun(merged, manifest, summary, out)
