#!/usr/bin/env python
"""WKV state step: the fused FFI kernel against the pure-JAX oracle, on the current backend.

    python benchmarks/bench_wkv.py [--shapes 2x16,7x64] [--batches 1,256] [--steps 32]
                                   [--repeats 5] [--no-backward] [--json OUT]

For every head shape ``HxN`` (heads x head size; defaults: the ``tiny`` preset's 2x16 and
the ``hierarchos-232m`` preset's 7x64) and batch size, and for each path (``jax`` = the
XLA-compiled oracle, ``ffi`` = the XLA FFI kernel of the running platform: the CPU target or
the CUDA kernel), it times ``--steps`` chained steps of ``wkv_step`` on the cell's packed
state (clip 50, as in the model) inside one ``jax.jit`` (a ``lax.fori_loop`` carrying the
state, so per-call dispatch is excluded) and reports the median over ``--repeats`` runs:

* ``fwd``: per-step time, the step rate (rows x steps / s) and the achieved state bandwidth
  = bytes of the packed state read + written per step (2 x B x H x N x (N+3) x 4) / time;
* ``fwd+bwd`` (unless ``--no-backward``): ``jax.grad`` through the same loop (custom_vjp for
  ``ffi``); bandwidth counts 5 state passes (forward read + write; backward reads P and gP',
  writes gP), a lower bound for both paths.

Runs on CPU or GPU unchanged; ``--json`` writes every row (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hierarchos_jax.kernels import wkv as K


def parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(p) for p in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError:
        raise SystemExit(f"bench_wkv: --shapes must look like 2x16,7x64; got {text!r}") from None


def make_inputs(batch: int, heads: int, n: int):
    rng = np.random.default_rng(0)
    lead = (batch, heads)
    P = jnp.asarray(rng.standard_normal((*lead, n, K.SLOTS + n)), jnp.float32)
    vec = lambda s: jnp.asarray(rng.standard_normal((*lead, n)) * s, jnp.float32)
    kk = vec(1.0)
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    return P, vec(1.0), vec(1.0), vec(1.0), vec(1.0), -kk, kk * 0.5


STATE_CLIP = 50.0


def loop_fn(impl: str, steps: int):
    """``steps`` chained WKV steps from packed state P; returns (sum of readouts, final P)."""

    def run(P, r, w, k, v, a, b):
        def body(_, carry):
            P, acc = carry
            y, P = K.wkv_step(P, r, w, k, v, a, b, clip=STATE_CLIP, impl=impl)
            return P, acc + y

        P, acc = jax.lax.fori_loop(0, steps, body, (P, jnp.zeros_like(r)))
        return acc, P

    return run


def time_call(fn, args, repeats: int) -> tuple[float, float]:
    """(compile + first run seconds, median seconds of the next `repeats` runs)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def bench_one(path: str, heads: int, n: int, batch: int, steps: int, repeats: int, backward: bool):
    args = make_inputs(batch, heads, n)
    fwd = jax.jit(loop_fn(path, steps))
    state_bytes = batch * heads * n * (n + K.SLOTS) * 4
    rows = []
    modes = [("fwd", fwd, 2)]
    if backward:
        def loss(*a):
            acc, P = loop_fn(path, steps)(*a)
            return jnp.sum(acc) + jnp.sum(P)

        modes.append(("fwd+bwd", jax.jit(jax.grad(loss, argnums=(0, 1, 5, 6))), 5))
    for mode, fn, passes in modes:
        first, t = time_call(fn, args, repeats)
        per_step = t / steps
        rows.append({
            "path": path, "mode": mode, "heads": heads, "head_size": n, "batch": batch,
            "steps": steps, "us_per_step": per_step * 1e6, "rows_per_s": batch * steps / t,
            "gb_per_s": passes * state_bytes / per_step / 1e9, "compile_s": first - t,
        })
    return rows


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="2x16,7x64", help="heads x head size list (default 2x16,7x64)")
    p.add_argument("--batches", default="1,256", help="batch sizes (default 1,256)")
    p.add_argument("--steps", type=int, default=32, help="chained steps per timed call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    p.add_argument("--paths", default="jax,ffi", help="which paths (default jax,ffi)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--json", type=Path, default=None, help="write all rows here")
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes)
    batches = [int(b) for b in args.batches.split(",") if b]
    platform = jax.default_backend()
    paths = [q for q in args.paths.split(",") if q]
    if "ffi" in paths and not K.ffi_available(platform):
        print(f"bench_wkv: no FFI module for platform {platform!r}; timing the jax path only")
        paths = [q for q in paths if q != "ffi"]
    device = jax.devices()[0]
    print(f"backend {platform} ({device.device_kind}), {os.cpu_count()} CPUs visible, "
          f"{args.steps} steps per call, median of {args.repeats}")
    print(f"{'path':>4} {'mode':>7} {'HxN':>6} {'batch':>5} {'us/step':>10} {'rows/s':>12} {'GB/s':>8}")
    rows = []
    for heads, n in shapes:
        for batch in batches:
            for path in paths:
                for row in bench_one(path, heads, n, batch, args.steps, args.repeats, not args.no_backward):
                    rows.append(row)
                    print(f"{path:>4} {row['mode']:>7} {f'{heads}x{n}':>6} {batch:>5} "
                          f"{row['us_per_step']:>10.2f} {row['rows_per_s']:>12.0f} {row['gb_per_s']:>8.2f}",
                          flush=True)
    if args.json:
        write_json(args.json, {"backend": platform, "device": device.device_kind, "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
