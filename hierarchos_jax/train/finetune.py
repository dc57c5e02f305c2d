"""LoRA fine-tuning of a model directory (``hierarchos finetune``; spec: training.md §7).

The base parameters stay frozen; only the adapter pytree of :mod:`hierarchos_jax.train.lora`
(LoRA ``A``/``B`` on the 21 target Linear layers + the trained LTM copy) is optimised:
``params = apply_lora(base, lora)`` is differentiated through ``jax.vjp``, so the gradient
of the train step's objective (:func:`hierarchos_jax.train.step.window_grads`: the
reference loss composition, one full-sequence forward per row unless a TBPTT chunk size
is given, read-only LTM) flows back to the adapter only.

The model runs in **training mode** (fixed-length ACT and worker loops, commitment cost,
detach-every-n). The reference fine-tunes in eval mode because its loader returns the
model in eval mode and nothing switches it back (spec §7 quirk); that is not copied. The
memory-gate warm-up clock starts after the warm-up (the base model is already trained).

Optimizer: the reference's clip + AdamW with its grouping rule applied to the adapter
(LoRA matrices decay, except those on ``val_proj``; the LTM copy does not), warm-up +
cosine schedule per update.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hierarchos_jax.train import lora as lora_lib
from hierarchos_jax.train.optimizer import (
    OptimConfig,
    clip_by_global_norm_ref,
    make_schedule,
)
from hierarchos_jax.train.step import (
    Counters,
    LossConfig,
    StepContext,
    StepOptions,
    guarded_update,
    make_batch,
    window_grads,
    zero_counters,
)


@dataclasses.dataclass
class FinetuneArgs:
    model_path: str = ""
    out_dir: str = "./hierarchos_model"
    tokenizer_path: str | None = None
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    finetune_unlock_percent: float | None = None
    steps: int = 0                 # optimizer updates; 0: epochs x updates per epoch (data) or 60 (embedded task)
    epochs: int = 3
    batch_size: int = 64
    accumulation_steps: int = 1
    max_length: int | None = None  # None: 1024 with data, 48 on the embedded task
    chunk_size: int = 0            # TBPTT chunk; 0 = one full-sequence forward per row (reference)
    starting_lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    disable_lr_schedule: bool = False
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    h_stride: int | None = None
    seed: int = 0
    save_every: int = 0
    progress: bool = True
    compute_dtype: str = "float32"  # "bfloat16": --amp (fp32 params and adapter, bf16 compute)
    resume_from_ckpt: str | None = None
    override_scheduling: bool = False  # on resume: fresh optimizer state and schedule position
    keep_checkpoints: int = 3
    loss: LossConfig = dataclasses.field(default_factory=lambda: LossConfig(chunk_size=0))


class FinetuneMetrics(NamedTuple):
    loss: jax.Array
    ce: jax.Array
    ponder: jax.Array
    commitment: jax.Array
    grad_norm: jax.Array
    lr: jax.Array
    tokens: jax.Array
    applied: jax.Array


# ---------------------------------------------------------------- optimizer on the adapter

def adapter_decay_mask(lora: dict) -> dict:
    """True where AdamW decays: LoRA matrices except on ``val_proj``; never the LTM copy."""
    adapters = {n: {s: not n.startswith("val_proj.") for s in ab} for n, ab in lora["adapters"].items()}
    return {"adapters": adapters, "saved": {n: False for n in lora["saved"]}}


def make_adapter_optimizer(ocfg: OptimConfig, lora: dict):
    schedule = make_schedule(ocfg)
    tx = optax.chain(clip_by_global_norm_ref(ocfg.grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=ocfg.weight_decay,
                                 mask=adapter_decay_mask(lora)))
    return tx, schedule


# ---------------------------------------------------------------- the step

def finetune_step(graphdef, cfg, lc: LossConfig, options: StepOptions, spec: lora_lib.LoraSpec, ocfg: OptimConfig,
                  rest, base, lora, opt_state, counters: Counters, batch, divisor, dropout_key):
    """One optimizer update of the adapter over an accumulation window (pure; read-only LTM)."""
    ctx = StepContext(graphdef, rest, cfg, lc, options)
    tx, schedule = make_adapter_optimizer(ocfg, lora)
    merged, pullback = jax.vjp(lambda l: lora_lib.apply_lora(base, l, spec, dropout_key=dropout_key), lora)
    grads, has, (loss, ce, _z, ponder, commit), n_bad = window_grads(ctx, merged, batch, divisor)
    (lgrads,) = pullback(grads)
    lr = schedule(counters.updates)
    lora, opt_state, ok, skipped, gnorm = guarded_update(tx, lgrads, has, n_bad, opt_state, lora)
    counters = counters._replace(updates=counters.updates + ok.astype(jnp.int32),
                                 skipped=counters.skipped + skipped.astype(jnp.int32),
                                 nonfinite_batches=counters.nonfinite_batches + n_bad)
    tokens = jnp.sum(batch.attention_mask.astype(jnp.float32))
    return lora, opt_state, counters, FinetuneMetrics(loss, ce, ponder, commit, gnorm, lr, tokens, ok)


@functools.lru_cache(maxsize=8)
def _jitted_step(graphdef, cfg, lc, options, spec, ocfg):
    # One compiled step per static setting, shared by later runs in the process (a resume, say).
    fn = functools.partial(finetune_step, graphdef, cfg, lc, options, spec, ocfg)
    return jax.jit(fn, donate_argnums=(2, 3))


class FinetuneStep:
    """``lora, opt_state, counters, metrics = step(base, lora, opt_state, counters, batch, key)``,
    jitted with the adapter and optimizer state donated (the base and the buffers are
    arguments, not baked-in constants)."""

    def __init__(self, graphdef, rest, cfg, lc: LossConfig, spec: lora_lib.LoraSpec, ocfg: OptimConfig,
                 options: StepOptions | None = None):
        options = options or StepOptions()
        if options.inner_update:
            raise ValueError("LoRA fine-tuning trains with a read-only LTM (spec §7)")
        self._dropout = spec.dropout > 0
        self._rest = rest
        self._jit = _jitted_step(graphdef, cfg, lc, options, spec, ocfg)

    def __call__(self, base, lora, opt_state, counters, batch, key, divisor=None):
        if divisor is None:
            divisor = batch.input_ids.shape[0]
        counters = Counters(*(jnp.asarray(c, jnp.int32) for c in counters))
        return self._jit(self._rest, base, lora, opt_state, counters, batch, jnp.float32(divisor),
                         key if self._dropout else None)


# ---------------------------------------------------------------- data

class _Source(NamedTuple):
    micro_batches: Iterator[dict]     # dicts of numpy [B, T]
    batches_per_epoch: int | None
    tokenizer_dir: Path | None
    description: str


def _embedded_source(args: FinetuneArgs, vocab_size: int, seq_len: int) -> _Source:
    from hierarchos_jax.train import synthetic

    codec = synthetic.CharCodec()
    if vocab_size != codec.vocab_size:
        raise ValueError(f"no data option given, and the embedded synthetic task needs a model with vocab_size "
                         f"{codec.vocab_size} (this one has {vocab_size}): pass a data option such as --train")
    task = synthetic.AdditionTask()
    it = synthetic.batches(task, batch_size=args.batch_size, seq_len=seq_len, seed=args.seed, codec=codec)

    def gen():
        for ids, labels, mask in it:
            yield {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return _Source(gen(), None, None, "the embedded synthetic addition task")


def _data_source(data_args, tokenizer, args: FinetuneArgs, vocab_size: int, seq_len: int, chunk: int,
                 use_rosa: bool) -> _Source:
    from hierarchos_jax import data as data_lib

    td = data_lib.build_train_data(data_args, tokenizer, vocab_size=vocab_size, batch_size=args.batch_size,
                                   seq_len=seq_len, chunk_size=chunk, seed=args.seed, use_rosa=use_rosa,
                                   progress=args.progress)
    return _Source(iter(td.iterator()), int(td.batches_per_epoch), None, "the given data")


def _window(source: _Source, acc: int, *, cfg, chunk: int, warm0: float) -> Any:
    micro = [next(source.micro_batches) for _ in range(acc)]
    stack = lambda k: np.stack([np.asarray(m[k]) for m in micro])
    kw = {}
    if all("loss_weights" in m for m in micro):
        kw["loss_weights"] = stack("loss_weights")
    if cfg.use_rosa and all("rosa_ids" in m for m in micro):
        kw["rosa_ids"] = stack("rosa_ids")
    warm = np.arange(acc, dtype=np.float32) + np.float32(warm0)
    return make_batch(stack("input_ids"), stack("labels"), stack("attention_mask"), cfg.vocab_size,
                      chunk_size=chunk, warmup_step=warm, use_rosa=cfg.use_rosa, **kw)


# ---------------------------------------------------------------- the run

def _base_identity(model_path: Path, base_params) -> dict:
    from hierarchos_jax.io.model_dir import find_weights

    weights = find_weights(model_path)
    return {"path": str(model_path), "shape_sha256": lora_lib.shape_signature(base_params),
            "weights_sha256": lora_lib.file_sha256(weights)}


CHECKPOINT_KIND = "hierarchos-jax-lora-finetune"


def _data_state(source: _Source, drawn: int) -> dict:
    """Where the data stream is: the pipeline's own state, or (embedded task) the number of
    micro-batches drawn (the stream is deterministic from the seed)."""
    it = source.micro_batches
    return {"iterator": it.get_state()} if hasattr(it, "get_state") else {"drawn": int(drawn)}


def _skip_to(source: _Source, data_state: dict | None, drawn: int) -> None:
    it = source.micro_batches
    if data_state and "iterator" in data_state and hasattr(it, "set_state"):
        it.set_state(data_state["iterator"])
        return
    for _ in range(int((data_state or {}).get("drawn", drawn))):
        next(it)


def _metrics_up_to(path: Path, step: int) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]


def _resume(args, identity: dict, spec, lora, opt_state, counters, *, log):
    """Restore adapter, optimizer state and counters from ``--resume-from-ckpt`` (a step
    directory, a ``checkpoints`` directory or a fine-tune output directory)."""
    from hierarchos_jax.train.checkpoint import (
        CheckpointError,
        Checkpoints,
        read_meta,
        resolve_step_dir,
        state_target,
    )

    root, step = resolve_step_dir(args.resume_from_ckpt)
    meta = read_meta(root / str(step)).get("extra", {})
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"checkpoint {root / str(step)} is not a LoRA fine-tune checkpoint")
    if meta.get("base", {}).get("shape_sha256") != identity["shape_sha256"]:
        raise CheckpointError(f"checkpoint {root / str(step)} was fine-tuned from a base with other shapes "
                              f"than {args.model_path}")
    if int(meta.get("rank", -1)) != spec.rank:
        raise CheckpointError(f"checkpoint {root / str(step)} has LoRA rank {meta.get('rank')}, this run {spec.rank}")
    if meta["base"].get("weights_sha256") != identity["weights_sha256"]:
        log(f"warning: {args.model_path} is not the exact base of {root / str(step)} (weights differ)")
    fresh_opt = bool(args.override_scheduling)
    restored = Checkpoints(root, read_only=True).restore(
        step, params=jax.eval_shape(lambda: lora), opt_state=None if fresh_opt else jax.eval_shape(lambda: opt_state),
        state=state_target({}))
    log(f"resumed from {root / str(step)} at update {step}" + (" (fresh optimizer: --override-scheduling)"
                                                                if fresh_opt else ""))
    # Host round trip: uncommitted arrays like a fresh run's, so the compiled step is reused.
    plain = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)
    if fresh_opt:
        return plain(restored.params), opt_state, counters, step, restored.data_state
    return (plain(restored.params), plain(restored.opt_state), plain(restored.counters), step,
            restored.data_state)


def finetune(args: FinetuneArgs, *, data_args=None, log=print) -> dict:
    """Fine-tune ``args.model_path`` with LoRA; writes the adapter (+ tokenizer files and
    ``metrics.jsonl``) into ``args.out_dir``; returns a summary dict. ``data_args`` is the
    argparse namespace holding the data options (``hierarchos_jax.data``); without a data
    option the embedded synthetic task is used."""
    from hierarchos_jax.io.model_dir import load_model_dir
    from hierarchos_jax.io.tokenizer import (
        Tokenizer,
        TokenizerError,
        find_tokenizer_dir,
    )

    t_start = time.time()
    model_path = Path(args.model_path)
    loaded = load_model_dir(model_path)
    cfg = loaded.config
    if args.h_stride is not None and args.h_stride != cfg.h_stride:
        cfg = cfg.replace(h_stride=int(args.h_stride))
        log(f"h_stride overridden: {loaded.config.h_stride} -> {cfg.h_stride} (changes the planning cadence)")
    model = loaded.model
    model.config = cfg
    graphdef, base, rest = nnx.split(model, nnx.Param, ...)

    use_data = data_args is not None and _has_data_args(data_args)
    seq_len = int(args.max_length or (1024 if use_data else 48))
    chunk = int(args.chunk_size) if args.chunk_size > 0 else seq_len
    tok_dir = None
    tokenizer = None
    try:
        tok_dir = find_tokenizer_dir(args.tokenizer_path or (model_path if model_path.is_dir() else model_path.parent))
        tokenizer = Tokenizer(tok_dir)
        tokenizer.check_vocab(cfg.vocab_size)
    except TokenizerError:
        if use_data or args.tokenizer_path:
            raise
    if use_data:
        source = _data_source(data_args, tokenizer, args, cfg.vocab_size, seq_len, chunk, cfg.use_rosa)
    else:
        source = _embedded_source(args, cfg.vocab_size, seq_len)

    rank = int(args.lora_r)
    if args.finetune_unlock_percent is not None and rank == 8:
        rank = lora_lib.unlock_percent_rank(base, float(args.finetune_unlock_percent))
        log(f"--finetune-unlock-percent {args.finetune_unlock_percent}: LoRA rank {rank}")
    spec = lora_lib.LoraSpec(rank=rank, alpha=float(args.lora_alpha), dropout=float(args.lora_dropout))
    key = jax.random.key(args.seed)
    init_key, drop_key = jax.random.split(key)
    lora = lora_lib.init_lora(base, spec, init_key)

    acc = max(1, int(args.accumulation_steps))
    if args.steps > 0:
        total = int(args.steps)
    elif source.batches_per_epoch:
        total = math.ceil(source.batches_per_epoch / acc) * max(1, int(args.epochs))
    else:
        total = 60
    ocfg = OptimConfig(starting_lr=args.starting_lr, min_lr=args.min_lr, warmup_steps=args.warmup_steps,
                       warmup_ratio=args.warmup_ratio, total_updates=total, weight_decay=args.weight_decay,
                       grad_clip=args.grad_clip, disable_lr_schedule=args.disable_lr_schedule)
    tx, _ = make_adapter_optimizer(ocfg, lora)
    opt_state = tx.init(lora)
    lc = dataclasses.replace(args.loss, chunk_size=max(0, args.chunk_size))
    step_fn = FinetuneStep(graphdef, rest, cfg, lc, spec, ocfg, StepOptions(compute_dtype=args.compute_dtype))
    counters = zero_counters()
    identity = _base_identity(model_path, base)
    start = 0
    if args.resume_from_ckpt:
        lora, opt_state, counters, start, data_state = _resume(args, identity, spec, lora, opt_state, counters,
                                                               log=log)
        _skip_to(source, data_state, start * acc)

    n_base = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(base))
    n_train = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(lora))
    log(f"base {model_path}: {n_base:,} parameters; LoRA r={spec.rank} alpha={spec.alpha:g} "
        f"dropout={spec.dropout:g} on {len(lora['adapters'])} layers + {sorted(lora['saved'])}: "
        f"{n_train:,} trainable ({100.0 * n_train / max(1, n_base):.2f}%); data: {source.description}; "
        f"{total} updates of {acc} x {args.batch_size} x {seq_len} tokens (training mode)")

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = None
    if args.save_every:
        from hierarchos_jax.train.checkpoint import Checkpoints

        ckpts = Checkpoints(out / "checkpoints", max_to_keep=args.keep_checkpoints)
    warm0 = float(max(cfg.memory_gate_warmup_steps, 0))
    history: list[dict] = []
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="finetune", file=sys.stderr, dynamic_ncols=True)

    def save(step: int) -> None:
        lora_lib.save_adapter(out, jax.device_get(lora), spec, base=identity,
                              extra={"step": step, "total_steps": total, "training_mode": "train",
                                     "h_stride": int(cfg.h_stride)})

    metrics_path = out / "metrics.jsonl"
    kept = _metrics_up_to(metrics_path, start) if start else []
    with open(metrics_path, "w") as mf:
        mf.writelines(kept)
        for u in range(start, total):
            batch = _window(source, acc, cfg=cfg, chunk=chunk, warm0=warm0 + u * acc)
            t0 = time.perf_counter()
            lora, opt_state, counters, m = step_fn(base, lora, opt_state, counters, batch,
                                                   jax.random.fold_in(drop_key, u))
            m = jax.device_get(m)
            dt = time.perf_counter() - t0
            rec = dict(step=u + 1, loss=float(m.loss), ce=float(m.ce), ponder=float(m.ponder),
                       commitment=float(m.commitment), lr=float(m.lr), grad_norm=float(m.grad_norm),
                       tokens_per_s=float(m.tokens) / max(dt, 1e-9), applied=bool(m.applied),
                       skipped=int(counters.skipped))
            history.append(rec)
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}", lr=f"{rec['lr']:.2e}")
                bar.update(1)
            if args.save_every and (u + 1) % args.save_every == 0:
                save(u + 1)
                ckpts.save(u + 1, lora, opt_state, counters, rng=jax.random.key_data(drop_key),
                           data_state=_data_state(source, (u + 1) * acc),
                           extra={"kind": CHECKPOINT_KIND, "base": identity, "rank": spec.rank,
                                  "alpha": spec.alpha, "total_steps": total})
    if bar is not None:
        bar.close()
    if ckpts is not None:
        ckpts.close()
    save(total)
    if tok_dir is not None:
        from hierarchos_jax.io.model_dir import TOKENIZER_FILES

        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                shutil.copy2(tok_dir / name, out / name)
    if not history:
        history = [json.loads(x) for x in kept] or [{"loss": float("nan")}]
    k = max(1, min(10, len(history) // 5))
    finite = lambda xs: [x for x in xs if math.isfinite(x)] or [float("nan")]
    loss_start = float(np.mean(finite([h["loss"] for h in history[:k]])))
    loss_end = float(np.mean(finite([h["loss"] for h in history[-k:]])))
    log(f"loss {loss_start:.3f} -> {loss_end:.3f} (mean of first/last {k} updates); skipped updates "
        f"{int(counters.skipped)}; adapter: {out / lora_lib.ADAPTER_WEIGHTS}")
    summary = dict(loss_start=loss_start, loss_end=loss_end, steps=total, rank=spec.rank,
                   trainable_params=n_train, skipped=int(counters.skipped), adapter_dir=str(out),
                   wall_s=time.time() - t_start)
    (out / "finetune_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _has_data_args(ns) -> bool:
    try:
        from hierarchos_jax.data import has_data_args
    except ImportError:
        return False
    return bool(has_data_args(ns))


# ---------------------------------------------------------------- merge

def merge_adapter_dir(model_path: str, lora_path: str, out_dir: str, *, log=print) -> Path:
    """``hierarchos merge-lora``: base model dir + adapter dir -> a normal inference dir
    (``W ← W + (α/r)·B·A`` per adapted layer, LTM replaced by its trained copy)."""
    from hierarchos_jax.io.model_dir import find_weights, load_model_dir, save_model_dir
    from hierarchos_jax.io.tokenizer import TokenizerError, find_tokenizer_dir

    loaded = load_model_dir(model_path)
    graphdef, base, rest = nnx.split(loaded.model, nnx.Param, ...)
    lora, spec, config = lora_lib.load_adapter(lora_path)
    lora_lib.check_fits(base, lora)
    ours = config.get("hierarchos_jax") or {}
    want = ours.get("base_weights_sha256")
    if want:
        have = lora_lib.file_sha256(find_weights(Path(model_path)))
        if have != want:
            log(f"warning: {model_path} is not the exact base this adapter was trained on "
                f"(weights sha256 {have[:12]} != {want[:12]}); shapes fit, merging anyway")
    merged = lora_lib.merge_lora(base, lora, spec)
    model = nnx.merge(graphdef, merged, rest)
    stride = ours.get("h_stride")
    if stride is not None and int(stride) != loaded.config.h_stride:  # finetune --h_stride: the trained cadence
        model.config = loaded.config.replace(h_stride=int(stride))
        log(f"h_stride {loaded.config.h_stride} -> {stride} (the adapter was trained with it)")
    tok = None
    for cand in (Path(lora_path), Path(model_path)):
        try:
            tok = find_tokenizer_dir(cand if cand.is_dir() else cand.parent)
            break
        except TokenizerError:
            continue
    meta = dict(loaded.metadata)
    meta["converted_from"] = f"{model_path} + LoRA {lora_path}"
    out = save_model_dir(model, out_dir, tokenizer_dir=tok, metadata=meta)
    log(f"merged {len(lora['adapters'])} LoRA layers (r={spec.rank}, scale {spec.scale:g}) and "
        f"{len(lora['saved'])} trained tensors into {out}")
    return out
