"""'hierarchos train' command line: help, option mapping (spec/cli.md, training.md §5.7),
one-line errors, PyTorch-only options, weights-only continuation and training on data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_train_resume import reference_run, run_train

from hierarchos_cli import train as train_cli
from hierarchos_cli.main import build_parser, main
from hierarchos_jax.train.optimizer import OptimConfig, make_schedule
from hierarchos_jax.train.records import read_metrics, step_lines


def _parse(*argv):
    args = build_parser().parse_args(["train", *argv])
    train_cli._defaults(args, train_cli._SYNTHETIC_DEFAULTS)
    return args


def _one_error(capsys, argv) -> str:
    assert main(["train", *argv]) == 1
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("hierarchos: error")]
    assert len(err) == 1, err
    return err[0]


def test_help_is_true(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--save-every", "--resume-from-ckpt", "--model-path", "--tokenizer-path", "--ltm-training-mode",
                "--full-sample-bptt", "--amp", "--eval-tasks", "--keep-checkpoints", "--epochs", "--steps"):
        assert opt in text
    assert "not implemented" not in text and "ignored with a warning" in text


def test_step_options_follow_the_reference_implications():
    o = train_cli.step_options(_parse())
    assert (o.ltm_training_mode, o.remat_tokens, o.full_sample_bptt, o.compute_dtype) == \
        ("inner-update", True, False, "float32")                       # reference CLI default mode, CPU: fp32
    assert o.min_ltm_lr == pytest.approx(1e-4)                          # floor defaults to --min-lr
    assert train_cli.step_options(_parse("--inference-like-ltm-training")).ltm_training_mode == "read-only"
    assert train_cli.step_options(_parse("--ltm_training_mode", "titans")).ltm_training_mode == "inner-update"
    assert train_cli.step_options(_parse("--no-gradient-checkpointing")).remat_tokens is False
    assert train_cli.step_options(_parse("--amp")).compute_dtype == "bfloat16"
    fs = _parse("--full-sample-bptt", "--full-sample-checkpoint-segment-size", "8", "--ltm-lr", "5e-4")
    o = train_cli.step_options(fs)
    assert (o.full_sample_bptt, o.ltm_training_mode, o.full_sample_remat, o.remat_tokens) == \
        (True, "read-only", True, False)                               # §5.7: read-only LTM, segment remat only
    assert (o.full_sample_segment_size, o.ltm_lr) == (8, 5e-4)
    ov = train_cli.config_overrides(fs, from_scratch=True)
    assert ov["detach_every_n_steps"] is None and ov["inference_logit_parity"] is True
    o = train_cli.step_options(_parse("--full-sample-bptt", "--no-full-sample-activation-checkpointing"))
    assert (o.full_sample_remat, o.remat_tokens) == (False, True)
    ov = train_cli.config_overrides(_parse("--context_dim", "48", "--detach-every-n-steps", "0"), from_scratch=False)
    assert ov == {"detach_every_n_steps": None}                        # shape keys only for a new model


@pytest.mark.parametrize(("argv", "needle"), [
    (["--full-sample-activation-checkpointing"], "needs --full-sample-bptt"),
    (["--accumulation-steps", "0"], "--accumulation-steps"),
    (["--steps", "0"], "--steps"),
    (["--model-path", "a", "--resume-from-ckpt", "b"], "either --model-path"),
    (["--model-path", "/nonexistent/model"], "/nonexistent/model"),
    (["--full-sample-bptt", "--full-sample-checkpoint-segment-size", "0"], "segment-size"),
])
def test_bad_options_give_one_line(capsys, tmp_path, argv, needle):
    assert needle in _one_error(capsys, [*argv, "--out-dir", str(tmp_path / "o"), "--no-progress"])


def test_pytorch_only_options_are_accepted_with_a_warning(capsys, tmp_path):
    assert main(["train", "--compile", "--device", "cpu", "--threads", "2", "--no-cpu-chunked-lm-loss",
                 "--accumulation-steps", "0", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "warning: PyTorch-only option(s) ignored: --compile, --device, --no-cpu-chunked-lm-loss, --threads" in err


def test_weights_only_continuation_on_a_jsonl_file(tmp_path, tmp_path_factory):
    """--model-path (fresh optimizer and schedule, spec §8.4) + --train (the data pipeline)."""
    pytest.importorskip("hierarchos_jax.data")
    from hierarchos_jax.train import synthetic

    ref = reference_run(tmp_path_factory)
    tok = synthetic.save_tokenizer(tmp_path / "tok")
    rows = [{"text": f"{a}+{b}={str(a + b)[::-1]}"} for a in range(12) for b in range(3)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    argv = ["train", "--train", str(tmp_path / "data.jsonl"), "--tokenizer-path", str(tok), "--model-path",
            str(ref / "model"), "--batch-size", "2", "--max-length", "16", "--training-chunk-size", "16",
            "--steps", "3", "--save-every", "2", "--starting-lr", "1e-3", "--warmup-steps", "1",
            "--ltm-training-mode", "read-only", "--no-progress"]
    run_train(tmp_path_factory, out, argv)
    got = step_lines(read_metrics(out))
    assert [x["step"] for x in got] == [1, 2, 3] and all(x["tokens_per_s"] > 0 for x in got)
    sched = make_schedule(OptimConfig(starting_lr=1e-3, min_lr=1e-6, warmup_steps=1, total_updates=3))
    assert [x["lr"] for x in got] == [float(sched(u)) for u in range(3)]      # fresh optimizer and schedule
    meta = json.loads((out / "checkpoints" / "3" / "meta" / "metadata").read_text())
    assert meta["extra"]["batch_counter"] == 3 and meta["data_state"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "3", "tokenizer"]
    cfg = json.loads((out / "model" / "hierarchos_config.json").read_text())
    assert cfg["vocab_size"] == 13 and cfg["inference_logit_parity"] is True     # the base's config
    base, new = load_file(str(ref / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert base.keys() == new.keys() and any(not np.array_equal(base[k], new[k]) for k in base)
