"""Multiple-choice scoring speed: HierarchosLM.loglikelihood requests/s, batch 1 vs batched.

Requests: the local test task's documents (``tests/data/eval/tiny_mc.jsonl``, 4 choices
each), repeated with numbered questions to ``--docs`` documents, as lm-eval sends them
(``"Question: ...\\nAnswer:"`` + ``" choice"``). Each configuration runs once to compile,
then ``--repeats`` timed runs (best and median reported). Batched scores are checked to
equal the batch-1 scores (max |Δ| reported).

``--reference``: the PyTorch reference wrapper (``/work/ref``, run with
``/work/refvenv/bin/python``; its constructor is bypassed since lm-eval is not installed
there) on the first ``--ref-docs`` documents (it is slow) at batch 1 and at the best batch
size (at most its request count), plus the largest |Δ logprob| between its batch-1 scores
and ours (its batched scores differ from its own
batch-1 scores: the reference couples rows, spec evaluation.md §2.5).

    .venv/bin/python benchmarks/bench_eval.py --docs 32 --batch-sizes 1,8,32 --reference
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "eval" / "tiny_mc.jsonl"
DEFAULT_MODEL = ROOT.parent / "shared" / "fixtures" / "reference" / "tiny" / "model"

_REFERENCE_SCRIPT = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from transformers import AutoTokenizer
from hierarchos.evaluation.lm_eval_wrapper import HierarchosLM
from hierarchos.inference.chat import resolve_inference_prefill_chunk_size
from hierarchos.utils.checkpoint import load_full_model_with_config
torch.set_num_threads(int(sys.argv[5]))
model_dir, batches, repeats = sys.argv[2], [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4])
pairs = json.loads(sys.stdin.read())
loaded = load_full_model_with_config(model_dir, torch.device("cpu"))
model = loaded[0] if isinstance(loaded, tuple) else loaded
model.eval()
if hasattr(model, "suppress_hebbian"):
    model.suppress_hebbian = True
tok = AutoTokenizer.from_pretrained(model_dir)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
class Req:
    def __init__(self, args): self.args = args
out = {}
for b in batches:
    lm = HierarchosLM.__new__(HierarchosLM)
    lm.model, lm.tokenizer, lm.device, lm._batch_size = model, tok, torch.device("cpu"), b
    lm._max_length = getattr(model.config, "max_length", None) or 1024
    lm._prefill_chunk_size = resolve_inference_prefill_chunk_size(model.config)
    lm._eot_token_id = tok.eos_token_id if tok.eos_token_id is not None else (tok.pad_token_id or 0)
    reqs = [Req(tuple(p)) for p in pairs]
    times, scores = [], None
    for _ in range(repeats):
        t = time.perf_counter(); scores = lm.loglikelihood(reqs); times.append(time.perf_counter() - t)
    out[b] = {"best_s": min(times), "median_s": statistics.median(times), "scores": [s[0] for s in scores]}
print(json.dumps(out))
"""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def requests(docs: int) -> list[tuple[str, str]]:
    base = [json.loads(line) for line in DATA.read_text().splitlines()]
    pairs = []
    for i in range(docs):
        d = base[i % len(base)]
        q = d["question"] if i < len(base) else f"{d['question']} ({i})"
        pairs += [(f"Question: {q}\nAnswer:", f" {c}") for c in d["choices"]]
    return pairs


def ours(model_dir: str, pairs, batches: list[int], repeats: int) -> dict:
    from lm_eval.api.instance import Instance

    from hierarchos_jax.eval.lm import HierarchosLM

    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    out = {}
    for b in batches:
        lm = HierarchosLM(pretrained=model_dir, batch_size=b, show_progress=False)
        t = time.perf_counter()
        lm.loglikelihood(reqs, disable_tqdm=True)
        first = time.perf_counter() - t
        times, scores = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            scores = lm.loglikelihood(reqs, disable_tqdm=True)
            times.append(time.perf_counter() - t)
        out[b] = {"first_s": first, "best_s": min(times), "median_s": statistics.median(times),
                  "scores": [s[0] for s in scores]}
        log(f"ours batch {b}: {len(pairs) / min(times):.1f} req/s (first call incl. compile {first:.1f} s)")
    return out


def reference(model_dir: str, pairs, batches: list[int], repeats: int, ref_dir: str, ref_python: str,
              threads: int) -> dict:
    cmd = [ref_python, "-c", _REFERENCE_SCRIPT, ref_dir, model_dir, ",".join(map(str, batches)), str(repeats),
           str(threads)]
    proc = subprocess.run(cmd, input=json.dumps(pairs), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, check=True)
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=str(DEFAULT_MODEL), help="model directory (default: the tiny fixture)")
    ap.add_argument("--docs", type=int, default=32, help="multiple-choice documents (4 requests each)")
    ap.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    ap.add_argument("--reference", action="store_true", help="also time the PyTorch reference wrapper")
    ap.add_argument("--ref-docs", type=int, default=4, help="documents the reference scores (default 4)")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed reference runs (default 1)")
    ap.add_argument("--ref-dir", default="/work/ref")
    ap.add_argument("--ref-python", default="/work/refvenv/bin/python")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for the reference")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if 1 not in batches:
        batches = [1] + batches
    pairs = requests(args.docs)
    mine = ours(args.model_path, pairs, batches, args.repeats)
    base = mine[1]["scores"]
    rows = []
    for b, r in mine.items():
        dev = max(abs(x - y) for x, y in zip(r["scores"], base))
        rows.append({"impl": "jax", "batch": b, "req_s": len(pairs) / r["best_s"],
                     "req_s_median": len(pairs) / r["median_s"], "max_dev_vs_batch1": dev, "first_s": r["first_s"]})
    best = max((r for r in rows if r["batch"] != 1), key=lambda r: r["req_s"], default=rows[0])
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "model": args.model_path, "requests": len(pairs), "rows": rows,
              "speedup_best_vs_batch1": best["req_s"] / rows[0]["req_s"]}
    if args.reference:
        if not (Path(args.ref_dir).is_dir() and Path(args.ref_python).exists()):
            log(f"reference not run: {args.ref_dir} or {args.ref_python} missing")
        else:
            sub = pairs[:4 * args.ref_docs]
            ref = reference(args.model_path, sub, sorted({1, min(best["batch"], len(sub))}), args.ref_repeats,
                            args.ref_dir, args.ref_python, args.threads)
            for b, r in ref.items():
                rows.append({"impl": f"reference ({len(sub)} req)", "batch": b, "req_s": len(sub) / r["best_s"],
                             "req_s_median": len(sub) / r["median_s"],
                             "max_dev_vs_batch1": max(abs(x - y) for x, y in zip(r["scores"], ref[1]["scores"]))})
            result["max_abs_diff_batch1_vs_reference"] = max(abs(x - y) for x, y in zip(base, ref[1]["scores"]))
    print("| impl | batch | req/s (best) | req/s (median) | max abs dev vs own batch 1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['batch']} | {r['req_s']:.1f} | {r['req_s_median']:.1f} | "
              f"{r['max_dev_vs_batch1']:.2e} |")
    print(f"speed-up, best batch vs batch 1 (ours): {result['speedup_best_vs_batch1']:.2f}x")
    if "max_abs_diff_batch1_vs_reference" in result:
        print(f"max |logprob ours - reference| at batch 1: {result['max_abs_diff_batch1_vs_reference']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
