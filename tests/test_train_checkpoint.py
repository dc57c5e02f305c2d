"""Orbax checkpoints of 'hierarchos train': verified manifests, refusal of corrupted or partial
checkpoints (one-line errors, nothing loaded), and ckpt-2-inf inference directories."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from hierarchos_cli.main import main
from hierarchos_jax.io.model_dir import load_model_dir
from hierarchos_jax.io.reference_state import export_state_dict
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.train.checkpoint import (MANIFEST, CheckpointError, Checkpoints, state_target,
                                             verify_step_dir)

from test_train_resume import ARGS, STEPS, reference_run, run_train  # noqa: E402 - the shared run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return reference_run(tmp_path_factory)


def _copy_run(run_dir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hierarchos: error: "), err
    return err[0]


def test_run_writes_committed_manifested_checkpoints_keeping_the_last_two(run_dir):
    ck = run_dir / "checkpoints"
    steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert steps == [STEPS - 2, STEPS]
    assert not [p for p in ck.iterdir() if "tmp" in p.name]
    manifest = verify_step_dir(ck / str(STEPS))
    assert manifest["step"] == STEPS and len(manifest["files"]) > 5
    meta = json.loads((ck / str(STEPS) / "meta" / "metadata").read_text())
    assert meta["step"] == STEPS and meta["extra"]["batch_counter"] == STEPS
    assert meta["data_state"]["kind"] == "synthetic"
    # the checkpointed parameters are the final inference directory's
    loaded = load_model_dir(run_dir / "model")
    graphdef, abs_params, abs_rest = nnx.split(nnx.eval_shape(lambda: Hierarchos(loaded.config, rngs=nnx.Rngs(0))),
                                               nnx.Param, ...)
    mngr = Checkpoints(ck, async_save=False, read_only=True)
    try:
        r = mngr.restore(STEPS, params=abs_params, state=state_target(abs_rest))
    finally:
        mngr.close()
    assert int(r.counters.updates) == STEPS and int(r.counters.skipped) == 0
    got = jax.tree_util.tree_leaves(r.params)
    want = jax.tree_util.tree_leaves(nnx.state(loaded.model, nnx.Param))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_manifest", "delete_file"])
def test_damaged_checkpoint_is_refused_with_one_line(run_dir, tmp_path, capsys, damage):
    run = _copy_run(run_dir, tmp_path)
    step = run / "checkpoints" / str(STEPS)
    files = json.loads((step / MANIFEST).read_text())["files"]
    victim = step / max(files, key=lambda k: files[k]["bytes"])           # the biggest data file
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x40
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-7])
    elif damage == "delete_manifest":
        (step / MANIFEST).unlink()
    else:
        victim.unlink()
    with pytest.raises(CheckpointError, match=str(step)):
        verify_step_dir(step)
    want = {"flip": "SHA-256", "truncate": "bytes", "delete_manifest": "manifest", "delete_file": "missing"}[damage]
    # re-running the run's command resumes from the newest step: refused, nothing written
    before = (run / "metrics.jsonl").read_text()
    line = _cli_error(capsys, [*ARGS, "--out-dir", str(run)])
    assert str(step) in line and want in line
    assert (run / "metrics.jsonl").read_text() == before
    line = _cli_error(capsys, ["ckpt-2-inf", str(step), "--out-dir", str(tmp_path / "inf")])
    assert str(step) in line and want in line
    assert not (tmp_path / "inf").exists()


def test_resume_with_different_batch_size_is_refused(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path)
    argv = [*ARGS, "--out-dir", str(run)]
    argv[argv.index("--batch-size") + 1] = "3"
    line = _cli_error(capsys, argv)
    assert "batch_size=2" in line and "batch_size=3" in line


def test_ckpt_2_inf_writes_a_loadable_inference_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "inf"
    assert main(["ckpt-2-inf", str(run_dir / "checkpoints" / str(STEPS - 2)), "--out-dir", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {"hierarchos_config.json", "model.safetensors", "hierarchos.pt", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    # the earlier step's weights differ from the final ones; the .pt and safetensors agree
    a = load_file(str(out / "model.safetensors"))
    final = load_file(str(run_dir / "model" / "model.safetensors"))
    assert any(not np.array_equal(a[k], final[k]) for k in a)
    via_pt = load_model_dir(out / "hierarchos.pt")            # the reference layout (conformance importer)
    sd = export_state_dict(via_pt.model)
    for k, v in a.items():
        np.testing.assert_array_equal(np.asarray(sd[k]), v, err_msg=k)
    cfg = json.loads((out / "hierarchos_config.json").read_text())
    assert cfg["vocab_size"] == 13 and str(run_dir / "checkpoints" / str(STEPS - 2)) in cfg["converted_from"]
    # the run directory as input means its newest step; it generates (greedy) without error
    assert main(["ckpt-2-inf", str(run_dir), "--out-dir", str(tmp_path / "inf6")]) == 0
    b = load_file(str(tmp_path / "inf6" / "model.safetensors"))
    for k in b:
        np.testing.assert_array_equal(b[k], final[k], err_msg=k)
    from hierarchos_jax.train.loop import greedy_complete

    outs = greedy_complete(load_model_dir(tmp_path / "inf6").model, [[1, 11, 2, 12]], max_new=3, eos_id=0)
    assert len(outs[0]) >= 1


def test_ckpt_2_inf_refuses_a_tokenizer_of_another_size(run_dir, tmp_path, capsys):
    from tokenizers import Tokenizer, models

    tok = tmp_path / "tok"
    tok.mkdir()
    Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1, "b": 2}, unk_token="<|endoftext|>")).save(
        str(tok / "tokenizer.json"))
    (tok / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    line = _cli_error(capsys, ["ckpt-2-inf", str(run_dir), "--out-dir", str(tmp_path / "x"), "--tokenizer-path",
                               str(tok)])
    assert "3 tokens" in line and "vocab_size is 13" in line
    assert not (tmp_path / "x").exists()


def test_leftover_temporary_step_from_a_kill_is_ignored_and_cleaned(run_dir, tmp_path, tmp_path_factory):
    run = _copy_run(run_dir, tmp_path)
    ck = run / "checkpoints"
    shutil.rmtree(ck / str(STEPS))                          # killed while the last step was being written:
    junk = ck / f"{STEPS}.orbax-checkpoint-tmp"             # only Orbax's temporary directory is left
    (junk / "params").mkdir(parents=True)
    (junk / "params" / "half").write_bytes(b"\0" * 10)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 9, "lo')
    r = run_train(tmp_path_factory, run)
    assert f"resuming from {ck / str(STEPS - 2)}" in r.stdout
    assert sorted(p.name for p in ck.iterdir() if p.name != "tokenizer") == [str(STEPS - 2), str(STEPS)]
    got = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert got == [x["loss"] for x in lines]                # the last two steps recomputed bit for bit
