"""``hierarchos train``: train a model on your data or on the built-in synthetic task.

Option spellings follow the reference CLI (dash and underscore); spec/cli.md lists each
with its JAX meaning. PyTorch-only options are accepted and ignored with one warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ._common import CLIError, load

# PyTorch / CUDA / DirectML knobs with no meaning here (spec/cli.md §2.7 "PT"): accepted, warned about.
_PT_VALUE_OPTIONS = (("compile-mode", str), ("compile-backend", str), ("device", str), ("threads", int),
                     ("max-sanitized-gradient-values", int), ("cuda-loss-chunk-rows", int))
_PT_FLAGS = ("compile", "no-compile", "force-compile", "compile-dynamic", "compile-fullgraph-worker",
             "compile-cudagraphs", "no-compile-cudagraphs", "no-compile-h-rnn", "verbose-compile",
             "compile-static-worker-loop", "no-compile-static-worker-loop", "no-compile-pad-to-chunk-size",
             "no-cuda-chunked-lm-loss", "no-cpu-chunked-lm-loss", "no-ltm-cpu-gather-retrieval",
             "no-ltm-cpu-sparse-update", "debug-numerics", "cuda-prefetch", "no-cuda-prefetch")
# Shape-defining keys (from scratch only; spec/cli.md §2.2), applied to the preset.
_ARCH_INT = ("context_dim", "persistent_dim", "ltm_slots", "ltm_key_dim", "ltm_val_dim", "h_hidden", "l_hidden",
             "h_stride", "max_h_steps", "max_l_steps", "ltm_topk", "rwkv_head_size", "rosa_max_context")
# Runtime model keys (spec/training.md §5.1 step 3): also applied to a --model-path continuation.
_RUNTIME_FLOAT = ("recurrent_state_clamp", "context_state_clamp", "drift_state_clamp", "drift_norm_clamp",
                  "drift_delta_scale", "activation_clamp", "halt_logit_clamp", "rwkv_channel_mix_key_clamp",
                  "rwkv_channel_mix_deepembed_clamp", "l_conv_atol", "commitment_threshold", "h_halt_thresh",
                  "memory_gate_warmup_floor", "ltm_score_grad_scale")
_RUNTIME_INT = ("memory_gate_warmup_steps", "detach_every_n_steps")
_SYNTHETIC_DEFAULTS = {"steps": 60, "batch_size": 16, "max_length": 48, "starting_lr": 3e-3, "min_lr": 1e-4,
                       "warmup_ratio": 0.05}
_DATA_DEFAULTS = {"batch_size": 64, "max_length": 1024, "starting_lr": 1e-4, "min_lr": 1e-6, "warmup_ratio": 0.0,
                  "training_chunk_size": 256}


def _spell(name: str) -> list[str]:
    dash, under = f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"
    return [dash] if dash == under else [dash, under]


def _add(parser, group, *names, **kw) -> None:
    """``group.add_argument`` with every spelling not already taken (the data options may
    define some of the shared compatibility flags)."""
    strings = [s for n in names for s in _spell(n) if s not in parser._option_string_actions]
    if strings:
        group.add_argument(*dict.fromkeys(strings), **kw)


def _bool_value(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _data_module():
    try:
        import hierarchos_jax.data as data

        return data
    except ImportError:
        return None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on your data (or, without a data option, on the built-in synthetic task)",
        description=(
            "Train a Hierarchos model with the reference's objective (CE + z-loss + ponder + commitment), "
            "TBPTT, AdamW with its parameter groups and warm-up + cosine schedule. Data: --train PATH / "
            "--hf-dataset NAME (see the data options); without one, the embedded synthetic addition task "
            "(like 'hierarchos quickstart'). Writes OUT_DIR/metrics.jsonl (one line per optimizer step), "
            "Orbax checkpoints OUT_DIR/checkpoints/<step> (every --save-every steps and at the end) and the "
            "inference directory OUT_DIR/model. Re-running the same command with the same --out-dir resumes "
            "exactly from the newest checkpoint."),
    )
    run_g = p.add_argument_group("run")
    _add(p, run_g, "out-dir", dest="out_dir", default="./hierarchos_model", metavar="DIR",
         help="run directory (default %(default)s)")
    _add(p, run_g, "steps", "max-steps", dest="steps", type=int, default=None, metavar="N",
         help="optimizer updates in total (default: 60 on the built-in task; with data ceil(N_b/acc) x --epochs)")
    _add(p, run_g, "epochs", dest="epochs", type=int, default=3, metavar="E",
         help="epochs over the data when --steps is not given (default %(default)s)")
    _add(p, run_g, "seed", dest="seed", type=int, default=0, help="init, data order (default %(default)s)")
    _add(p, run_g, "batch-size", dest="batch_size", type=int, default=None, metavar="B",
         help="rows per micro-batch (default 16 built-in task, 64 with data)")
    _add(p, run_g, "max-length", dest="max_length", type=int, default=None, metavar="T",
         help="tokens per row (default 48 built-in task, 1024 with data)")
    _add(p, run_g, "training-chunk-size", dest="training_chunk_size", type=int, default=None, metavar="L",
         help="TBPTT chunk length (default: the row length on the built-in task, 256 with data)")
    _add(p, run_g, "accumulation-steps", dest="accumulation_steps", type=int, default=1, metavar="A",
         help="micro-batches per optimizer update (default %(default)s)")
    _add(p, run_g, "save-every", "save-steps", dest="save_every", type=int, default=0, metavar="N",
         help="checkpoint every N optimizer updates; one is always written at the end (default: only then)")
    _add(p, run_g, "keep-checkpoints", dest="keep_checkpoints", type=int, default=3, metavar="K",
         help="keep the newest K checkpoints, 0 = all (default %(default)s)")
    _add(p, run_g, "resume-from-ckpt", dest="resume_from_ckpt", default=None, metavar="PATH",
         help="continue exactly from this checkpoint (a step dir, a checkpoints dir or a run dir); by "
              "default the newest checkpoint in OUT_DIR/checkpoints is used")
    _add(p, run_g, "override-scheduling", dest="override_scheduling", nargs="?", const=True, default=False,
         type=_bool_value, help="on resume: fresh optimizer state and an LR schedule over the remaining updates")
    _add(p, run_g, "no-progress", dest="no_progress", action="store_true", help="no progress bar")
    _add(p, run_g, "progress-log-steps", dest="progress_log_steps", type=int, default=25, help=argparse.SUPPRESS)

    model_g = p.add_argument_group("model")
    _add(p, model_g, "preset", dest="preset", default="tiny", help="model preset for a new model (default %(default)s)")
    _add(p, model_g, "model-path", dest="model_path", default=None, metavar="DIR",
         help="weights-only continuation: start from this model directory with a fresh optimizer and schedule")
    _add(p, model_g, "tokenizer-path", dest="tokenizer_path", default=None, metavar="DIR",
         help="tokenizer directory (default: the --model-path directory); needed with data")
    for k in _ARCH_INT:
        _add(p, model_g, k, dest=k, type=int, default=None, help=argparse.SUPPRESS)
    _add(p, model_g, "use-deepembed", dest="use_deepembed", action="store_true", default=None, help=argparse.SUPPRESS)
    _add(p, model_g, "no-deepembed", dest="use_deepembed", action="store_false", help=argparse.SUPPRESS)
    _add(p, model_g, "use-rosa", dest="use_rosa", action="store_true", default=None, help=argparse.SUPPRESS)
    _add(p, model_g, "no-rosa", dest="use_rosa", action="store_false", help=argparse.SUPPRESS)
    _add(p, model_g, "no-memory-token-routers", dest="memory_token_routers", action="store_false", default=None,
         help=argparse.SUPPRESS)
    for k in _RUNTIME_FLOAT:
        _add(p, model_g, k, dest=k, type=float, default=None, help=argparse.SUPPRESS)
    for k in _RUNTIME_INT:
        _add(p, model_g, k, dest=k, type=int, default=None, help=argparse.SUPPRESS)
    model_g.description = ("the reference's architecture options (--context_dim, --ltm_slots, --h_stride, ...) "
                           "override the preset of a new model; its runtime options (clamps, --l_conv_atol, "
                           "--detach-every-n-steps, --memory-gate-warmup-steps, ...) also apply to --model-path")

    opt_g = p.add_argument_group("optimizer and objective")
    _add(p, opt_g, "starting-lr", dest="starting_lr", type=float, default=None, metavar="LR",
         help="peak LR (default 3e-3 built-in task, 1e-4 with data)")
    _add(p, opt_g, "min-lr", dest="min_lr", type=float, default=None, metavar="LR",
         help="cosine floor (default 1e-4 built-in task, 1e-6 with data)")
    _add(p, opt_g, "warmup-steps", dest="warmup_steps", type=int, default=0, metavar="N")
    _add(p, opt_g, "warmup-ratio", dest="warmup_ratio", type=float, default=None, metavar="R",
         help="warm-up as a fraction of all updates (default 0.05 built-in task, 0 with data)")
    _add(p, opt_g, "disable-lr-schedule", dest="disable_lr_schedule", action="store_true", help="constant LR")
    _add(p, opt_g, "rwkv-weight-decay", dest="weight_decay", type=float, default=0.1, metavar="WD")
    _add(p, opt_g, "grad-clip", dest="grad_clip", type=float, default=1.0, metavar="C")
    for name, default in (("ponder-loss-weight", 0.01), ("commitment-loss-weight", 0.5),
                          ("max-ce-loss-for-backward", 0.0), ("max-commitment-cost-for-backward", 2.0),
                          ("max-ponder-cost-for-backward", 0.0), ("ponder-target-scale", 0.5)):
        _add(p, opt_g, name, dest=name.replace("-", "_"), type=float, default=default, help=argparse.SUPPRESS)
    _add(p, opt_g, "encourage-thinking", dest="encourage_thinking", action="store_true", help=argparse.SUPPRESS)
    _add(p, opt_g, "adaptive-ponder", dest="adaptive_ponder", action="store_true", help=argparse.SUPPRESS)
    _add(p, opt_g, "cpu-loss-chunk-rows", dest="cpu_loss_chunk_rows", type=int, default=0, metavar="N",
         help="rows of [B*T] per logits block of the chunked CE (0: all)")
    opt_g.description = ("the reference's loss options (--ponder-loss-weight, --commitment-loss-weight, "
                         "--max-*-for-backward, --encourage-thinking, --adaptive-ponder, --ponder-target-scale) "
                         "are accepted with their meaning")

    step_g = p.add_argument_group("recurrence, memory and precision")
    _add(p, step_g, "ltm-training-mode", dest="ltm_training_mode", default=None, metavar="MODE",
         help="inner-update (the reference's default: supervised LTM writes between TBPTT chunks) or read-only")
    _add(p, step_g, "inference-like-ltm-training", dest="ltm_training_mode", action="store_const",
         const="read-only", help="= --ltm-training-mode read-only")
    _add(p, step_g, "ltm-lr", dest="ltm_lr", type=float, default=1e-3, metavar="LR",
         help="peak LTM inner-update LR (default %(default)s)")
    _add(p, step_g, "min-ltm-lr", dest="min_ltm_lr", type=float, default=None, metavar="LR",
         help="LTM LR cosine floor (default: --min-lr)")
    _add(p, step_g, "disable-ltm-lr-schedule", dest="disable_ltm_lr_schedule", action="store_true",
         help="constant LTM LR")
    _add(p, step_g, "full-sample-bptt", dest="full_sample_bptt", action="store_true", default=False,
         help="one attached graph per sample (forces read-only LTM, no in-chunk detach, parity inference policy)")
    _add(p, step_g, "no-full-sample-bptt", dest="full_sample_bptt", action="store_false", help=argparse.SUPPRESS)
    _add(p, step_g, "full-sample-activation-checkpointing", dest="full_sample_remat", action="store_true",
         default=None, help="rematerialise each segment in the backward pass (default on with --full-sample-bptt)")
    _add(p, step_g, "no-full-sample-activation-checkpointing", dest="full_sample_remat", action="store_false",
         help=argparse.SUPPRESS)
    _add(p, step_g, "full-sample-checkpoint-segment-size", dest="full_sample_segment_size", type=int, default=128,
         metavar="N", help="segment length of --full-sample-bptt (default %(default)s)")
    _add(p, step_g, "gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
         help="rematerialise each token step in the backward pass (default on; --no-gradient-checkpointing "
              "keeps the activations: faster, more memory)")
    _add(p, step_g, "no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
         help=argparse.SUPPRESS)
    _add(p, step_g, "amp", dest="amp", action="store_true", default=None,
         help="bf16 compute with fp32 parameters and optimizer state (default: on for GPU, off on CPU)")
    _add(p, step_g, "no-amp", dest="amp", action="store_false", help=argparse.SUPPRESS)

    ev = p.add_argument_group("evaluation during training")
    _add(p, ev, "eval-tasks", dest="eval_tasks", nargs="+", default=None, metavar="TASK",
         help="lm-eval tasks to run on the weights every --eval-steps updates and every --eval-every-epoch epochs")
    _add(p, ev, "eval-steps", "eval-every-steps", dest="eval_steps", type=int, default=None, metavar="N")
    _add(p, ev, "eval-every-epoch", dest="eval_every_epoch", type=int, default=1, metavar="E")
    _add(p, ev, "eval-limit", dest="eval_limit", type=int, default=None, metavar="N", help="samples per task")
    _add(p, ev, "eval-batch-size", dest="eval_batch_size", type=int, default=1, metavar="B")
    _add(p, ev, "eval-include-path", dest="eval_include_path", default=None, metavar="DIR",
         help="extra lm-eval task definitions")
    _add(p, ev, "eval-every", dest="eval_every", type=int, default=0, metavar="N",
         help="built-in task: held-out greedy accuracy every N updates (always before and after)")
    _add(p, ev, "heldout-problems", dest="heldout_problems", type=int, default=128, metavar="N",
         help="built-in task: held-out problems scored (0: none; default %(default)s)")

    data = _data_module()
    if data is not None:
        data.add_data_args(p)
    else:
        for opt in ("train", "hf_dataset", "pre_chunked_dataset", "pre_pt_dataset", "kayla", "alpaca"):
            _add(p, p, opt, dest=opt, default=None, nargs="?", const=True, help=argparse.SUPPRESS)

    pt = p.add_argument_group("PyTorch-only options (accepted and ignored with a warning)")
    for name, typ in _PT_VALUE_OPTIONS:
        _add(p, pt, name, dest="pt_" + name.replace("-", "_"), type=typ, default=None, help=argparse.SUPPRESS)
    for name in _PT_FLAGS:
        _add(p, pt, name, dest="pt_" + name.replace("-", "_"), action="store_true", default=None,
             help=argparse.SUPPRESS)
    pt.description = ("--compile*, --device, --threads, --cuda-*/--cpu-*-chunked-lm-loss, "
                      "--no-ltm-cpu-*, --debug-numerics and the like: XLA always compiles, JAX picks the device")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- run


def _warn(msg: str) -> None:
    print(f"hierarchos train: warning: {msg}", file=sys.stderr)


def step_options(args):
    """``StepOptions`` from the flags with the reference's implications (spec §5.7, §5.8, §5.11)."""
    import jax

    from hierarchos_jax.train import step as step_lib

    mode = args.ltm_training_mode or "inner-update"
    if args.full_sample_remat is not None and args.full_sample_remat and not args.full_sample_bptt:
        raise CLIError("--full-sample-activation-checkpointing needs --full-sample-bptt")
    if args.full_sample_segment_size <= 0:
        raise CLIError(f"--full-sample-checkpoint-segment-size must be > 0 (got {args.full_sample_segment_size})")
    full_remat = True if args.full_sample_remat is None else bool(args.full_sample_remat)
    remat_tokens = True if args.gradient_checkpointing is None else bool(args.gradient_checkpointing)
    amp = args.amp if args.amp is not None else jax.default_backend() == "gpu"
    min_ltm = args.min_ltm_lr if args.min_ltm_lr is not None else args.min_lr
    values = {"ltm_training_mode": mode, "ltm_lr": args.ltm_lr, "min_ltm_lr": min_ltm,
              "ltm_total_steps": args.steps, "disable_ltm_lr_schedule": args.disable_ltm_lr_schedule,
              "grad_clip": args.grad_clip, "full_sample_bptt": bool(args.full_sample_bptt),
              "full_sample_segment_size": args.full_sample_segment_size, "full_sample_remat": full_remat,
              "remat_tokens": remat_tokens, "compute_dtype": "bfloat16" if amp else "float32"}
    names = {f.name for f in dataclasses.fields(step_lib.StepOptions)}
    return step_lib.full_sample_options(step_lib.StepOptions(**{k: v for k, v in values.items() if k in names}))


def loss_config(args, chunk: int):
    from hierarchos_jax.train.step import LossConfig

    return LossConfig(chunk_size=chunk, ponder_loss_weight=args.ponder_loss_weight,
                      commitment_loss_weight=args.commitment_loss_weight,
                      max_commitment_cost_for_backward=args.max_commitment_cost_for_backward,
                      max_ce_loss_for_backward=args.max_ce_loss_for_backward,
                      max_ponder_cost_for_backward=args.max_ponder_cost_for_backward,
                      encourage_thinking=args.encourage_thinking, adaptive_ponder=args.adaptive_ponder,
                      ponder_target_scale=args.ponder_target_scale, loss_rows_per_chunk=args.cpu_loss_chunk_rows)


def config_overrides(args, *, from_scratch: bool) -> dict:
    """Model-config changes the flags ask for (architecture keys only for a new model)."""
    out = {}
    keys = list(_RUNTIME_FLOAT) + list(_RUNTIME_INT)
    if from_scratch:
        keys += list(_ARCH_INT) + ["use_deepembed", "use_rosa", "memory_token_routers"]
    for k in keys:
        v = getattr(args, k, None)
        if v is not None:
            out[k] = v
    if "detach_every_n_steps" in out and out["detach_every_n_steps"] <= 0:
        out["detach_every_n_steps"] = None
    if args.full_sample_bptt:          # §5.7: no in-chunk detach, parity inference policy
        from hierarchos_jax.train.step import FULL_SAMPLE_CONFIG

        out.update(FULL_SAMPLE_CONFIG)
    if args.gradient_checkpointing is not None:
        out["gradient_checkpointing"] = bool(args.gradient_checkpointing)
    return out


def _defaults(args, table: dict) -> None:
    for k, v in table.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


def _pt_warning(args) -> None:
    given = sorted(k[3:].replace("_", "-") for k, v in vars(args).items() if k.startswith("pt_") and v is not None)
    if given:
        _warn(f"PyTorch-only option(s) ignored: {', '.join('--' + g for g in given)} "
              "(XLA always compiles; JAX picks the device)")


def _eval_hooks(args, loop):
    if not args.eval_tasks:
        return []
    return [loop.LmEvalHook(args.eval_tasks, every_steps=args.eval_steps, every_epoch=args.eval_every_epoch,
                       limit=args.eval_limit, batch_size=args.eval_batch_size, include_path=args.eval_include_path)]


def run(args) -> int:
    data_mod = _data_module()
    has_data = data_mod.has_data_args(args) if data_mod is not None else any(
        getattr(args, o, None) not in (None, False) for o in ("train", "hf_dataset"))
    if has_data and data_mod is None:
        raise CLIError("training on your own data needs hierarchos_jax.data, which is not in this installation")
    _pt_warning(args)
    if args.accumulation_steps < 1:
        raise CLIError(f"--accumulation-steps must be at least 1 (got {args.accumulation_steps})")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1 (got {args.steps})")
    if args.save_every < 0:
        raise CLIError(f"--save-every must be >= 0 (got {args.save_every})")
    if args.model_path and args.resume_from_ckpt:
        raise CLIError("give either --model-path (weights-only continuation) or --resume-from-ckpt (exact resume)")
    loop = load("hierarchos_jax.train.loop", "train")
    if not has_data:
        return _run_synthetic(args, loop)
    return _run_data(args, loop, data_mod)


def _run_synthetic(args, loop) -> int:
    _defaults(args, _SYNTHETIC_DEFAULTS)
    chunk = args.training_chunk_size or args.max_length
    targs = loop.TrainArgs(
        out_dir=args.out_dir, preset=args.preset, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
        seq_len=args.max_length, chunk_size=chunk, accumulation_steps=args.accumulation_steps,
        starting_lr=args.starting_lr, min_lr=args.min_lr, warmup_ratio=args.warmup_ratio,
        warmup_steps=args.warmup_steps, disable_lr_schedule=args.disable_lr_schedule, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, eval_every=args.eval_every, eval_problems=args.heldout_problems,
        progress=not args.no_progress, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        resume_from=args.resume_from_ckpt, override_scheduling=bool(args.override_scheduling),
        model_path=args.model_path, config_overrides=config_overrides(args, from_scratch=not args.model_path),
        loss=loss_config(args, chunk), step_options=step_options(args), hooks=_eval_hooks(args, loop))
    loop.train_synthetic(targs)
    return 0


def _run_data(args, loop, data_mod) -> int:
    import math

    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.io.tokenizer import Tokenizer, TokenizerError, find_tokenizer_dir
    from hierarchos_jax.model.hierarchos import Hierarchos
    from hierarchos_jax.train.optimizer import OptimConfig

    _defaults(args, _DATA_DEFAULTS)
    tok_src = args.tokenizer_path or args.model_path
    if not tok_src:
        raise CLIError("training on data needs a tokenizer: give --tokenizer-path DIR (or --model-path DIR)")
    try:
        tok_dir = find_tokenizer_dir(tok_src)
        tokenizer = Tokenizer(tok_dir)
    except TokenizerError as e:
        raise CLIError(str(e)) from None
    offset = 0
    if args.model_path:
        from hierarchos_jax.io.model_dir import load_model_dir

        loaded = load_model_dir(args.model_path)
        model = loop.with_config(loaded.model, config_overrides(args, from_scratch=False))
        offset = int(loaded.metadata.get("completed_epoch", 0) or 0)
    else:
        cfg = HierarchosConfig.from_preset(args.preset)
        ov = {"vocab_size": len(tokenizer), "training_chunk_size": args.training_chunk_size}
        ov.update(config_overrides(args, from_scratch=True))
        cfg = cfg.replace(**ov)
        model = Hierarchos(cfg, rngs=nnx.Rngs(args.seed))
    cfg = model.config
    try:
        tokenizer.check_vocab(cfg.vocab_size)
    except TokenizerError as e:
        raise CLIError(str(e)) from None
    train_data = data_mod.build_train_data(args, tokenizer, vocab_size=cfg.vocab_size, batch_size=args.batch_size,
                                           seq_len=args.max_length, chunk_size=args.training_chunk_size,
                                           seed=args.seed, use_rosa=cfg.use_rosa, progress=not args.no_progress)
    nb = int(train_data.batches_per_epoch)
    if args.steps is None:
        args.steps = max(1, math.ceil(nb / args.accumulation_steps) * args.epochs)
    optim = OptimConfig(starting_lr=args.starting_lr, min_lr=args.min_lr, warmup_steps=args.warmup_steps,
                        warmup_ratio=args.warmup_ratio, total_updates=args.steps, weight_decay=args.weight_decay,
                        grad_clip=args.grad_clip, disable_lr_schedule=args.disable_lr_schedule)
    trainee = loop.Trainee(model, tok_dir, optim, loss_config(args, args.training_chunk_size), step_options(args),
                           tokenizer_name=str(tok_src), completed_epoch_offset=offset)
    fp = train_data.fingerprint() if hasattr(train_data, "fingerprint") else {}
    signature = {"data": fp, "batch_size": args.batch_size, "max_length": args.max_length,
                 "chunk_size": args.training_chunk_size, "accumulation_steps": args.accumulation_steps,
                 "seed": args.seed}
    opts = loop.LoopOptions(out_dir=args.out_dir, steps=args.steps, accumulation_steps=args.accumulation_steps,
                            save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
                            resume_from=args.resume_from_ckpt, override_scheduling=bool(args.override_scheduling),
                            batches_per_epoch=nb, seed=args.seed, progress=not args.no_progress,
                            signature=signature)
    res = loop.train_loop(trainee, train_data.iterator(), opts, hooks=_eval_hooks(args, loop))
    last = res["last"]
    if last:
        print(f"step {last['step']}: loss {last['loss']:.4f}; skipped updates {res['skipped']}; "
              f"checkpoints {res['checkpoints']}; model {res['model_dir']}")
    return 0
