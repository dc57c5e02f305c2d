#!/usr/bin/env python
"""Core speed benchmarks of hierarchos-jax, side by side with the PyTorch reference.

    python benchmarks/bench_core.py [--which train,eval,gen] [--repeats N] [--quick]
                                    [--json OUT] [--reference REF_DIR --ref-python PATH]

Measures, on the current JAX backend, the three workloads of the reference figures
(``/work/shared/bench/reference_bench.py``, whose timing rules are followed here):

* ``train``: one optimizer step of the ``small`` preset (128/128/128, vocab 2048, 256 LTM
  slots, top-k 4, max_h 3, max_l 3) on a batch of 4 x 64 tokens: train-mode forward from a
  fresh state, chunked CE (+ z-loss) + 0.01 * ponder + 0.5 * commitment, backward, global
  grad-norm clip 1.0 and AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.1 on the
  reference's decay group), all under one ``jax.jit`` with params and optimizer state
  donated. The host-side ROSA ids of the batch are computed inside the timed region (the
  reference computes them inside its forward). Reported as tokens/s = 256 / median step.
* ``eval``: the same config, eval mode, batch 1 x 64, logits returned, through
  :class:`~hierarchos_jax.model.run.Runner` (fresh state, host ROSA included). The default
  row uses ``logit_parity=False`` (the config's ``inference_logit_parity`` default: the legacy
  early-exit eval path, as the reference); an extra row measures ``parity=True``.
* ``gen``: the ``hierarchos-232m`` preset (random init, released shapes), batch 1: a 16-token
  prompt, then one token per :class:`Runner` call carrying all state, ROSA extended
  incrementally on the host, greedy argmax read back to the host inside the timed region.
  Reported as the median ms per token.

Each workload runs in its own child process (so peak RSS and compile times belong to that
workload alone; the parent never starts a JAX backend). Times are medians over repeats after
warm-up; compile time is reported separately (AOT ``lower()`` + ``compile()`` for the train
step, first call minus steady state for the Runner paths). With ``--reference`` the reference
bench runs right after each of our workloads (``--threads 2``, ``--device`` from
``--ref-device``, default cpu) and the table shows the speed-ups against the targets.
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
REFERENCE_BENCH = Path("/work/shared/bench/reference_bench.py")
WORKLOADS = ("train", "eval", "gen")

# Workload shapes, and (warm-up, timed) repeats of a full run and of a --quick smoke test.
TRAIN_BATCH, TRAIN_SEQ = 4, 64
EVAL_BATCH, EVAL_SEQ = 1, 64
GEN_PROMPT, GEN_TOKENS = 16, 64
FULL = {"train": (2, 10), "eval": (2, 15), "gen": (8, GEN_TOKENS)}
QUICK = {"train": (1, 2), "eval": (1, 2), "gen": (2, 4)}


def repeats_of(workload: str, quick: bool, repeats: int | None) -> tuple[int, int]:
    warmup, n = (QUICK if quick else FULL)[workload]
    return warmup, repeats or n


# Reference optimizer (hierarchos.training.trainer.build_hierarchos_optimizer, spec training.md §6.1).
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 1e-4, (0.9, 0.999), 1e-8, 0.1, 1.0
PONDER_WEIGHT, COMMITMENT_WEIGHT = 0.01, 0.5

# Targets: our speed over the reference's, measured side by side.
TARGETS = {"train": 10.0, "eval": 10.0, "gen": 4.0}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def device_memory_peak_mib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def timed(fn, *args):
    """``(fn(*args), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


# ----------------------------------------------------------------------------------
# Workloads (each runs in a child process)
# ----------------------------------------------------------------------------------


def decay_mask(config):
    """The reference's AdamW decay group, as an optax mask function.

    The reference's rule on its parameter names: (1) ``h_deepemb.*`` / ``l_deepemb.*`` -> no
    decay; (2) ``val_proj.*`` -> no decay; (3) names containing ``.weight`` or ``emb`` but
    neither ``ln`` nor ``norm`` -> decay; (4) everything else -> no decay.
    """
    import jax

    from hierarchos_jax.io.reference_state import state_dict_layout

    def decays(name: str) -> bool:
        if name.startswith(("h_deepemb.", "l_deepemb.", "val_proj.")):
            return False
        return (".weight" in name or "emb" in name) and "ln" not in name and "norm" not in name

    reference_name = {e.path: e.name for e in state_dict_layout(config) if e.kind != "buffer"}

    def leaf(path, _):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]  # drops Variable.value
        return decays(reference_name[".".join(map(str, keys))])

    return lambda params: jax.tree_util.tree_map_with_path(leaf, params)


def bench_train(quick: bool, repeats: int | None) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.model import rosa
    from hierarchos_jax.model.hierarchos import Hierarchos, forward
    from hierarchos_jax.model.losses import chunked_lm_loss, commitment_cost, ponder_cost
    from hierarchos_jax.model.mode import RunMode
    from hierarchos_jax.model.state import zeros_state

    cfg = HierarchosConfig.from_preset("small")
    B, T, V = TRAIN_BATCH, TRAIN_SEQ, cfg.vocab_size
    graphdef, params, buffers = nnx.split(Hierarchos(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    mask_fn = decay_mask(cfg)
    tx = optax.chain(
        optax.clip_by_global_norm(GRAD_CLIP),
        optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY, mask=mask_fn),
    )
    opt_state = tx.init(params)

    def loss_fn(params, ids, rosa_ids, mask):
        model = nnx.merge(graphdef, params, buffers)
        out, _ = forward(model, ids, zeros_state(cfg, B), mode=RunMode.train(), rosa_ids=rosa_ids,
                         attention_mask=mask)
        lm = chunked_lm_loss(out.hidden, model.tok_emb.embedding[...], ids, z_loss_weight=cfg.z_loss_weight)
        ponder, _ = ponder_cost(out, mask)
        return lm.loss + PONDER_WEIGHT * ponder + COMMITMENT_WEIGHT * commitment_cost(out, mask)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, ids, rosa_ids, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, rosa_ids, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(1)
    mask = jnp.ones((B, T), jnp.int32)

    def batch():
        return rng.integers(0, V, (B, T), dtype=np.int64)

    def host_rosa(ids):
        return rosa.rosa_step(None, ids, V)[0]

    ids = batch()
    example = (params, opt_state, jnp.asarray(ids, jnp.int32), jnp.asarray(host_rosa(ids), jnp.int32), mask)
    lowered, trace_s = timed(train_step.lower, *example)
    compiled, compile_s = timed(lowered.compile)

    warmup, n = repeats_of("train", quick, repeats)
    times, rosa_times, losses = [], [], []
    for i in range(warmup + n):
        ids = batch()
        t0 = time.perf_counter()
        rosa_ids = host_rosa(ids)
        t1 = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, jnp.asarray(ids, jnp.int32),
                                           jnp.asarray(rosa_ids, jnp.int32), mask)
        loss = float(loss)  # waits for the step
        dt = time.perf_counter() - t0
        log(f"train step {i}: {dt * 1e3:.1f} ms (rosa {1e3 * (t1 - t0):.2f} ms) loss={loss:.4f}")
        if i >= warmup:
            times.append(dt)
            rosa_times.append(t1 - t0)
            losses.append(loss)
    s = summary(times)
    return {"preset": "small", "batch": B, "seq": T, "param_count": cfg.param_count(),
            "decay_tensors": sum(jax.tree.leaves(mask_fn(params))),
            "tokens_per_s": B * T / s["median_s"], "step": s, "step_s_all": times,
            "rosa_median_s": statistics.median(rosa_times), "loss_first_last": [losses[0], losses[-1]],
            "compile_s": trace_s + compile_s, "trace_s": trace_s, "xla_compile_s": compile_s, "warmup": warmup}


def bench_eval(quick: bool, repeats: int | None, parity: bool) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.model.hierarchos import Hierarchos
    from hierarchos_jax.model.mode import RunMode
    from hierarchos_jax.model.run import Runner

    cfg = HierarchosConfig.from_preset("small")
    B, T, V = EVAL_BATCH, EVAL_SEQ, cfg.vocab_size
    runner = Runner(Hierarchos(cfg, rngs=nnx.Rngs(0)))
    mode = RunMode.eval(logit_parity=parity)
    rng = np.random.default_rng(2)

    def forward(ids):  # fresh state per call, as the reference's model(input_ids=ids)
        res, _ = runner(ids, runner.init_carry(B), mode=mode)
        return jax.block_until_ready(res.logits)

    _, first_s = timed(forward, rng.integers(0, V, (B, T)))
    warmup, n = repeats_of("eval", quick, repeats)
    times = []
    for i in range(warmup + n):
        ids = rng.integers(0, V, (B, T))
        _, dt = timed(forward, ids)
        log(f"eval forward (parity={parity}) {i}: {dt * 1e3:.2f} ms")
        if i >= warmup:
            times.append(dt)
    s = summary(times)
    return {"preset": "small", "batch": B, "seq": T, "inference_logit_parity": parity,
            "tokens_per_s": B * T / s["median_s"], "forward": s, "forward_s_all": times,
            "first_call_s": first_s, "compile_s": first_s - s["median_s"], "warmup": warmup}


def bench_gen(quick: bool, repeats: int | None) -> dict:
    import numpy as np
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.model.hierarchos import Hierarchos
    from hierarchos_jax.model.mode import RunMode
    from hierarchos_jax.model.run import Runner

    cfg = HierarchosConfig.from_preset("hierarchos-232m")
    runner, init_s = timed(lambda: Runner(Hierarchos(cfg, rngs=nnx.Rngs(0))))
    mode = RunMode.eval(logit_parity=cfg.inference_logit_parity)
    prompt = np.random.default_rng(3).integers(0, cfg.vocab_size, (1, GEN_PROMPT))

    def step(token_ids, carry):
        """One Runner call (host ROSA + forward) and the greedy next token, read back to the host."""
        res, carry = runner(token_ids, carry, mode=mode)
        return int(np.argmax(np.asarray(res.logits[0, -1]))), carry

    # Prefill twice from a fresh state: the first call compiles the prompt shape.
    _, prefill_first_s = timed(step, prompt, runner.init_carry(1))
    (token, carry), prefill_s = timed(step, prompt, runner.init_carry(1))
    warmup, n = repeats_of("gen", quick, repeats)
    warmup = max(1, warmup)  # the first token compiles the one-token shape
    times = []
    for i in range(warmup + n):
        (token, carry), dt = timed(step, np.array([[token]]), carry)
        if i == 0:
            first_token_s = dt
        elif i >= warmup:
            times.append(dt)
    s = summary(times)
    log(f"gen: median {s['median_s'] * 1e3:.2f} ms/token, prefill {prefill_s * 1e3:.1f} ms")
    return {"preset": "hierarchos-232m", "param_count": cfg.param_count(), "prompt_len": GEN_PROMPT,
            "tokens_timed": len(times), "median_ms_per_token": s["median_s"] * 1e3,
            "mean_ms_per_token": 1e3 * statistics.fmean(times), "tokens_per_s": 1.0 / s["median_s"],
            "per_token": s, "per_token_s_all": times, "model_init_s": init_s, "prefill_s": prefill_s,
            "compile_s": (prefill_first_s - prefill_s) + (first_token_s - s["median_s"]), "warmup": warmup}


# Each unit runs in its own child process; ``--which eval`` runs both eval units.
UNITS = {
    "train": ("train_step", lambda quick, repeats: bench_train(quick, repeats)),
    "eval": ("eval_forward", lambda quick, repeats: bench_eval(quick, repeats, parity=False)),
    "eval_parity": ("eval_forward_parity", lambda quick, repeats: bench_eval(quick, repeats, parity=True)),
    "gen": ("generation", lambda quick, repeats: bench_gen(quick, repeats)),
}
UNITS_OF = {"train": ("train",), "eval": ("eval", "eval_parity"), "gen": ("gen",)}


def run_unit(unit: str, quick: bool, repeats: int | None) -> dict:
    import jax

    load_before = os.getloadavg()[0]
    key, bench = UNITS[unit]
    res = bench(quick, repeats)
    res.update(backend=jax.default_backend(), device=jax.devices()[0].device_kind, peak_rss_mib=peak_rss_mib(),
               device_peak_mib=device_memory_peak_mib(), load_avg_1m=[load_before, os.getloadavg()[0]])
    return {key: res}


# ----------------------------------------------------------------------------------
# Orchestration (the parent never initialises a JAX backend): children, reference, table
# ----------------------------------------------------------------------------------


def last_json_line(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_ours(unit: str, quick: bool, repeats: int | None) -> dict:
    log(f"== ours: {unit}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", unit]
    return last_json_line(cmd + (["--quick"] if quick else []) + (["--repeats", str(repeats)] if repeats else []))


def run_reference(ref_dir: str, ref_python: str, workload: str, quick: bool, device: str) -> dict:
    cmd = [ref_python, str(REFERENCE_BENCH), ref_dir, "--device", device, "--threads", "2", "--which", workload]
    log(f"== reference: {' '.join(cmd)}")
    return last_json_line(cmd + (["--quick"] if quick else []))


def environment() -> dict:
    return host_facts()


ROWS = (
    # label, our key, reference key, metric, higher is better, target workload
    ("train step, small, 4x64 (tokens/s)", "train_step", "train_step", "tokens_per_s", True, "train"),
    ("eval forward, small, 1x64 (tokens/s)", "eval_forward", "eval_forward", "tokens_per_s", True, "eval"),
    ("eval forward, parity=True (tokens/s)", "eval_forward_parity", "eval_forward", "tokens_per_s", True, None),
    ("generation, 232m, batch 1 (ms/token)", "generation", "generation", "median_ms_per_token", False, "gen"),
)


def speedups(ours: dict, ref: dict) -> dict:
    out = {}
    for _, key, ref_key, metric, higher, _ in ROWS:
        if key in ours and ref_key in ref:
            mine, theirs = ours[key][metric], ref[ref_key][metric]
            out[key] = mine / theirs if higher else theirs / mine
    return out


def table(ours: dict, ref: dict) -> str:
    ratio = speedups(ours, ref)
    lines = ["| workload | ours | reference | speed-up (target) | compile s | peak RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, key, ref_key, metric, _, target in ROWS:
        if key not in ours:
            continue
        theirs = ref.get(ref_key, {}).get(metric)
        goal = f" (>= {TARGETS[target]:g}x {'met' if ratio[key] >= TARGETS[target] else 'MISSED'})" \
            if key in ratio and target else ""
        lines.append(f"| {label} | {ours[key][metric]:.1f} | {'-' if theirs is None else f'{theirs:.1f}'} | "
                     f"{f'{ratio[key]:.1f}x' if key in ratio else '-'}{goal} | {ours[key]['compile_s']:.1f} | "
                     f"{ours[key]['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", default="train,eval,gen", help="comma-separated subset of train,eval,gen")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per workload (tokens for gen)")
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/core-<backend>.json)")
    ap.add_argument("--reference", metavar="REF_DIR", default=None, help="reference source dir: measure it too")
    ap.add_argument("--ref-python", default=sys.executable, help="python of a venv with the reference's torch")
    ap.add_argument("--ref-device", default="cpu", choices=["cpu", "cuda"], help="device of the reference run")
    ap.add_argument("--child", choices=list(UNITS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        print(json.dumps(run_unit(a.child, a.quick, a.repeats)), flush=True)
        return 0

    which = [w for w in a.which.split(",") if w]
    unknown = set(which) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    env = environment()
    ours: dict = {}
    ref: dict = {}
    for workload in which:  # ours, then the reference, workload by workload: close in time
        for unit in UNITS_OF[workload]:
            ours.update(run_ours(unit, a.quick, a.repeats))
        if a.reference:
            r = run_reference(a.reference, a.ref_python, workload, a.quick, a.ref_device)
            ref.update({k: v for k, v in r.items() if k in ("train_step", "eval_forward", "generation")})
            ref["environment"] = {k: v for k, v in r.items() if not isinstance(v, dict)}
    first = next(iter(ours.values()))
    env.update(backend=first["backend"], device=first["device"])

    result = {"environment": env, "quick": a.quick, "ours": ours, "reference": ref or None,
              "speedup": speedups(ours, ref), "targets": TARGETS}
    out = Path(a.json) if a.json else HERE / "results" / f"core-{env['backend']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{env['date']}  jax {env['jax']}  backend {env['backend']} ({env['device']})  "
          f"host {env['host_cpu']} x{env['host_cores']}  load {env['load_avg'][0]:.2f}"
          + ("  [quick]" if a.quick else ""))
    print(table(ours, ref))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
