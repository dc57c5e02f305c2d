"""``metrics.jsonl``: one JSON line per optimizer step (and one per evaluation) of a run.

Step lines: ``step, loss, ce, z_loss, ponder, commitment, lr, grad_norm, tokens_per_s,
applied, skipped, nonfinite_batches`` (``skipped``/``nonfinite_batches`` are the run's
running counts of skipped updates and non-finite micro-batches). Evaluation lines:
``{"step": N, "eval": {...}}`` (lm-eval metrics during training) or
``{"step": N, "heldout_accuracy": a}`` (the embedded task).

A resumed run keeps the lines up to the checkpoint's step and drops any written after it
by the interrupted run (rewritten atomically), so a run's file always describes one
uninterrupted sequence of steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from hierarchos_jax.io.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"
STEP_KEYS = ("loss", "ce", "z_loss", "ponder", "commitment", "lr", "grad_norm")


def read_metrics(path) -> list[dict]:
    """Every well-formed line of a metrics file (a torn last line of a killed run is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def step_lines(records: list[dict]) -> list[dict]:
    """Only the per-step lines (those with a ``loss``)."""
    return [r for r in records if "loss" in r]


def step_record(step: int, metrics, counters, tokens_per_s: float) -> dict:
    """The line for one optimizer step from host copies of ``StepMetrics`` and ``Counters``."""
    rec = {"step": int(step)}
    rec.update({k: float(getattr(metrics, k)) for k in STEP_KEYS})
    rec["tokens_per_s"] = float(tokens_per_s)
    rec["applied"] = bool(metrics.applied)
    rec["skipped"] = int(counters.skipped)
    rec["nonfinite_batches"] = int(counters.nonfinite_batches)
    return rec


class MetricsLog:
    """Appends lines to ``<run>/metrics.jsonl``. ``keep_until=None`` starts a fresh file;
    ``keep_until=k`` keeps the existing lines with ``step <= k`` (resume from step ``k``)."""

    def __init__(self, run_dir, *, keep_until: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        kept = []
        if keep_until is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r["step"]) <= keep_until]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(self.path, "a")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
