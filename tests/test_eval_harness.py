"""lm-eval end to end on a local multiple-choice task (no network), ``hierarchos
benchmark``, ``hierarchos perplexity``, the trainer's ``evaluate_model_dir``, the registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import lm_eval
import numpy as np
import pytest
from hierarchos_cli.main import main
from lm_eval.api.instance import Instance

from hierarchos_jax.eval import registry
from hierarchos_jax.eval.during_training import evaluate_model_dir
from hierarchos_jax.eval.encoding import encode_plain
from hierarchos_jax.eval.harness import flat_metrics, task_manager
from hierarchos_jax.eval.lm import HierarchosLM
from hierarchos_jax.eval.perplexity import read_documents

DATA = Path(__file__).parent / "data" / "eval"
TASK = "hierarchos_tiny_mc"


@pytest.fixture(scope="module")
def model_dir(reference_case_dir):
    return reference_case_dir / "model"


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    text = (DATA / "tiny_mc.yaml.in").read_text().replace("DATA_FILE", str(DATA / "tiny_mc.jsonl"))
    (d / "tiny_mc.yaml").write_text(text)
    return d


@pytest.fixture(scope="module")
def lm1(model_dir):
    return HierarchosLM(pretrained=str(model_dir), batch_size=1, show_progress=False)


def _docs():
    return [json.loads(line) for line in (DATA / "tiny_mc.jsonl").read_text().splitlines()]


def _expected_acc(lm) -> tuple[float, list]:
    """Accuracy from our own batch-1 scores of every (prompt, " choice") pair."""
    docs = _docs()
    reqs = [Instance("loglikelihood", {}, (f"Question: {d['question']}\nAnswer:", f" {c}"), 0)
            for d in docs for c in d["choices"]]
    scores = [lp for lp, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    k, hits = 0, 0
    for d in docs:
        s = scores[k:k + len(d["choices"])]
        hits += int(np.argmax(s)) == d["label"]
        k += len(d["choices"])
    return hits / len(docs), scores


def test_local_task_through_simple_evaluate(model_dir, include_dir, lm1):
    lm4 = HierarchosLM(pretrained=str(model_dir), batch_size=4, show_progress=False)
    with jax.default_matmul_precision("highest"):
        out = lm_eval.simple_evaluate(model=lm4, tasks=[TASK], task_manager=task_manager([TASK], include_dir),
                                      verbosity="ERROR")
        acc, scores = _expected_acc(lm1)
    res = out["results"][TASK]
    assert res["acc,none"] == pytest.approx(acc)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    logged = [resp[0][0] for s in samples for resp in s["resps"]]
    assert np.allclose(logged, scores, rtol=1e-5, atol=1e-5)  # batch 4 through lm-eval == batch 1
    assert flat_metrics(out)[f"{TASK}/acc"] == pytest.approx(acc)


def test_benchmark_command_writes_results(model_dir, include_dir, lm1, tmp_path, capsys):
    out_dir = tmp_path / "bench"
    with jax.default_matmul_precision("highest"):
        rc = main(["benchmark", "--model-path", str(model_dir), "--tasks", TASK, "--include-path", str(include_dir),
                   "--batch-size", "4", "--limit", "6", "--output-path", str(out_dir),
                   "--benchmark-run-name", "run 1/x"])
        assert rc == 0, capsys.readouterr().err
        docs = _docs()[:6]
        reqs = [Instance("loglikelihood", {}, (f"Question: {d['question']}\nAnswer:", f" {c}"), 0)
                for d in docs for c in d["choices"]]
        scores = [lp for lp, _ in lm1.loglikelihood(reqs, disable_tqdm=True)]
    run = out_dir / "run-1-x"
    results = json.loads((run / "results.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    summary = (run / "summary.md").read_text()
    acc = np.mean([int(np.argmax(scores[4 * i:4 * i + 4])) == d["label"] for i, d in enumerate(docs)])
    assert results["results"][TASK]["acc,none"] == pytest.approx(acc)
    assert len(results["samples"][TASK]) == 6
    assert manifest["tasks"] == [TASK] and manifest["unknown_raw_tasks"] == [TASK]
    assert manifest["failed_lm_eval_tasks"] == [] and manifest["limit"] == 6
    assert summary.startswith("# Hierarchos Benchmark Summary") and "acc,none" in summary
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "results.json", "summary.md"]
    assert "Combined Benchmark Results" in capsys.readouterr().out


def test_hub_task_offline_fails_in_one_line(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
    rc = main(["benchmark", "--model-path", str(model_dir), "--tasks", "arc_easy", "--limit", "2",
               "--output-path", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("hierarchos: error:")
    assert "arc_easy" in err and "allenai/ai2_arc" in err
    assert not (tmp_path / "out").exists()


def test_benchmark_usage_errors(model_dir, tmp_path, capsys):
    assert main(["benchmark", "--tasks", TASK]) == 1
    assert "--model-path" in capsys.readouterr().err
    assert main(["benchmark", "--model-path", str(tmp_path / "nope")]) == 1
    assert main(["benchmark", "--model-path", str(model_dir), "--benchmark-preset", "desktop"]) == 1
    assert "benchmark-preset" in capsys.readouterr().err
    assert main(["benchmark", "--list-benchmarks"]) == 0
    out = capsys.readouterr().out
    assert "rog-ally: arc_easy, hellaswag, truthfulqa_mc1" in out and "arc_agi" in out


def test_preset_fills_only_unset_options():
    from hierarchos_cli.benchmark import apply_preset
    from hierarchos_cli.main import build_parser

    args = build_parser().parse_args(["benchmark", "--model-path", "m", "--benchmark-preset", "ally"])
    apply_preset(args)
    assert (args.benchmark_suite, args.eval_limit, args.eval_batch_size, args.benchmark_sequential) == \
        (["rog-ally"], 25, 1, True)
    assert args.benchmark_out_dir == "./benchmark_results/rog_ally"
    args = build_parser().parse_args(["benchmark", "--model-path", "m", "--benchmark-preset", "local",
                                      "--eval-limit", "3", "--eval-tasks", "x", "--batch-size", "2"])
    apply_preset(args)
    assert (args.benchmark_suite, args.eval_limit, args.eval_batch_size) == (None, 3, 2)


def test_registry_resolution():
    r = registry.resolve(["rog-ally", "ARC-Easy", "gsm8k", "arc-agi", "my_task"])
    assert r.tasks == ["arc_easy", "hellaswag", "truthfulqa_mc1", "gsm8k_cot", "my_task"]
    assert [b.key for b in r.external] == ["arc_agi"] and r.unknown == ["my_task"]
    assert registry.canonical_name("Big-Bench-Hard") == "bbh"
    assert registry.resolve([], default_suite="commonsense").tasks == ["hellaswag", "arc_challenge", "arc_easy",
                                                                       "winogrande"]
    assert registry.SUITES["all-runnable"][0] == "mmlu" and "mmmu" not in registry.SUITES["all-runnable"]
    from hierarchos_jax.eval.benchmark import slugify

    assert slugify("  my run: #1/2 ") == "my-run-1-2"


def test_evaluate_model_dir_contract(model_dir, include_dir, lm1, tmp_path):
    out_json = tmp_path / "eval" / "step_10.json"
    with jax.default_matmul_precision("highest"):
        metrics = evaluate_model_dir(model_dir, [TASK], limit=8, batch_size=4, include_path=str(include_dir),
                                     out_json=out_json)
        acc, _ = _expected_acc(lm1)
    assert set(metrics) >= {f"{TASK}/acc", f"{TASK}/acc_norm", f"{TASK}/acc_stderr"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics[f"{TASK}/acc"] == pytest.approx(acc)
    saved = json.loads(out_json.read_text())
    assert "samples" not in saved and saved["results"][TASK]["acc,none"] == pytest.approx(acc)
    assert [p.name for p in out_json.parent.iterdir()] == ["step_10.json"]


def test_perplexity_command(model_dir, lm1, tmp_path, capsys):
    from test_eval_scoring import (
        _oracle_logits,  # the plain forward, compiled once for both modules
    )

    text = "User: What is the capital of France?\n\nAssistant: Paris."
    path = tmp_path / "doc.txt"
    path.write_text(text)
    with jax.default_matmul_precision("highest"):
        assert main(["perplexity", "--model-path", str(model_dir), "--data", str(path), "--json",
                     "--batch-size", "4"]) == 0
        got = json.loads(capsys.readouterr().out)
        ids = encode_plain(lm1.tokenizer, text)
        logits = _oracle_logits(lm1.model, [lm1.eot_token_id] + ids[:-1])
        logp = jax.nn.log_softmax(logits, axis=-1)[np.arange(len(ids)), np.array(ids)]
    nll = -float(np.sum(np.asarray(logp)))
    assert got["tokens"] == len(ids) and got["documents"] == 1
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-5)
    # JSONL: one document per line; a malformed line is one clear error.
    rows = tmp_path / "docs.jsonl"
    rows.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "world"}) + "\n")
    assert read_documents(rows) == ["hello", "world"]
    rows.write_text('{"text": "a"}\n{"txt": 1}\n')
    assert main(["perplexity", "--model-path", str(model_dir), "--data", str(rows)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "docs.jsonl:2" in err
    assert main(["perplexity", "--model-path", str(model_dir), "--data", str(tmp_path / "missing.txt")]) == 1
