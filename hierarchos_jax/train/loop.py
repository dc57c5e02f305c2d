"""Training loop on the embedded synthetic task (the quickstart and data-less ``train``).

``train_synthetic(TrainArgs(...))`` builds a model from a preset (vocabulary replaced by
the task tokenizer's), trains it with :class:`~hierarchos_jax.train.step.TrainStep`,
shows a tqdm bar (loss, tokens/s, lr), writes ``metrics.jsonl`` (one line per optimizer
step), measures held-out accuracy by greedy decoding before and after, saves an
inference directory and returns a summary dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner
from hierarchos_jax.train import synthetic
from hierarchos_jax.train.optimizer import OptimConfig, make_optimizer
from hierarchos_jax.train.step import LossConfig, TrainStep, make_batch, zero_counters


@dataclasses.dataclass
class TrainArgs:
    out_dir: str = "hierarchos_quickstart"
    preset: str = "tiny"
    steps: int = 400
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 48
    chunk_size: int = 48
    accumulation_steps: int = 1
    starting_lr: float = 3e-3
    min_lr: float = 1e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    min_digits: int = 1
    max_digits: int = 2
    eval_problems: int = 128
    eval_every: int = 0           # 0: only before and after training
    progress: bool = True
    save_model: bool = True
    samples: int = 3


def build_model(args: TrainArgs, vocab_size: int):
    cfg = HierarchosConfig.from_preset(args.preset)
    # Inference uses the training-mode worker rule, so held-out decoding matches training.
    cfg = dataclasses.replace(cfg, vocab_size=vocab_size, training_chunk_size=max(args.chunk_size, 1),
                              inference_logit_parity=True)
    model = Hierarchos(cfg, rngs=nnx.Rngs(args.seed))
    return cfg, model


def greedy_complete(model, prompts: list[list[int]], *, max_new: int, eos_id: int) -> list[list[int]]:
    """Greedy continuation of every prompt (one batch, one token per call, so a single
    compiled shape serves any prompt lengths)."""
    runner = Runner(model)
    B = len(prompts)
    mode = RunMode.eval(logit_parity=bool(model.config.inference_logit_parity))
    carry = runner.init_carry(B)
    lens = np.array([len(p) for p in prompts])
    total = int(lens.max()) + max_new
    out: list[list[int]] = [[] for _ in range(B)]
    done = np.zeros(B, bool)
    nxt = np.array([p[0] for p in prompts], np.int32)
    for t in range(total):
        res, carry = runner(nxt[:, None], carry, mode=mode)
        pred = np.asarray(jnp.argmax(res.logits[:, -1], axis=-1), np.int32)
        feed = np.empty(B, np.int32)
        for r in range(B):
            if t + 1 < lens[r]:
                feed[r] = prompts[r][t + 1]
            else:
                if not done[r]:
                    out[r].append(int(pred[r]))
                    if pred[r] == eos_id or len(out[r]) >= max_new:
                        done[r] = True
                feed[r] = pred[r]
        nxt = feed
        if done.all():
            break
    return out


def heldout_accuracy(model, task: synthetic.AdditionTask, problems, codec) -> tuple[float, list[str]]:
    prompts = [codec.encode(task.prompt(a, b)) for a, b in problems]
    max_new = task.max_digits + 2
    outs = greedy_complete(model, prompts, max_new=max_new, eos_id=codec.eos_id)
    right = 0
    shown = []
    for (a, b), o in zip(problems, outs):
        ans = o[:-1] if o and o[-1] == codec.eos_id else o
        ok = codec.decode(ans) == task.answer(a, b) and o and o[-1] == codec.eos_id
        right += bool(ok)
        shown.append(f"{task.prompt(a, b)}{codec.decode(o)}" + ("  ok" if ok else f"  (want {task.answer(a, b)})"))
    return right / max(1, len(problems)), shown


def _merged(graphdef, params, rest):
    return nnx.merge(graphdef, params, rest)


def train_synthetic(args: TrainArgs, *, log=print) -> dict:
    t_start = time.time()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = synthetic.save_tokenizer(out / "tokenizer")
    codec = synthetic.CharCodec()
    task = synthetic.AdditionTask(min_digits=args.min_digits, max_digits=args.max_digits)
    cfg, model = build_model(args, codec.vocab_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    acc = max(1, args.accumulation_steps)
    ocfg = OptimConfig(starting_lr=args.starting_lr, min_lr=args.min_lr, warmup_ratio=args.warmup_ratio,
                       total_updates=max(1, args.steps), weight_decay=args.weight_decay, grad_clip=args.grad_clip)
    tx, schedule = make_optimizer(ocfg, params, cfg)
    opt_state = tx.init(params)
    lcfg = LossConfig(chunk_size=args.chunk_size)
    step_fn = TrainStep(graphdef, rest, cfg, lcfg, tx, schedule)
    counters = zero_counters()
    data = synthetic.batches(task, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed, codec=codec)
    problems = task.heldout_problems(args.eval_problems, seed=args.seed + 1)

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    log(f"model: preset {args.preset!r}, vocab {cfg.vocab_size}, {n_params:,} parameters; "
        f"task: {args.min_digits}-{args.max_digits} digit addition (answer reversed), "
        f"{len(problems)} held-out problems")
    acc0, _ = heldout_accuracy(_merged(graphdef, params, rest), task, problems, codec) if args.eval_problems else (0.0, [])
    log(f"held-out accuracy before training: {acc0:.1%}")

    metrics_path = out / "metrics.jsonl"
    history: list[dict] = []
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="train", file=sys.stderr, dynamic_ncols=True)
    batch_counter = 0
    evals = [(0, acc0)]
    with open(metrics_path, "w") as mf:
        for u in range(args.steps):
            micro = [next(data) for _ in range(acc)]
            ids = np.stack([m[0] for m in micro])
            labels = np.stack([m[1] for m in micro])
            mask = np.stack([m[2] for m in micro])
            warm = np.arange(batch_counter, batch_counter + acc, dtype=np.float32)
            batch_counter += acc
            batch = make_batch(ids, labels, mask, cfg.vocab_size, chunk_size=args.chunk_size, warmup_step=warm,
                               use_rosa=cfg.use_rosa)
            t0 = time.perf_counter()
            params, opt_state, counters, m = step_fn(params, opt_state, counters, batch)
            m = jax.device_get(m)
            dt = time.perf_counter() - t0
            rec = dict(step=u + 1, loss=float(m.loss), ce=float(m.ce), z_loss=float(m.z_loss),
                       ponder=float(m.ponder), commitment=float(m.commitment), lr=float(m.lr),
                       grad_norm=float(m.grad_norm), tokens_per_s=float(m.tokens) / max(dt, 1e-9),
                       applied=bool(m.applied), skipped=int(counters.skipped))
            history.append(rec)
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}", lr=f"{rec['lr']:.2e}")
                bar.update(1)
            if args.eval_every and (u + 1) % args.eval_every == 0 and u + 1 < args.steps:
                a, _ = heldout_accuracy(_merged(graphdef, params, rest), task, problems, codec)
                evals.append((u + 1, a))
                log(f"step {u + 1}: held-out accuracy {a:.1%}")
    if bar is not None:
        bar.close()
    model = _merged(graphdef, params, rest)
    acc1, shown = heldout_accuracy(model, task, problems, codec) if args.eval_problems else (0.0, [])
    evals.append((args.steps, acc1))

    def window_mean(xs):
        xs = [x for x in xs if math.isfinite(x)]
        return sum(xs) / max(1, len(xs))

    k = max(1, min(10, len(history) // 5))
    loss_start = window_mean([h["loss"] for h in history[:k]])
    loss_end = window_mean([h["loss"] for h in history[-k:]])
    log(f"loss {loss_start:.3f} -> {loss_end:.3f} (mean of first/last {k} steps); "
        f"held-out accuracy {acc0:.1%} -> {acc1:.1%}; skipped updates {int(counters.skipped)}")
    model_dir = None
    if args.save_model:
        from hierarchos_jax.io.model_dir import save_model_dir

        model_dir = save_model_dir(model, out / "model", tokenizer_dir=tok_dir)
        log(f"inference directory: {model_dir}")
    for line in shown[:args.samples]:
        log(f"sample (greedy): {line}")
    wall = time.time() - t_start
    summary = dict(loss_start=loss_start, loss_end=loss_end, heldout_accuracy_start=acc0,
                   heldout_accuracy_end=acc1, evals=evals, steps=args.steps, skipped=int(counters.skipped),
                   wall_s=wall, model_dir=str(model_dir) if model_dir else None, metrics=str(metrics_path),
                   samples=shown[:args.samples])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wall time {wall:.0f} s")
    return summary
