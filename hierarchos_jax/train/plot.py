"""``hierarchos plot RUN_DIR``: loss and learning-rate curves of a run as one PNG.

Reads ``<run>/metrics.jsonl`` (:mod:`hierarchos_jax.train.records`), draws the loss (and
CE) per optimizer step with a moving average, the learning rate, and, when present, the
held-out accuracy or lm-eval metrics, with matplotlib's Agg backend; the file is written
to a temporary name and renamed, so a reader never sees half a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

from hierarchos_jax.io.atomic import atomic_path
from hierarchos_jax.train.records import METRICS_FILE, read_metrics, step_lines


def _smooth(xs: list[float], k: int) -> list[float]:
    out, acc, win = [], 0.0, []
    for x in xs:
        x = x if math.isfinite(x) else float("nan")
        win.append(x)
        acc += x
        if len(win) > k:
            acc -= win.pop(0)
        out.append(acc / len(win))
    return out


def plot_run(run_dir, out=None) -> Path:
    """Write the run's curves to ``out`` (default ``<run>/training_curves.png``); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    path = run / METRICS_FILE if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (is {run} a training run directory?)")
    records = read_metrics(path)
    steps = step_lines(records)
    if not steps:
        raise ValueError(f"{path}: no optimizer-step lines to plot")
    evals = [r for r in records if "loss" not in r and ("eval" in r or "heldout_accuracy" in r)]
    x = [r["step"] for r in steps]
    rows = 3 if evals else 2
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.6 * rows), sharex=True)
    ax = axes[0]
    loss = [float(r["loss"]) for r in steps]
    k = max(1, len(loss) // 50)
    ax.plot(x, loss, lw=0.6, alpha=0.4, color="C0", label="loss")
    ax.plot(x, _smooth(loss, k), lw=1.4, color="C0", label=f"loss (mean of {k})")
    if all("ce" in r for r in steps):
        ax.plot(x, _smooth([float(r["ce"]) for r in steps], k), lw=1.0, color="C1", label="CE")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    axes[1].plot(x, [float(r["lr"]) for r in steps], color="C2")
    axes[1].set_ylabel("learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[1].grid(alpha=0.3)
    if evals:
        ax3 = axes[2]
        acc = [(r["step"], r["heldout_accuracy"]) for r in evals if "heldout_accuracy" in r]
        if acc:
            ax3.plot(*zip(*acc, strict=True), marker="o", label="held-out accuracy")
        names = sorted({k for r in evals if "eval" in r for k in r["eval"]})
        for name in names:
            pts = [(r["step"], r["eval"][name]) for r in evals if "eval" in r and name in r["eval"]]
            ax3.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax3.set_ylabel("evaluation")
        ax3.legend(loc="lower right", fontsize=8)
        ax3.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(f"{run.name}: {len(steps)} steps", fontsize=10)
    fig.tight_layout()
    out = Path(out) if out else (run if run.is_dir() else run.parent) / "training_curves.png"
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
