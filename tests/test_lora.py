"""LoRA as a pure transform: targets, init, apply, merge (numpy oracle), adapter files."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.train import lora as L
from hierarchos_jax.train.optimizer import path_name

# The 21 Linear layers the reference's PEFT config adapts (spec training.md §7).
REFERENCE_ADAPTED = sorted(
    [f"{c}.{n}" for c in ("h_rnn", "l_rnn") for n in ("key", "value", "receptance", "output", "key_cm", "value_cm")]
    + ["qproj", "in_proj", "h_to_context", "l_input_proj", "l_to_out", "h_halt_proj", "context_drift_proj",
       "l_feedback_proj", "val_proj"])


@pytest.fixture(scope="module")
def params():
    cfg = dataclasses.replace(HierarchosConfig.from_preset("tiny"), vocab_size=13)
    _, p, _ = nnx.split(Hierarchos(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    return p


def flat(tree):
    return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def random_lora(params, spec, seed=1):
    """An adapter with non-zero B (a trained-looking one)."""
    lo = L.init_lora(params, spec, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    for ab in lo["adapters"].values():
        ab["B"] = rng.normal(0, 0.1, np.shape(ab["B"])).astype(np.float32)
    lo["saved"] = {k: np.asarray(v) + rng.normal(0, 0.1, np.shape(v)).astype(np.float32)
                   for k, v in lo["saved"].items()}
    return lo


def test_targets_are_the_reference_21_layers_and_the_ltm(params):
    spec = L.LoraSpec()
    assert sorted(p[: -len(".kernel")] for p in L.target_paths(params, spec)) == REFERENCE_ADAPTED
    assert sorted(L.saved_paths(params, spec)) == ["ltm.keys", "ltm.vals"]


def test_init_shapes_distribution_and_identity(params):
    spec = L.LoraSpec(rank=4, alpha=8)
    lo = L.init_lora(params, spec, jax.random.key(0))
    f = flat(params)
    for name, ab in lo["adapters"].items():
        fan_in, fan_out = f[name].shape
        a, b = np.asarray(ab["A"]), np.asarray(ab["B"])
        assert a.shape == (4, fan_in) and b.shape == (fan_out, 4)
        assert np.all(b == 0) and np.abs(a).max() <= 1 / np.sqrt(fan_in) and np.abs(a).max() > 0.5 / np.sqrt(fan_in)
    # B = 0: the adapted model is the base model, bit for bit (with and without dropout).
    for key in (None, jax.random.key(3)):
        out = flat(L.apply_lora(params, lo, spec, dropout_key=key))
        assert out.keys() == f.keys()
        for k in f:
            np.testing.assert_array_equal(out[k], f[k], err_msg=k)


def test_apply_and_merge_against_torch_layout_oracle(params):
    spec = L.LoraSpec(rank=3, alpha=7)
    lo = random_lora(params, spec)
    base = flat(params)
    applied = flat(jax.jit(lambda p, l: L.apply_lora(p, l, spec))(params, lo))
    merged = flat(L.merge_lora(params, lo, spec))
    for name, w in base.items():
        if name in lo["adapters"]:
            A = np.asarray(lo["adapters"][name]["A"], np.float64)
            B = np.asarray(lo["adapters"][name]["B"], np.float64)
            w_torch = w.T.astype(np.float64)                     # reference layout [out, in]
            want = (w_torch + (7 / 3) * (B @ A)).astype(np.float32).T
            np.testing.assert_array_equal(merged[name], want, err_msg=name)
            np.testing.assert_allclose(applied[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
            assert not np.array_equal(merged[name], w)
        elif name in lo["saved"]:
            np.testing.assert_array_equal(merged[name], lo["saved"][name])
            np.testing.assert_array_equal(applied[name], lo["saved"][name])
        else:
            np.testing.assert_array_equal(merged[name], w, err_msg=name)
            np.testing.assert_array_equal(applied[name], w, err_msg=name)


def test_dropout_drops_adapter_input_features(params):
    spec = L.LoraSpec(rank=2, alpha=2, dropout=0.5)
    lo = random_lora(params, spec)
    name = "qproj.kernel"
    w = flat(params)[name]
    got = flat(L.apply_lora(params, lo, spec, dropout_key=jax.random.key(7)))[name] - w
    a, b = np.asarray(lo["adapters"][name]["A"]), np.asarray(lo["adapters"][name]["B"])
    full = (b @ a).T                                         # [in, out]
    kept = [i for i in range(full.shape[0]) if np.abs(got[i]).max() > 0]
    assert 0 < len(kept) < full.shape[0]                     # some input features dropped, some kept
    np.testing.assert_allclose(got[kept], 2.0 * full[kept], rtol=1e-5, atol=1e-6)   # kept ones scaled 1/(1-p)


def test_unlock_percent_rank_formula(params):
    f = flat(params)
    total = sum(v.size for v in f.values())
    per_r = sum(sum(f[f"{n}.kernel"].shape) for n in ("qproj", "in_proj", "val_proj", "h_to_context", "l_to_out",
                                                      "h_halt_proj"))
    assert L.unlock_percent_rank(params, 2.0) == max(1, round(total * 0.02 / per_r))


def test_adapter_files_round_trip_with_peft_names(params, tmp_path):
    spec = L.LoraSpec(rank=3, alpha=6, dropout=0.0)
    lo = random_lora(params, spec)
    L.save_adapter(tmp_path, lo, spec, base={"path": "base", "shape_sha256": L.shape_signature(params)})
    from safetensors.numpy import load_file

    keys = set(load_file(str(tmp_path / L.ADAPTER_WEIGHTS)))
    assert "base_model.model.h_rnn.key.lora_A.weight" in keys and "base_model.model.ltm.keys" in keys
    assert len(keys) == 2 * 21 + 2
    cfg = json.loads((tmp_path / L.ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 6 and cfg["modules_to_save"] == ["ltm"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]          # no temp files left
    lo2, spec2, _ = L.load_adapter(tmp_path)
    assert spec2.scale == spec.scale
    L.check_fits(params, lo2)
    np.testing.assert_array_equal(np.asarray(flat(L.merge_lora(params, lo2, spec2))["in_proj.kernel"]),
                                  np.asarray(flat(L.merge_lora(params, lo, spec))["in_proj.kernel"]))


def test_mismatched_adapter_is_refused(params):
    spec = L.LoraSpec(rank=2)
    other_cfg = dataclasses.replace(HierarchosConfig.from_preset("tiny"), vocab_size=13, ltm_topk=3)
    _, other, _ = nnx.split(Hierarchos(other_cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    lo = L.init_lora(other, spec, jax.random.key(0))
    with pytest.raises(L.AdapterError, match="in_proj.*different base model"):
        L.check_fits(params, lo)


def test_adapter_decay_groups_follow_the_reference_rule(params):
    from hierarchos_jax.train.finetune import adapter_decay_mask

    mask = adapter_decay_mask(L.init_lora(params, L.LoraSpec(rank=2), jax.random.key(0)))
    assert mask["saved"] == {"ltm.keys": False, "ltm.vals": False}            # LTM copy: no decay
    for name, ab in mask["adapters"].items():
        assert ab == {"A": name != "val_proj.kernel", "B": name != "val_proj.kernel"}, name


def test_reads_a_reference_peft_adapter(params, tmp_path):
    """PEFT's layout: lora_A/lora_B per module, the LTM copy with its buffers, integer alpha."""
    from safetensors.numpy import save_file

    spec = L.LoraSpec(rank=2, alpha=4)
    lo = random_lora(params, spec)
    tensors = {}
    for name, ab in lo["adapters"].items():
        m = name[: -len(".kernel")]
        tensors[f"base_model.model.{m}.lora_A.weight"] = np.asarray(ab["A"])
        tensors[f"base_model.model.{m}.lora_B.weight"] = np.asarray(ab["B"])
    for name, v in lo["saved"].items():
        tensors[f"base_model.model.{name}"] = np.asarray(v)
    tensors["base_model.model.ltm.fast_vals"] = np.zeros((16, 16), np.float32)
    tensors["base_model.model.ltm.timestamps"] = np.zeros((16,), np.float32)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "lora_dropout": 0.05, "bias": "none",
        "target_modules": list(L.DEFAULT_TARGETS), "modules_to_save": ["ltm"], "task_type": "CAUSAL_LM"}))
    lo2, spec2, _ = L.load_adapter(tmp_path)
    L.check_fits(params, lo2)
    assert spec2.scale == 2.0 and sorted(lo2["saved"]) == ["ltm.keys", "ltm.vals"]
    got, want = flat(L.merge_lora(params, lo2, spec2)), flat(L.merge_lora(params, lo, spec))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
