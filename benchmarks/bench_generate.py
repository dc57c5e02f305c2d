#!/usr/bin/env python
"""Generation speed of :class:`hierarchos_jax.infer.GenerationEngine` on the current backend.

    python benchmarks/bench_generate.py [--presets tiny,hierarchos-232m] [--new-tokens N]
                                        [--batch 32] [--quick] [--json OUT]
                                        [--reference REF_DIR --ref-python PATH]

For each preset (random init, the preset's own eval policies — the shipped presets are
legacy checkpoints, i.e. eval early exits as in the reference's 232M figure) and a random
16-token prompt:

* **batch 1**: ms per generated token, greedy and sampled (T 0.7, top-k 40, top-p 0.9,
  repetition penalty 1.2). ``ms/token`` is the end-to-end wall time of the decode loop
  divided by the decode calls (each call feeds one token and chooses the next; the host
  ROSA update, the stop checks and reading the id back are inside); ``step`` is the
  median of the engine's own per-call time (dispatch to sampled id on the host).
* **batch B** (default 32): tokens per second = B x decode calls / decode wall time, for
  ``independent`` rows (vmap: any prompt lengths, each row = its batch-1 run) and a
  ``joint`` batch (one batched forward, equal prompt lengths, batch-global early exits).

Every configuration runs once to compile (reported as ``compile_s``: first run minus
steady run) and then ``--repeats`` times; medians are reported. EOS is disabled so every
run produces the same number of tokens. The table goes to stdout, the JSON to
``benchmarks/results/generate-<backend>.json``. With ``--reference`` the PyTorch
reference's generation figure (``/work/shared/bench/reference_bench.py --which gen``: the
same 232M shapes, batch 1, 16-token prompt, greedy, one forward per token) is measured
right after ours on the same machine and the ratio is printed — machines of one kind
differ by up to 3x, so only a side-by-side ratio means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _host import host_facts  # noqa: E402  (benchmarks/_host.py, beside this script)
PROMPT_LEN = 16
SAMPLED = dict(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=0)
REFERENCE_BENCH = Path("/work/shared/bench/reference_bench.py")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def environment() -> dict:
    import jax

    return {**host_facts(), "backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()]}


def measure(engine, prompts, sampling, stop, *, batch_mode, repeats) -> dict:
    """Warm-up (compiles) then ``repeats`` timed runs of one configuration."""
    def once():
        t0 = time.perf_counter()
        results = engine.generate_batch(prompts, sampling, stop, batch_mode=batch_mode)
        wall = time.perf_counter() - t0
        r = results[0]
        calls = len(r.step_s)
        return {"wall_s": wall, "prefill_s": r.prefill_s, "calls": calls,
                "decode_s": wall - r.prefill_s, "step_median_s": statistics.median(r.step_s)}

    first = once()
    runs = [once() for _ in range(repeats)]
    med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
    B, calls = len(prompts), runs[0]["calls"]
    decode_s = med("decode_s")
    return {
        "batch": B, "batch_mode": batch_mode, "new_tokens": calls, "repeats": repeats,
        "ms_per_token": 1e3 * decode_s / calls,
        "step_ms": 1e3 * med("step_median_s"),
        "tokens_per_s": B * calls / decode_s,
        "prefill_ms": 1e3 * med("prefill_s"),
        "compile_s": first["wall_s"] - med("wall_s"),
        "load_avg_1m": os.getloadavg()[0],
    }


def bench_preset(name: str, *, new_tokens: int, batch: int, repeats: int) -> dict:
    import numpy as np
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.infer import GenerationEngine, SamplingParams, StopConditions
    from hierarchos_jax.model.hierarchos import Hierarchos

    cfg = HierarchosConfig.from_preset(name)
    t0 = time.perf_counter()
    engine = GenerationEngine(Hierarchos(cfg, rngs=nnx.Rngs(0)), cfg)
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, PROMPT_LEN)] for _ in range(batch)]
    greedy, sampled = SamplingParams(temperature=0.0), SamplingParams(**SAMPLED)
    stop = StopConditions(max_new_tokens=new_tokens + 1, eos_ids=())  # +1: the first token comes from prefill
    out = {"preset": name, "param_count": cfg.param_count(), "model_init_s": init_s,
           "exact_checkpoint": engine.exact, "prompt_len": PROMPT_LEN}
    rows = {}
    for label, prompts_, sampling, mode in (
            ("batch1_greedy", prompts[:1], greedy, "independent"),
            ("batch1_sampled", prompts[:1], sampled, "independent"),
            (f"batch{batch}_independent_greedy", prompts, greedy, "independent"),
            (f"batch{batch}_joint_greedy", prompts, greedy, "joint")):
        log(f"{name}: {label} ...")
        rows[label] = measure(engine, prompts_, sampling, stop, batch_mode=mode,
                              repeats=repeats if len(prompts_) == 1 else max(1, repeats // 2))
        log(f"  {json.dumps(rows[label])}")
    out["runs"] = rows
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def table(results: list[dict], batch: int) -> str:
    lines = ["| preset | params | batch 1 greedy (ms/token) | batch 1 sampled (ms/token) | "
             f"batch {batch} independent (tokens/s) | batch {batch} joint (tokens/s) | prefill 16 tok (ms) | "
             "compile (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        runs = r["runs"]
        g, s = runs["batch1_greedy"], runs["batch1_sampled"]
        ind, joint = runs[f"batch{batch}_independent_greedy"], runs[f"batch{batch}_joint_greedy"]
        lines.append(f"| {r['preset']} | {r['param_count'] / 1e6:.1f}M | {g['ms_per_token']:.2f} "
                     f"(step {g['step_ms']:.2f}) | {s['ms_per_token']:.2f} | {ind['tokens_per_s']:.0f} | "
                     f"{joint['tokens_per_s']:.0f} | {g['prefill_ms']:.1f} | {g['compile_s']:.1f} |")
    return "\n".join(lines)


def run_reference(ref_dir: str, ref_python: str, device: str) -> dict:
    cmd = [ref_python, str(REFERENCE_BENCH), ref_dir, "--device", device, "--threads", "2", "--which", "gen"]
    log(f"== reference: {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["generation"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,hierarchos-232m", help="comma-separated presets")
    ap.add_argument("--new-tokens", type=int, default=64, help="decode calls per run (default 64)")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the throughput rows (default 32)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (default 5)")
    ap.add_argument("--quick", action="store_true", help="8 new tokens, 1 repeat (smoke test)")
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/generate-<backend>.json)")
    ap.add_argument("--reference", metavar="REF_DIR", default=None, help="reference source dir: measure it too")
    ap.add_argument("--ref-python", default=sys.executable, help="python of a venv with the reference's torch")
    a = ap.parse_args(argv)
    if a.quick:
        a.new_tokens, a.repeats = 8, 1
    env = environment()
    results = [bench_preset(p, new_tokens=a.new_tokens, batch=a.batch, repeats=a.repeats)
               for p in a.presets.split(",") if p]
    reference = None
    if a.reference:
        reference = run_reference(a.reference, a.ref_python, "cuda" if env["backend"] == "gpu" else "cpu")
    env["load_avg_end"] = list(os.getloadavg())
    out = Path(a.json) if a.json else HERE / "results" / f"generate-{env['backend']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "quick": a.quick, "results": results,
                               "reference_generation": reference}, indent=2) + "\n")
    print(f"{env['date']}  jax {env['jax']}  backend {env['backend']} ({', '.join(env['devices'])})  "
          f"host {env['host_cpu']} x{env['host_cores']}  load {env['load_avg'][0]:.1f}->{env['load_avg_end'][0]:.1f}"
          + ("  [quick]" if a.quick else ""))
    print(table(results, a.batch))
    ours = next((r["runs"]["batch1_greedy"] for r in results if r["preset"] == "hierarchos-232m"), None)
    if reference is not None and ours is not None:
        ref_ms = reference["median_ms_per_token"]
        print(f"reference (PyTorch, same machine, just after): 232M batch 1 {ref_ms:.2f} ms/token -> ours "
              f"{ours['ms_per_token']:.2f} end-to-end ({ref_ms / ours['ms_per_token']:.1f}x), "
              f"{ours['step_ms']:.2f} per call ({ref_ms / ours['step_ms']:.1f}x)")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
