"""The conformance tool on the tiny reference case: every run, every golden array."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np


def test_conformance_tool_passes_on_tiny(reference_case_dir, tmp_path):
    out = tmp_path / "tiny_out.npz"
    proc = subprocess.run([sys.executable, "-m", "hierarchos_jax.conformance", str(reference_case_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    case = json.loads((reference_case_dir / "case.json").read_text())
    produced = np.load(out)
    golden = np.load(reference_case_dir / "golden.npz")
    expected = [n for n in case["golden_arrays"] if not n.startswith(("in_", "gen_prompt_ids", "gen_in_ltm_"))]
    assert sorted(produced.files) == sorted(expected)
    # discrete decisions are exact
    for name in expected:
        if name.endswith(("_topk_idx", "_rosa_ids", "_worker_steps", "_h_ponder_steps")) or name == "gen_generated_ids":
            np.testing.assert_array_equal(produced[name], golden[name], err_msg=name)
    assert "FAIL" not in proc.stdout and "MISSING" not in proc.stdout


def test_conformance_compares_only_what_the_golden_holds_and_fails_on_a_wrong_one(reference_case_dir, tmp_path):
    """A golden with inputs plus a few (tampered) outputs: every output is still written,
    only the stored ones are compared, and a wrong one makes the tool exit 1."""
    case = tmp_path / "tampered"
    shutil.copytree(reference_case_dir, case)
    golden = np.load(reference_case_dir / "golden.npz")
    kept = {k: golden[k] for k in golden.files if k.startswith(("in_", "gen_prompt_ids", "gen_in_ltm_"))}
    kept["eval_worker_steps"] = golden["eval_worker_steps"] + 1
    kept["train_loss"] = golden["train_loss"] + 1e-3
    kept["eval_logits"] = golden["eval_logits"]
    (case / "golden.npz").chmod(0o644)
    np.savez_compressed(case / "golden.npz", **kept)
    out = tmp_path / "o.npz"
    proc = subprocess.run([sys.executable, "-m", "hierarchos_jax.conformance", str(case), "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL  eval_worker_steps" in proc.stdout and "FAIL  train_loss " in proc.stdout
    assert "ok    eval_logits" in proc.stdout
    assert "conformance: 1 arrays within tolerance, 2 outside or missing" in proc.stdout
    filled = np.load(out)
    np.testing.assert_array_equal(filled["gen_generated_ids"], golden["gen_generated_ids"])


def _synthetic_case(root, config_changes, *, seed=0, batch=2, T=10, pad_row_from=7):
    """A case in the fixture format for a model we make: inputs only (no reference outputs)."""
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.io.model_dir import save_model_dir
    from hierarchos_jax.model.hierarchos import Hierarchos

    cfg = HierarchosConfig.from_preset("tiny").replace(**config_changes)
    save_model_dir(Hierarchos(cfg, rngs=nnx.Rngs(seed)), root / "model")
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (batch, T))
    ids[1, 2:8] = [5, 6, 5, 6, 5, 6]
    mask = np.ones_like(ids)
    mask[-1, pad_row_from:] = 0
    ids[mask == 0] = 0
    labels = np.where(mask == 1, ids, -100)
    S, D = cfg.ltm_slots, cfg.ltm_val_dim
    inputs = {
        "in_input_ids": ids, "in_attention_mask": mask, "in_labels": labels,
        "in_ltm_fast_vals": rng.normal(0, 0.05, (batch, S, D)).astype(np.float32),
        "in_ltm_mom_vals": rng.normal(0, 0.01, (batch, S, D)).astype(np.float32),
        "in_ltm_timestamps": rng.uniform(0, 50, (batch, S)).astype(np.float32),
        "in_ltm_sources": np.zeros((batch, S), np.int64),
        "gen_prompt_ids": ids[0, :6], "gen_in_ltm_fast_vals": np.zeros((S, D), np.float32),
        "gen_in_ltm_mom_vals": np.zeros((S, D), np.float32), "gen_in_ltm_timestamps": np.zeros((S,), np.float32),
    }
    np.savez_compressed(root / "golden.npz", **inputs)
    chunks = [[0, 3], [3, 7], [7, T]]
    runs = {"eval": {"inference_logit_parity": cfg.inference_logit_parity},
            "evalalt": {"inference_logit_parity": not cfg.inference_logit_parity},
            "train": {}, "mc_eval": {"chunks": chunks}, "mc_train": {"chunks": chunks},
            "gen": {"max_new_tokens": 5}}
    names = []
    for run in ("eval_", "evalalt_", "train_", "mc_eval_", "mc_train_"):
        names += [run + n for n in ("logits", "h_state", "l_state", "prev_context", "target_context",
                                    "drift_state", "worker_steps", "h_ponder_steps")]
        if cfg.use_rosa:
            names += [run + "rosa_ids", run + "rosa_past_tokens"]
    names += ["eval_topk_idx", "eval_topk_vals", "train_loss", "train_ponder_cost", "train_commitment_cost",
              "train_loss_chunked", "mc_train_loss", "mc_train_ponder_cost", "mc_train_commitment_cost",
              "gen_generated_ids", "gen_step_logits", "gen_worker_steps", "gen_h_ponder_steps", "evalalt_logits_last"]
    names += ["train_grad__in_proj.weight"] + list(inputs)
    (root / "case.json").write_text(json.dumps({"case": "synthetic", "runs": runs,
                                                "golden_arrays": {n: {} for n in names}}))
    return cfg, inputs


def test_conformance_runs_a_v7_case_with_padding_three_chunks_and_auto_head_size(tmp_path):
    """Other configs in the fixture format: ROSA, DeepEmbed and routers off, rwkv_head_size null
    (auto rule), legacy eval (parity off), padded rows, three TBPTT chunks, CLI-default warm-up."""
    cfg, inputs = _synthetic_case(tmp_path, dict(
        use_rosa=False, use_deepembed=False, memory_token_routers=False, rwkv_head_size=None,
        context_dim=24, h_hidden=24, l_hidden=24, inference_logit_parity=False,
        memory_gate_warmup_steps=2000, memory_gate_warmup_floor=0.1, h_stride=3))
    assert cfg.h_head_size == 24
    out = tmp_path / "filled.npz"
    proc = subprocess.run([sys.executable, "-m", "hierarchos_jax.conformance", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = np.load(out)
    assert not any("rosa" in n for n in got.files)
    assert got["mc_train_loss"].shape == (3,) and np.all(np.isfinite(got["mc_train_loss"]))
    # The first TBPTT chunk sees no seed, so it equals the prefix of the whole-sequence run.
    np.testing.assert_allclose(got["mc_eval_logits"][:, :3], got["eval_logits"][:, :3], atol=1e-5)
    np.testing.assert_array_equal(got["mc_eval_worker_steps"][:3], got["eval_worker_steps"][:3])
    # Later chunks start from a seeded drift, so they differ from the uninterrupted run.
    assert np.abs(got["mc_eval_logits"][:, 3:] - got["eval_logits"][:, 3:]).max() > 1e-6
    np.testing.assert_array_equal(got["evalalt_logits_last"], got["evalalt_logits"][:, -1])
    planned = [t for t in range(10) if t % 3 == 0]
    assert got["eval_h_ponder_steps"].shape == (len(planned),)
    assert got["gen_generated_ids"].shape[0] <= 5 and got["gen_step_logits"].shape[1] == cfg.vocab_size
