"""Evaluation of a saved inference directory, for the trainer (the EVAL contract).

``evaluate_model_dir(model_dir, tasks, limit=None, batch_size=1, include_path=None,
out_json=None) -> {"task/metric": value}`` loads the directory, runs the lm-eval tasks
(names may be registry keys, suites or raw lm-eval ids; non-lm-eval entries are dropped)
and writes lm-eval's full results (without per-document samples) atomically to
``out_json`` when given.
"""

from __future__ import annotations

import os
from pathlib import Path

from hierarchos_jax.io.atomic import write_json_atomic
from hierarchos_jax.eval.harness import EvalError, flat_metrics, run_tasks
from hierarchos_jax.eval.registry import resolve


def evaluate_model_dir(model_dir: str | os.PathLike, tasks: list[str], *, limit: int | None = None,
                       batch_size: int = 1, include_path: str | None = None,
                       out_json: str | Path | None = None) -> dict[str, float]:
    from hierarchos_jax.eval.lm import HierarchosLM

    resolved = resolve(tasks)
    if not resolved.tasks:
        raise EvalError(f"none of {list(tasks)} is an lm-eval task")
    lm = HierarchosLM(pretrained=str(model_dir), batch_size=batch_size, show_progress=False)
    results = run_tasks(lm, resolved.tasks, limit=limit, include_path=include_path, log_samples=False)
    if out_json is not None:
        write_json_atomic(out_json, {k: v for k, v in results.items() if k != "samples"})
    return flat_metrics(results)
