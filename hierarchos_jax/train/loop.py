"""The training loop (spec: training.md §5.2, §6.4, §8.2–8.4, §9, §10).

:func:`train_loop` trains one model on any iterator of batch dicts (the DATA contract:
``input_ids``, ``labels``, ``attention_mask``, ``loss_weights``, ``rosa_ids``, each
``[B, T]``, with ``get_state()``/``set_state()``), one jitted
:class:`~hierarchos_jax.train.step.TrainStep` call per optimizer update over a window of
``accumulation_steps`` micro-batches. It

* resumes exactly from the newest checkpoint in ``<out>/checkpoints`` (or from
  ``resume_from``): parameters, optimizer state, counters, RNG, the data iterator's state,
  the step and the memory-gate batch clock, and the stored schedule (``lr_max, lr_min,
  W, U``, spec §6.4), so the resumed per-step losses equal the uninterrupted run's;
* saves Orbax checkpoints every ``save_every`` steps and at the end (async, keep-last-k,
  verified manifests: :mod:`hierarchos_jax.train.checkpoint`);
* writes ``<out>/metrics.jsonl`` (:mod:`hierarchos_jax.train.records`), shows a tqdm bar
  (loss, tokens/s, lr), runs hooks (held-out accuracy, lm-eval during training), and saves
  the final inference directory ``<out>/model``.

The device is never waited on per micro-batch: the host prepares the next window while
the current update runs, and a step's metrics are fetched one step later (or right before
a checkpoint or hook, so ``metrics.jsonl`` always covers every checkpointed step).

:func:`train_synthetic` is the quickstart / data-less ``train``: the embedded addition task
(:mod:`hierarchos_jax.train.synthetic`) as a checkpointable :class:`SyntheticBatches`
iterator, plus held-out greedy accuracy before, during and after training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.rosa import rosa_ids_for_padded
from hierarchos_jax.model.run import Runner
from hierarchos_jax.train import synthetic
from hierarchos_jax.train.checkpoint import (TOKENIZER_SUBDIR, CheckpointError, Checkpoints, read_meta,
                                             resolve_step_dir, state_target, verify_step_dir)
from hierarchos_jax.train.optimizer import OptimConfig, make_optimizer
from hierarchos_jax.train.records import MetricsLog, read_metrics, step_lines, step_record
from hierarchos_jax.model.losses import IGNORE_INDEX
from hierarchos_jax.train.step import LossConfig, TrainStep, make_batch, pad_to_chunks, zero_counters

# ---------------------------------------------------------------- batches


def window_batch(window: Sequence[dict], vocab_size: int, *, chunk_size: int, warmup_step, use_rosa: bool):
    """Stack ``A`` batch dicts (DATA contract) into one :class:`~hierarchos_jax.train.step.Batch`."""
    T = max(np.shape(w["input_ids"])[-1] for w in window)     # length-bucketed rows differ in T
    fills = {"input_ids": 0, "labels": IGNORE_INDEX, "attention_mask": 0, "loss_weights": 0.0,
             "rosa_ids": vocab_size}

    def stack(key):
        return np.stack([pad_to_chunks(np.asarray(w[key]), T, fills[key]) for w in window])

    rosa = stack("rosa_ids") if use_rosa and all("rosa_ids" in w for w in window) else None
    weights = stack("loss_weights") if all("loss_weights" in w for w in window) else None
    kw = {"rosa_ids": rosa} if rosa is not None else {}
    return make_batch(stack("input_ids"), stack("labels"), stack("attention_mask"), vocab_size,
                      chunk_size=chunk_size, warmup_step=warmup_step, loss_weights=weights, use_rosa=use_rosa, **kw)


def with_config(model: Hierarchos, changes: dict) -> Hierarchos:
    """``model`` with its config's runtime keys changed (same parameters and shapes)."""
    if not changes:
        return model
    cfg = model.config.replace(**changes)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Hierarchos(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


class SyntheticBatches(grain.DatasetIterator):
    """The embedded task's endless batches as a checkpointable iterator of batch dicts.

    The stream is :func:`synthetic.batches` (same rows for the same seed); its position is
    the state of the PCG64 generator it draws from, so ``get_state()``/``set_state()``
    continue it exactly.
    """

    def __init__(self, task: synthetic.AdditionTask, *, batch_size: int, seq_len: int, seed: int, vocab_size: int,
                 use_rosa: bool = True):
        super().__init__()
        self._bits = np.random.PCG64(seed)       # = default_rng(seed)'s generator
        self._rows = synthetic.batches(task, batch_size=batch_size, seq_len=seq_len, seed=self._bits)
        self._vocab = vocab_size
        self._use_rosa = use_rosa
        self.seed = seed

    def __next__(self) -> dict:
        ids, labels, mask = next(self._rows)
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask,
               "loss_weights": np.ones(ids.shape, np.float32)}
        if self._use_rosa:
            out["rosa_ids"] = rosa_ids_for_padded(ids, attention_mask=mask, vocab_size=self._vocab).astype(np.int32)
        return out

    def get_state(self) -> dict:
        return {"kind": "synthetic", "seed": self.seed, "bit_generator": self._bits.state}

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "synthetic":
            raise CheckpointError(f"the checkpoint's data state is not the embedded task's ({state.get('kind')!r})")
        self._bits.state = state["bit_generator"]


# ---------------------------------------------------------------- the generic loop


@dataclasses.dataclass
class Trainee:
    """What is trained: the initial model (from scratch or ``--model-path``), its tokenizer
    directory and the optimisation settings."""

    model: Hierarchos
    tokenizer_dir: Path | None
    optim: OptimConfig
    loss: LossConfig
    step_options: Any = None                 # hierarchos_jax.train.step.StepOptions
    tokenizer_name: str | None = None
    completed_epoch_offset: int = 0          # --model-path continuation: the base's completed epochs


@dataclasses.dataclass
class LoopOptions:
    out_dir: str
    steps: int                               # total optimizer updates of the run
    accumulation_steps: int = 1
    save_every: int = 0                      # checkpoint every N updates (0: only at the end)
    keep_checkpoints: int = 3                # keep the newest k (None/0: all)
    resume: bool = True                      # continue from <out>/checkpoints when it has a step
    resume_from: str | None = None           # an explicit checkpoint to continue from
    batches_per_epoch: int | None = None     # N_b (epoch counting, epoch-based hooks)
    seed: int = 0
    progress: bool = True
    save_model: bool = True                  # final inference directory <out>/model
    async_checkpoints: bool = True
    override_scheduling: bool = False        # on resume: fresh optimizer state, schedule over the remaining updates
    signature: dict = dataclasses.field(default_factory=dict)   # settings a resume must share


@dataclasses.dataclass
class StepContext:
    """What a hook sees after an optimizer update (or at the start / end)."""

    step: int
    total: int
    epoch_done: bool
    completed_epoch: int
    metrics: MetricsLog
    model: Callable[[], Hierarchos]          # the live weights as a model (merged on demand)
    out_dir: Path
    trainee: Trainee


class Hook:
    """Base class of loop hooks: override what you need."""

    def start(self, ctx: StepContext, resumed: bool) -> None:
        pass

    def step(self, ctx: StepContext) -> None:
        pass

    def end(self, ctx: StepContext) -> None:
        pass


class LmEvalHook(Hook):
    """lm-eval tasks during training (spec §9; EVAL contract): every ``every_steps`` updates
    and whenever ``every_epoch`` epochs complete, on an inference directory of the live
    weights (``<out>/eval/model``); results in ``<out>/eval/step_<N>.json`` and a
    ``{"step": N, "eval": {...}}`` line in ``metrics.jsonl``. A missing lm-eval integration
    or a failing evaluation is reported and training goes on (as the reference)."""

    def __init__(self, tasks, *, every_steps=None, every_epoch=1, limit=None, batch_size=1, include_path=None,
                 log=print):
        self.tasks, self.every_steps, self.every_epoch = list(tasks), every_steps, every_epoch
        self.limit, self.batch_size, self.include_path, self.log = limit, batch_size, include_path, log
        self.results: list[tuple[int, dict]] = []
        self._off = False

    def step(self, ctx):
        due = bool(self.every_steps) and ctx.step % self.every_steps == 0
        due |= ctx.epoch_done and bool(self.every_epoch) and ctx.completed_epoch % self.every_epoch == 0
        if due and not self._off:
            self.run(ctx)

    def run(self, ctx) -> dict | None:
        from hierarchos_jax.io.model_dir import save_model_dir

        try:
            from hierarchos_jax.eval.during_training import evaluate_model_dir
        except ImportError as e:
            self.log(f"warning: evaluation during training is not available ({e}); training goes on")
            self._off = True
            return None
        edir = ctx.out_dir / "eval"
        model_dir = save_model_dir(ctx.model(), edir / "model", tokenizer_dir=ctx.trainee.tokenizer_dir)
        try:
            res = evaluate_model_dir(model_dir, self.tasks, limit=self.limit, batch_size=self.batch_size,
                                     include_path=self.include_path, out_json=edir / f"step_{ctx.step}.json")
        except Exception as e:  # noqa: BLE001 - as the reference: log and keep training
            self.log(f"warning: evaluation at step {ctx.step} failed: {' '.join(str(e).split())[:300]}")
            return None
        ctx.metrics.write({"step": ctx.step, "eval": res})
        self.results.append((ctx.step, res))
        self.log(f"step {ctx.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(res.items())))
        return res


def _copy_tokenizer(src: Path | None, root: Path) -> None:
    if src is None or (root / TOKENIZER_SUBDIR).is_dir():
        return
    from hierarchos_jax.io.model_dir import TOKENIZER_FILES

    tmp = root / f".{TOKENIZER_SUBDIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, tmp / name)
    tmp.rename(root / TOKENIZER_SUBDIR)


def _resume_point(opts: LoopOptions, root: Path) -> tuple[Path, int] | None:
    if opts.resume_from:
        return resolve_step_dir(opts.resume_from)
    if opts.resume and root.is_dir():
        steps = sorted(int(c.name) for c in root.iterdir() if c.is_dir() and c.name.isdigit())
        if steps:
            return root, steps[-1]
    return None


def _check_signature(sdir: Path, saved: dict, current: dict) -> None:
    for k, v in current.items():
        if k in saved and saved[k] != v:
            raise CheckpointError(f"checkpoint {sdir} was written by a run with {k}={saved[k]!r}, this run has "
                                  f"{k}={v!r}: use the same options to resume, or another --out-dir")


def train_loop(trainee: Trainee, data, opts: LoopOptions, *, hooks: Sequence[Hook] = (), log=print) -> dict:
    """Train ``trainee`` on ``data`` (see the module docstring); returns a summary dict."""
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "checkpoints"
    root.mkdir(exist_ok=True)
    _copy_tokenizer(trainee.tokenizer_dir, root)
    model = trainee.model
    cfg = model.config
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    acc = max(1, int(opts.accumulation_steps))
    optim = trainee.optim
    counters = zero_counters()
    rng = jax.random.key_data(jax.random.key(opts.seed))
    start, batch_counter, resumed_from = 0, 0, None

    point = _resume_point(opts, root)
    if point is not None:
        src_root, step0 = point
        sdir = src_root / str(step0)
        verify_step_dir(sdir)
        extra = read_meta(sdir).get("extra", {})
        _check_signature(sdir, extra.get("signature", {}), opts.signature)
        if opts.override_scheduling:               # §6.4: U = the remaining updates, u restarts at 0
            optim = dataclasses.replace(optim, total_updates=max(1, opts.steps - step0))
        elif "optim" in extra:                     # §6.4: the stored schedule (lr_max, lr_min, W, U)
            optim = OptimConfig(**extra["optim"])
    tx, schedule = make_optimizer(optim, params, cfg)
    opt_state = tx.init(params)
    if point is not None:
        reader = Checkpoints(src_root, max_to_keep=None, async_save=False, read_only=True)
        try:
            r = reader.restore(step0, params=params, opt_state=None if opts.override_scheduling else opt_state,
                               state=state_target(rest))
        finally:
            reader.close()
        # Restored arrays come back committed to a device; fresh ones are not. Uncommitted
        # copies make the resumed run call the very program a fresh run compiles.
        params, counters, rng, rest, saved_opt = jax.tree.map(
            lambda x: jnp.asarray(np.asarray(x)), (r.params, r.counters, r.rng, r.buffers, r.opt_state))
        if opts.override_scheduling:
            opt_state = tx.init(params)
            counters = counters._replace(updates=jnp.zeros_like(counters.updates))
        else:
            opt_state = saved_opt
        if r.data_state is None:
            raise CheckpointError(f"checkpoint {sdir} has no data-iterator state")
        data.set_state(r.data_state)
        start, batch_counter, resumed_from = step0, int(r.extra.get("batch_counter", 0)), sdir
        log(f"resuming from {sdir} (step {start} of {opts.steps})")
        if optim.total_updates != opts.steps:
            log(f"note: the checkpoint's LR schedule spans {optim.total_updates} updates; this run stops at "
                f"{opts.steps}")

    kw = {} if trainee.step_options is None else {"options": trainee.step_options}
    step_fn = TrainStep(graphdef, rest, cfg, trainee.loss, tx, schedule, **kw)
    ckpts = Checkpoints(root, max_to_keep=opts.keep_checkpoints or None, async_save=opts.async_checkpoints)
    nb = opts.batches_per_epoch

    def completed_epoch(bc: int) -> int:
        return trainee.completed_epoch_offset + (bc // nb if nb else 0)

    def save(step: int) -> None:
        extra = {"step": step, "batch_counter": batch_counter, "completed_epoch": completed_epoch(batch_counter),
                 "model_config": cfg.to_reference_dict(), "optim": dataclasses.asdict(optim),
                 "signature": opts.signature, "tokenizer_name": trainee.tokenizer_name,
                 "tokenizer": TOKENIZER_SUBDIR if (root / TOKENIZER_SUBDIR).is_dir() else None}
        ckpts.save(step, params, opt_state, counters, rng=rng, data_state=data.get_state(), extra=extra,
                   buffers=rest)

    def live_model():
        return nnx.merge(graphdef, params, rest)

    mlog = MetricsLog(out, keep_until=start if resumed_from is not None else None)
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=start, desc="train", file=sys.stderr, dynamic_ncols=True)
    pending: list = []                     # [(step, device metrics, device counters)]
    t_last = time.perf_counter()
    last = {}

    def flush() -> None:
        nonlocal t_last
        for step, m, c in pending:
            m, c = jax.device_get((m, c))
            now = time.perf_counter()
            rec = step_record(step, m, c, float(m.tokens) / max(now - t_last, 1e-9))
            t_last = now
            mlog.write(rec)
            last.update(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}", lr=f"{rec['lr']:.2e}")
                bar.update(1)
        pending.clear()

    def ctx(step: int, epoch_done: bool = False) -> StepContext:
        return StepContext(step, opts.steps, epoch_done, completed_epoch(batch_counter), mlog, live_model, out,
                           trainee)

    try:
        for h in hooks:
            h.start(ctx(start), resumed_from is not None)
        for u in range(start, opts.steps):
            window = [next(data) for _ in range(acc)]
            warm = np.arange(batch_counter, batch_counter + acc, dtype=np.float32)
            epoch_before = completed_epoch(batch_counter)
            batch_counter += acc
            batch = window_batch(window, cfg.vocab_size, chunk_size=trainee.loss.chunk_size, warmup_step=warm,
                                 use_rosa=cfg.use_rosa)
            params, opt_state, counters, m = step_fn(params, opt_state, counters, batch)
            flush()                                       # the previous step's metrics
            pending.append((u + 1, m, counters))
            step = u + 1
            epoch_done = completed_epoch(batch_counter) > epoch_before
            if (opts.save_every and step % opts.save_every == 0) or step == opts.steps:
                flush()
                save(step)
            if hooks:
                flush()
                c = ctx(step, epoch_done)
                for h in hooks:
                    h.step(c)
        flush()
        save(max(start, opts.steps))              # no-op when that step is already saved
        ckpts.wait()
    finally:
        if bar is not None:
            bar.close()
        ckpts.close()
        mlog.close()
    final = ctx(max(start, opts.steps))
    for h in hooks:
        h.end(final)
    model_dir = None
    if opts.save_model:
        from hierarchos_jax.io.model_dir import save_model_dir

        model_dir = save_model_dir(live_model(), out / "model", tokenizer_dir=trainee.tokenizer_dir,
                                   metadata={"completed_epoch": completed_epoch(batch_counter),
                                             "tokenizer_name": trainee.tokenizer_name})
        log(f"inference directory: {model_dir}")
    return {"steps": max(start, opts.steps), "resumed_from": str(resumed_from) if resumed_from else None,
            "skipped": int(jax.device_get(counters.skipped)), "model_dir": str(model_dir) if model_dir else None,
            "metrics": str(mlog.path), "checkpoints": str(root), "last": last,
            "model": live_model()}


# ---------------------------------------------------------------- the embedded task


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
    warmup_steps: int = 0
    disable_lr_schedule: bool = False
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    min_digits: int = 1
    max_digits: int = 2
    eval_problems: int = 128
    eval_every: int = 0           # 0: only before and after training
    progress: bool = True
    save_model: bool = True
    samples: int = 3
    save_every: int = 0
    keep_checkpoints: int = 3
    resume: bool = True
    resume_from: str | None = None
    override_scheduling: bool = False
    model_path: str | None = None            # weights-only continuation
    config_overrides: dict = dataclasses.field(default_factory=dict)
    loss: LossConfig | None = None           # None: LossConfig(chunk_size=chunk_size)
    step_options: Any = None
    hooks: Sequence[Hook] = ()


def build_model(args: TrainArgs, vocab_size: int):
    cfg = HierarchosConfig.from_preset(args.preset)
    # Inference uses the training-mode worker rule, so held-out decoding matches training.
    changes = dict(vocab_size=vocab_size, training_chunk_size=max(args.chunk_size, 1), inference_logit_parity=True)
    changes.update(args.config_overrides)
    cfg = cfg.replace(**changes)
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


class HeldoutAccuracy(Hook):
    """Greedy accuracy on the task's held-out problems: at the start (fresh runs), every
    ``every`` steps, and at the end; each value also goes to ``metrics.jsonl``."""

    def __init__(self, task, problems, codec, *, every: int, log):
        self.task, self.problems, self.codec, self.every, self.log = task, problems, codec, every, log
        self.evals: list[tuple[int, float]] = []
        self.shown: list[str] = []

    def _run(self, ctx: StepContext) -> float:
        a, self.shown = heldout_accuracy(ctx.model(), self.task, self.problems, self.codec)
        self.evals.append((ctx.step, a))
        return a

    def start(self, ctx, resumed):
        if not resumed and self.problems:
            self.log(f"held-out accuracy before training: {self._run(ctx):.1%}")

    def step(self, ctx):
        if self.every and self.problems and ctx.step % self.every == 0 and ctx.step < ctx.total:
            a = self._run(ctx)
            ctx.metrics.write({"step": ctx.step, "heldout_accuracy": a})
            self.log(f"step {ctx.step}: held-out accuracy {a:.1%}")

    def end(self, ctx):
        if self.problems:
            self._run(ctx)


def _window_mean(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / max(1, len(xs))


def train_synthetic(args: TrainArgs, *, log=print) -> dict:
    """Train on the embedded addition task (quickstart / ``train`` without data)."""
    t_start = time.time()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = synthetic.save_tokenizer(out / "tokenizer")
    codec = synthetic.CharCodec()
    task = synthetic.AdditionTask(min_digits=args.min_digits, max_digits=args.max_digits)
    offset = 0
    if args.model_path:
        from hierarchos_jax.io.model_dir import load_model_dir

        loaded = load_model_dir(args.model_path)
        if loaded.config.vocab_size != codec.vocab_size:
            raise ValueError(f"--model-path {args.model_path}: vocabulary {loaded.config.vocab_size} is not the "
                             f"embedded task's {codec.vocab_size} (give a data option to train on your data)")
        model = with_config(loaded.model, args.config_overrides)
        cfg = model.config
        offset = int(loaded.metadata.get("completed_epoch", 0) or 0)
    else:
        cfg, model = build_model(args, codec.vocab_size)
    optim = OptimConfig(starting_lr=args.starting_lr, min_lr=args.min_lr, warmup_ratio=args.warmup_ratio,
                        warmup_steps=args.warmup_steps, disable_lr_schedule=args.disable_lr_schedule,
                        total_updates=max(1, args.steps), weight_decay=args.weight_decay, grad_clip=args.grad_clip)
    loss = args.loss or LossConfig(chunk_size=args.chunk_size)
    trainee = Trainee(model, tok_dir, optim, loss, args.step_options, tokenizer_name="hierarchos-synthetic-char",
                      completed_epoch_offset=offset)
    data = SyntheticBatches(task, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed,
                            vocab_size=cfg.vocab_size, use_rosa=cfg.use_rosa)
    problems = task.heldout_problems(args.eval_problems, seed=args.seed + 1) if args.eval_problems else []
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    log(f"model: preset {args.preset!r}, vocab {cfg.vocab_size}, {n_params:,} parameters; "
        f"task: {args.min_digits}-{args.max_digits} digit addition (answer reversed), "
        f"{len(problems)} held-out problems")
    acc_hook = HeldoutAccuracy(task, problems, codec, every=args.eval_every, log=log)
    signature = {"task": "synthetic-addition", "batch_size": args.batch_size, "seq_len": args.seq_len,
                 "chunk_size": loss.chunk_size, "accumulation_steps": args.accumulation_steps, "seed": args.seed,
                 "digits": [args.min_digits, args.max_digits]}
    opts = LoopOptions(out_dir=str(out), steps=args.steps, accumulation_steps=args.accumulation_steps,
                       save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, resume=args.resume,
                       resume_from=args.resume_from, override_scheduling=args.override_scheduling, seed=args.seed,
                       progress=args.progress,
                       save_model=args.save_model, signature=signature)
    res = train_loop(trainee, data, opts, hooks=[acc_hook, *args.hooks], log=log)
    history = step_lines(read_metrics(res["metrics"]))
    k = max(1, min(10, len(history) // 5))
    loss_start = _window_mean([h["loss"] for h in history[:k]])
    loss_end = _window_mean([h["loss"] for h in history[-k:]])
    evals = acc_hook.evals
    acc0 = evals[0][1] if evals and evals[0][0] == 0 else float("nan")
    acc1 = evals[-1][1] if evals else float("nan")
    log(f"loss {loss_start:.3f} -> {loss_end:.3f} (mean of first/last {k} steps); "
        f"held-out accuracy {acc0:.1%} -> {acc1:.1%}; skipped updates {res['skipped']}")
    for line in acc_hook.shown[:args.samples]:
        log(f"sample (greedy): {line}")
    wall = time.time() - t_start
    summary = dict(loss_start=loss_start, loss_end=loss_end, heldout_accuracy_start=acc0,
                   heldout_accuracy_end=acc1, evals=evals, steps=res["steps"], skipped=res["skipped"],
                   wall_s=wall, model_dir=res["model_dir"], metrics=res["metrics"],
                   checkpoints=res["checkpoints"], resumed_from=res["resumed_from"],
                   samples=acc_hook.shown[:args.samples])
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "summary.json")
    log(f"wall time {wall:.0f} s")
    return summary
