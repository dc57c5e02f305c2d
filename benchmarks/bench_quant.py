#!/usr/bin/env python
"""Quantized kernels and models on this CPU.

    python benchmarks/bench_quant.py [--parts kernel,bandwidth,decode,accuracy]
                                     [--qtypes Q8_0,Q4_0,Q2_K,INT4,REF_Q8_0,REF_Q4_0,REF_Q2_K] [--repeats 5]
                                     [--new-tokens 16] [--accuracy-model DIR] [--json OUT]

* **kernel**: ``Y = A . W^T`` through the FFI kernel (jitted ``hierarchos_jax.quant.ops.qmatmul``)
  at the 232M model's decode shapes (M = 1 and 32 activation rows; K x N of the RWKV
  square matrices, the channel-mix pair and the tied head 448 x 50257) vs a float32 XLA
  dot of the same shape. GFLOP/s = 2MNK / t; GB/s = weight bytes read / t (packed bytes
  for the quantized kernels, 4NK for float32). Median of ``--repeats`` calls.
* **bandwidth**: the memory-bandwidth bound: a 256 MiB memcpy (NumPy, one thread;
  read + write bytes counted) and a 256 MiB float32 sum in XLA (all threads, read bytes).
  The kernel table prints each row's GB/s as a fraction of the XLA read bandwidth.
* **decode**: ``hierarchos-232m`` (random init) batch-1 greedy decode through the
  GenerationEngine, float32 and each qtype: median ms per decode call (16-token prompt).
* **accuracy**: top-1 agreement with float32 greedy decoding per qtype on the tiny
  fixture model (or ``--accuracy-model DIR``, e.g. the quickstart's trained model): the
  float model generates greedily from a random prompt, then every model scores that
  sequence teacher-forced; agreement = share of generated positions whose argmax equals
  the float model's. Also the max |logit difference| and the perplexity of the whole
  sequence under each model (its change is the quantization cost on a trained model).

The machine may be shared: few repeats, medians, load average recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _host import host_facts  # noqa: E402  (benchmarks/_host.py, beside this script)
QTYPES = ("Q8_0", "Q4_0", "Q2_K", "INT4", "REF_Q8_0", "REF_Q4_0", "REF_Q2_K")  # GGUF layouts first
SHAPES = (("rwkv square", 448, 448), ("key_cm", 448, 1792), ("value_cm", 1792, 448), ("tied head", 448, 50257))
TINY = HERE.parent.parent / "shared" / "fixtures" / "reference" / "tiny" / "model"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def environment() -> dict:
    import jax

    from hierarchos_jax import _quant

    return {**host_facts(), "kernel_threads": _quant.hardware_threads(), "avx2": _quant.has_avx2(),
            "backend": jax.default_backend()}


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_bandwidth(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 64 * 2**20  # float32 elements: 256 MiB
    src = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    t_copy = timed(lambda: np.copyto(dst, src), repeats)
    x = jnp.asarray(src)
    total = jax.jit(jnp.sum)
    t_sum = timed(lambda: total(x), repeats)
    return {"memcpy_GBps": 2 * src.nbytes / t_copy / 1e9, "xla_sum_read_GBps": src.nbytes / t_sum / 1e9,
            "bytes": src.nbytes}


def bench_kernel(qtypes, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hierarchos_jax import quant
    from hierarchos_jax.quant import ops
    from hierarchos_jax.quant.formats import get_format

    rng = np.random.default_rng(0)
    rows = []
    qmm = jax.jit(ops.qmatmul, static_argnums=(2,))
    dot = jax.jit(lambda a, w: jax.lax.dot_general(a, w, (((1,), (1,)), ((), ()))))
    for label, k, n in SHAPES:
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        for m in (1, 32):
            a = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
            wf = jnp.asarray(w)
            t = timed(lambda a=a, wf=wf: dot(a, wf), repeats)
            rows.append({"shape": label, "M": m, "K": k, "N": n, "qtype": "float32 (XLA dot)", "ms": 1e3 * t,
                         "GFLOPs": 2 * m * n * k / t / 1e9, "GBps": 4 * n * k / t / 1e9})
            for qtype in qtypes:
                kp = get_format(qtype).padded_k(k)
                wp = np.pad(w, ((0, 0), (0, kp - k)))
                packed = jnp.asarray(quant.quantize(wp, qtype))
                ap = jnp.pad(a, ((0, 0), (0, kp - k)))
                t = timed(lambda ap=ap, packed=packed, qtype=qtype: qmm(ap, packed, qtype), repeats)
                rows.append({"shape": label, "M": m, "K": k, "N": n, "qtype": qtype, "ms": 1e3 * t,
                             "GFLOPs": 2 * m * n * k / t / 1e9, "GBps": packed.nbytes / t / 1e9})
            log(f"kernel {label} M={m}: " + ", ".join(f"{r['qtype']} {r['ms']:.3f} ms" for r in rows[-1 - len(qtypes):]))
    return rows


def bench_decode(qtypes, new_tokens: int, repeats: int) -> list[dict]:
    import jax
    import numpy as np
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.infer import GenerationEngine, SamplingParams, StopConditions
    from hierarchos_jax.model.hierarchos import Hierarchos
    from hierarchos_jax.quant.model import quantize_model

    cfg = HierarchosConfig.from_preset("hierarchos-232m")
    base = Hierarchos(cfg, rngs=nnx.Rngs(0))
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, cfg.vocab_size, 16)]
    greedy = SamplingParams(temperature=0.0)
    stop = StopConditions(max_new_tokens=new_tokens + 1, eos_ids=())
    rows = []
    for qtype in ("float32", *qtypes):
        model = base if qtype == "float32" else quantize_model(nnx.clone(base), qtype)
        engine = GenerationEngine(model, cfg)
        engine.generate(prompt, greedy, stop)  # compile
        runs = [engine.generate(prompt, greedy, stop) for _ in range(repeats)]
        ms = statistics.median(r.ms_per_token for r in runs)
        best = 1e3 * min(t for r in runs for t in r.step_s)  # least disturbed call on a shared machine
        nbytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
        rows.append({"qtype": qtype, "ms_per_token": ms, "best_ms_per_token": best, "weights_MiB": nbytes / 2**20,
                     "new_tokens": new_tokens, "repeats": repeats, "load_avg_1m": os.getloadavg()[0]})
        log(f"decode 232M {qtype}: {ms:.2f} ms/token (best call {best:.2f}), weights {nbytes / 2**20:.0f} MiB")
        del engine, model
    return rows


def bench_accuracy(qtypes, model_dir: Path, new_tokens: int, prompt_text: str | None = None) -> list[dict]:
    import jax
    import numpy as np

    from hierarchos_jax.infer import GenerationEngine, SamplingParams, StopConditions
    from hierarchos_jax.io.model_dir import load_model_dir
    from hierarchos_jax.model.mode import RunMode
    from hierarchos_jax.model.run import Runner
    from hierarchos_jax.quant.model import quantize_model

    loaded = load_model_dir(model_dir)
    cfg = loaded.config
    if prompt_text:
        from hierarchos_jax.io.tokenizer import Tokenizer, find_tokenizer_dir

        prompt = Tokenizer(find_tokenizer_dir(model_dir)).encode(prompt_text)
    else:
        prompt = [int(t) for t in np.random.default_rng(1).integers(0, cfg.vocab_size, 8)]
    res = GenerationEngine(loaded.model, cfg).generate(prompt, SamplingParams(temperature=0.0),
                                                       StopConditions(max_new_tokens=new_tokens, eos_ids=()))
    seq = np.array([prompt + list(res.token_ids)])
    mode = RunMode.eval(logit_parity=bool(cfg.inference_logit_parity or cfg.full_sample_bptt))

    def score(model):
        runner = Runner(model)
        with jax.default_matmul_precision("highest"):
            out, _ = runner(seq, runner.init_carry(1), mode=mode)
        return np.asarray(out.logits[0], np.float64)

    def nll(lg):
        lg = lg[:-1]
        lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        return float(np.mean(lse - lg[np.arange(len(lg)), seq[0, 1:]]))

    ref = score(loaded.model)
    gen = slice(len(prompt) - 1, seq.shape[1] - 1)  # positions that predicted the generated tokens
    rows = [{"qtype": "float32", "top1_agreement": 1.0, "max_abs_logit_diff": 0.0, "ppl": float(np.exp(nll(ref)))}]
    for qtype in qtypes:
        lg = score(quantize_model(load_model_dir(model_dir).model, qtype))
        rows.append({"qtype": qtype,
                     "top1_agreement": float(np.mean(lg[gen].argmax(-1) == ref[gen].argmax(-1))),
                     "max_abs_logit_diff": float(np.abs(lg - ref).max()), "ppl": float(np.exp(nll(lg)))})
        log(f"accuracy {qtype}: {rows[-1]}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="kernel,bandwidth,decode,accuracy")
    p.add_argument("--qtypes", default=",".join(QTYPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--accuracy-model", type=Path, default=TINY)
    p.add_argument("--accuracy-prompt", default=None, help="prompt text (model's tokenizer); default 8 random ids")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    qtypes = [q.strip().upper() for q in args.qtypes.split(",") if q.strip()]
    out = {"environment": environment()}
    if "bandwidth" in parts or "kernel" in parts:
        out["bandwidth"] = bench_bandwidth(args.repeats)
        log(f"bandwidth: {out['bandwidth']}")
    if "kernel" in parts:
        out["kernel"] = bench_kernel(qtypes, args.repeats)
        bw = out["bandwidth"]["xla_sum_read_GBps"]
        print("| shape | M | qtype | ms | GFLOP/s | GB/s | of read bandwidth |\n|---|---|---|---|---|---|---|")
        for r in out["kernel"]:
            print(f"| {r['shape']} {r['K']}x{r['N']} | {r['M']} | {r['qtype']} | {r['ms']:.3f} | {r['GFLOPs']:.1f} | "
                  f"{r['GBps']:.1f} | {r['GBps'] / bw:.2f} |")
    if "decode" in parts:
        out["decode"] = bench_decode(qtypes, args.new_tokens, max(1, args.repeats // 2))
        print("| 232M decode | ms/token (median) | best call (ms) | weights MiB |\n|---|---|---|---|")
        for r in out["decode"]:
            print(f"| {r['qtype']} | {r['ms_per_token']:.2f} | {r['best_ms_per_token']:.2f} | {r['weights_MiB']:.0f} |")
    if "accuracy" in parts:
        out["accuracy"] = bench_accuracy(qtypes, args.accuracy_model, 32, args.accuracy_prompt)
        print("| qtype | top-1 agreement | max abs logit diff | ppl |\n|---|---|---|---|")
        for r in out["accuracy"]:
            print(f"| {r['qtype']} | {r['top1_agreement']:.3f} | {r['max_abs_logit_diff']:.4f} | {r['ppl']:.3f} |")
    path = args.json or HERE / "results" / f"quant-{out['environment']['backend']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
