"""Train-step throughput by step option (spec training.md §5.7, §5.8, §5.11).

Times :class:`hierarchos_jax.train.step.TrainStep` (forward + losses + backward + clip +
AdamW, one ``jax.jit``, params/optimizer state donated) on the ``small`` preset, batch
4 x 64, TBPTT chunks of 32, for each variant:

* ``read-only``    read-only LTM, per-token remat, float32 (the default step)
* ``inner-update`` Titans inner update of the working memory after every chunk
* ``full-sample``  full-sample BPTT, segments of ``--segment`` tokens under jax.checkpoint
* ``remat-off``    read-only without per-token remat
* ``bf16``         read-only, bfloat16 matmuls (fp32 masters, state and losses)

Batches (host ROSA included) are built before the timed region. Prints a table and writes
JSON (default ``benchmarks/results/train-<backend>.json``; ``results/`` is git-ignored).

    .venv/bin/python benchmarks/bench_train.py --repeats 3
    .venv/bin/python benchmarks/bench_train.py --variants read-only,bf16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.train.optimizer import OptimConfig, make_optimizer
from hierarchos_jax.train.step import (
    LossConfig,
    StepOptions,
    TrainStep,
    apply_full_sample_implications,
    make_batch,
    zero_counters,
)

VARIANTS = {
    "read-only": {},
    "inner-update": {"ltm_training_mode": "inner-update", "ltm_total_steps": 1000},
    "full-sample": {"full_sample_bptt": True},
    "remat-off": {"remat_tokens": False},
    "bf16": {"compute_dtype": "bfloat16"},
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def bench_variant(name, cfg, args, batches):
    options = StepOptions(full_sample_segment_size=args.segment, **VARIANTS[name])
    cfg, options = apply_full_sample_implications(cfg, options)
    model = Hierarchos(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = make_optimizer(OptimConfig(starting_lr=1e-4, total_updates=1000), params, cfg)
    opt_state = tx.init(params)
    step = TrainStep(graphdef, rest, cfg, LossConfig(chunk_size=args.chunk), tx, schedule, options)
    counters = zero_counters()

    t0 = time.perf_counter()
    params, opt_state, counters, m = step(params, opt_state, counters, batches[0])
    jax.block_until_ready(m.loss)
    first_s = time.perf_counter() - t0
    times, losses = [], []
    for i in range(args.warmup + args.repeats):
        batch = batches[(i + 1) % len(batches)]
        t0 = time.perf_counter()
        params, opt_state, counters, m = step(params, opt_state, counters, batch)
        loss = float(m.loss)  # waits for the step
        dt = time.perf_counter() - t0
        print(f"  {name} step {i}: {dt * 1e3:.0f} ms loss={loss:.4f}", file=sys.stderr, flush=True)
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss)
    med = statistics.median(times)
    tokens = args.batch * args.seq
    return {"variant": name, "tokens_per_s": tokens / med, "median_step_s": med, "step_s": times,
            "first_call_s": first_s, "losses": losses, "applied": bool(m.applied),
            "options": {k: getattr(options, k) for k in ("ltm_training_mode", "full_sample_bptt",
                                                          "full_sample_segment_size", "remat_tokens",
                                                          "compute_dtype")}}


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", help="preset name or config JSON (default: small)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--chunk", type=int, default=32, help="TBPTT chunk size (training_chunk_size)")
    p.add_argument("--segment", type=int, default=32, help="full-sample checkpoint segment size")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the compiling call")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    cfg = HierarchosConfig.from_preset(args.config)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(3):
        ids = rng.integers(1, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
        batches.append(make_batch(ids, ids, np.ones_like(ids), cfg.vocab_size, chunk_size=args.chunk))

    backend = jax.default_backend()
    machine = {"backend": backend, "device": str(jax.devices()[0].device_kind), "cpu": cpu_model(),
               "cpu_count": os.cpu_count(), "jax": jax.__version__}
    print(f"# {args.config} {args.batch}x{args.seq}, chunk {args.chunk}, segment {args.segment}; "
          f"{machine['device']} ({backend}); CPU {machine['cpu']}", flush=True)
    results = []
    for name in names:
        results.append(bench_variant(name, cfg, args, batches))
        r = results[-1]
        print(f"  {name}: {r['tokens_per_s']:.1f} tokens/s (first call {r['first_call_s']:.1f} s)", flush=True)

    base = next((r["tokens_per_s"] for r in results if r["variant"] == "read-only"), None)
    print("\n| variant | tokens/s | median step (ms) | vs read-only | first call (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        rel = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['variant']} | {r['tokens_per_s']:.1f} | {r['median_step_s'] * 1e3:.0f} | {rel} | "
              f"{r['first_call_s']:.1f} |")

    out = args.json or Path(__file__).resolve().parent / "results" / f"train-{backend}.json"
    write_json_atomic(out, {"config": args.config, "batch": args.batch, "seq": args.seq, "chunk": args.chunk,
                            "segment": args.segment, "repeats": args.repeats, "machine": machine,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
