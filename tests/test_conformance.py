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
