"""'hierarchos plot': loss/LR curves of a run's metrics.jsonl as a PNG, written atomically."""

from __future__ import annotations

import json
import math

from hierarchos_cli.main import main
from hierarchos_jax.train.plot import plot_run
from hierarchos_jax.train.records import MetricsLog, read_metrics, step_lines

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, n=40, evals=True):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    with MetricsLog(run) as log:
        for s in range(1, n + 1):
            log.write({"step": s, "loss": 3.0 * math.exp(-s / 15) + 0.1, "ce": 2.9 * math.exp(-s / 15),
                       "z_loss": 0.0, "ponder": 1.0, "commitment": 0.1, "lr": 1e-3 * min(1.0, s / 5),
                       "grad_norm": 1.0, "tokens_per_s": 100.0, "applied": True, "skipped": 0})
            if evals and s % 20 == 0:
                log.write({"step": s, "heldout_accuracy": s / n})
                log.write({"step": s, "eval": {"arc_easy/acc": 0.25 + s / 1000}})
    return run


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_writes_a_png_with_three_panels_when_evaluations_exist(tmp_path):
    out = plot_run(_run(tmp_path))
    assert out == tmp_path / "run" / "training_curves.png"
    w, h = _png_size(out)
    w2, h2 = _png_size(plot_run(_run(tmp_path / "b", evals=False)))
    assert w == w2 and h > h2                        # an evaluation panel below loss and LR
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []   # no temp file left


def test_plot_cli_and_errors(tmp_path, capsys):
    run = _run(tmp_path)
    target = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(run), "--out", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    _png_size(target)
    assert main(["plot", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics file" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"step": 1, "heldout_accuracy": 0.5}\n')
    assert main(["plot", str(empty)]) == 1
    assert "no optimizer-step lines" in capsys.readouterr().err


def test_metrics_log_resume_keeps_lines_up_to_the_checkpoint(tmp_path):
    run = _run(tmp_path, n=10, evals=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "loss": 1.0')                        # torn line of a killed run
    assert len(step_lines(read_metrics(run))) == 10
    with MetricsLog(run, keep_until=6) as log:
        log.write({"step": 7, "loss": 9.0})
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6, 7] and recs[-1]["loss"] == 9.0
