"""Reference model directories in and out: import, export, round trip, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.io import model_dir, reference_state, torch_zip
from hierarchos_jax.model.hierarchos import Hierarchos

REFERENCE_SOURCE = Path("/work/ref")  # optional local checkout of the reference (never required)


def _reference_state_dict(case_dir: Path):
    payload = torch_zip.load_torch_file(case_dir / "model" / "hierarchos.pt")
    return payload, torch_zip.read_state_dict(payload)


def test_import_export_round_trip_is_bit_exact(reference_case_dir, tmp_path):
    payload, original = _reference_state_dict(reference_case_dir)
    out = model_dir.export_torch_dir(reference_case_dir / "model", tmp_path / "exported")
    again = torch_zip.read_state_dict(torch_zip.load_torch_file(out / "hierarchos.pt"))
    assert list(again) == list(original), "key order must follow the reference state dict"
    for name, ref in original.items():
        got = again[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert got.tobytes() == ref.tobytes(), f"{name} changed in the round trip"
    from safetensors.numpy import load_file

    st = load_file(str(out / "model.safetensors"))
    for name, ref in original.items():
        assert st[name].tobytes() == ref.tobytes(), name
    cfg_in = json.loads((reference_case_dir / "model" / "hierarchos_config.json").read_text())
    cfg_out = json.loads((out / "hierarchos_config.json").read_text())
    for key, value in cfg_in.items():
        if key != "converted_from":
            assert cfg_out[key] == value, key
    assert (out / "tokenizer.json").read_bytes() == (reference_case_dir / "model" / "tokenizer.json").read_bytes()
    # ours -> ours is a fixed point too
    out2 = model_dir.export_torch_dir(out, tmp_path / "exported2")
    third = torch_zip.read_state_dict(torch_zip.load_torch_file(out2 / "hierarchos.pt"))
    assert all(third[k].tobytes() == original[k].tobytes() for k in original)


def test_exported_directory_loads_in_pytorch(reference_case_dir, tmp_path):
    torch = pytest.importorskip("torch")
    out = model_dir.export_torch_dir(reference_case_dir / "model", tmp_path / "exported")
    ours = torch.load(out / "hierarchos.pt", weights_only=True)
    ref = torch.load(reference_case_dir / "model" / "hierarchos.pt", weights_only=True)
    assert set(ours) >= {"model_state_dict", "config", "completed_epoch", "training_complete"}
    assert list(ours["model_state_dict"]) == list(ref["model_state_dict"])
    for name, t in ref["model_state_dict"].items():
        assert torch.equal(ours["model_state_dict"][name], t), name
    tied = ours["model_state_dict"]
    assert tied["tok_emb.weight"].untyped_storage().data_ptr() == tied["lm_head.weight"].untyped_storage().data_ptr()


@pytest.mark.skipif(not (REFERENCE_SOURCE / "hierarchos" / "utils" / "checkpoint.py").exists(),
                    reason="reference source checkout not available")
def test_exported_directory_loads_through_the_reference_loader(reference_case_dir, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = model_dir.export_torch_dir(reference_case_dir / "model", tmp_path / "exported")
    script = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(REFERENCE_SOURCE)!r})\n"
        "from hierarchos.utils.checkpoint import load_full_model_with_config\n"
        f"model, cfg = load_full_model_with_config({str(out)!r}, torch.device('cpu'))[:2]\n"
        "print('params', sum(p.numel() for p in model.parameters()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "params 203469" in proc.stdout


def test_model_built_from_preset_round_trips_through_our_directory(tmp_path):
    cfg = HierarchosConfig.from_preset("tiny")
    model = Hierarchos(cfg, rngs=nnx.Rngs(3))
    out = model_dir.save_model_dir(model, tmp_path / "m")
    loaded = model_dir.load_model_dir(out)
    assert loaded.config == cfg
    a = nnx.state(model, nnx.Param)
    b = nnx.state(loaded.model, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # and through hierarchos.pt only (the reference layout)
    (out / "model.safetensors").unlink()
    again = model_dir.load_model_dir(out)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(nnx.state(again.model, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_state_dict_layout_matches_reference_count():
    cfg = HierarchosConfig.from_preset("hierarchos-232m")
    assert len(list(reference_state.state_dict_layout(cfg))) == 95
    v7 = cfg.replace(use_rosa=False, use_deepembed=False, memory_token_routers=False)
    names = [e.name for e in reference_state.state_dict_layout(v7)]
    assert not any(n.startswith(("rosa", "h_deepemb", "l_deepemb", "ltm_router")) for n in names)


def test_bad_directories_give_one_clear_error(reference_case_dir, tmp_path):
    with pytest.raises(model_dir.ModelDirError, match="no such model directory"):
        model_dir.load_model_dir(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(model_dir.ModelDirError, match="no model.safetensors or hierarchos.pt"):
        model_dir.load_model_dir(empty)
    broken = tmp_path / "broken"
    shutil.copytree(reference_case_dir / "model", broken)
    data = (broken / "hierarchos.pt").read_bytes()
    (broken / "hierarchos.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(torch_zip.TorchFileError):
        model_dir.load_model_dir(broken)
    wrong = model_dir.export_torch_dir(reference_case_dir / "model", tmp_path / "wrong")  # safetensors + JSON
    cfg = json.loads((wrong / "hierarchos_config.json").read_text())
    cfg["context_dim"] = cfg["h_hidden"] = cfg["l_hidden"] = 48
    (wrong / "hierarchos_config.json").write_text(json.dumps(cfg))
    with pytest.raises(reference_state.StateDictError, match="shape"):
        model_dir.load_model_dir(wrong)


def test_non_finite_weights_are_refused(tmp_path):
    cfg = HierarchosConfig.from_preset("tiny")
    model = Hierarchos(cfg, rngs=nnx.Rngs(0))
    sd = dict(reference_state.export_state_dict(model))
    sd["in_proj.bias"] = sd["in_proj.bias"].copy()
    sd["in_proj.bias"][0] = np.nan
    with pytest.raises(reference_state.StateDictError, match="in_proj.bias.*NaN"):
        reference_state.import_state_dict(Hierarchos(cfg, rngs=nnx.Rngs(1)), sd)


def test_failed_export_leaves_nothing_behind(reference_case_dir, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch_zip, "save_torch_file", boom)
    with pytest.raises(RuntimeError):
        model_dir.export_torch_dir(reference_case_dir / "model", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_training_checkpoint_file_loads(reference_case_dir, tmp_path):
    """A reference training checkpoint (optimizer state, epochs, config inside) loads directly."""
    payload, sd = _reference_state_dict(reference_case_dir)
    cfg = json.loads((reference_case_dir / "model" / "hierarchos_config.json").read_text())
    ckpt = {
        "model_state_dict": sd,
        "optimizer_state_dict": {"state": {0: {"step": np.float32(3.0).item(), "exp_avg": np.ones((2, 2), np.float32)}},
                                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]},
        "config": cfg,
        "epoch": 1,
        "completed_epoch": 0,
        "training_complete": False,
    }
    path = tmp_path / "train_checkpoint.pt"
    torch_zip.save_torch_file(path, ckpt)
    loaded = model_dir.load_model_dir(path)
    assert loaded.config.context_dim == 32 and loaded.metadata["training_complete"] is False
    ref = model_dir.load_model_dir(reference_case_dir / "model")
    for x, y in zip(jax.tree.leaves(nnx.state(loaded.model, nnx.Param)), jax.tree.leaves(nnx.state(ref.model, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
