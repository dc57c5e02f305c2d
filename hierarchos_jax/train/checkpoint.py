"""Training checkpoints with Orbax: every N steps and at the end, async, keep-last-k, atomic,
verified on restore (spec: training.md §8.1–8.3, §8.5; JAX mapping §12).

A run's checkpoints live in ``<run>/checkpoints/<step>/`` (one Orbax step directory per
saved optimizer step) with four items:

* ``params`` — the model's ``nnx.Param`` state (fp32 masters),
* ``opt_state`` — the optax state (AdamW moments, schedule count),
* ``state`` — ``counters`` (updates / skipped / non-finite batches), ``rng`` (key data) and
  ``buffers`` (the model's non-trainable variables, ``time_freqs``),
* ``meta`` — JSON: step, data-iterator state, batch clock, model config, schedule, run
  options and anything the caller adds (``extra``).

Atomicity: Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it when
every item is finalised. Just before that rename (Orbax's post-finalisation callback) we
write ``hierarchos_manifest.json`` — size and SHA-256 of every file — into the temporary
directory, so a committed step always carries its manifest. :meth:`Checkpoints.restore`
checks the manifest first: a missing manifest (an interrupted or hand-edited step), a
missing, truncated or altered file is refused with one line naming the checkpoint, and
nothing is loaded. A step killed before its rename is invisible (Orbax ignores, and later
removes, temporary directories), so the latest committed step is always complete.

``checkpoint_to_inference_dir(ckpt, out)`` turns a step into an inference directory
(``hierarchos ckpt-2-inf``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hierarchos_jax.io.atomic import write_json_atomic

MANIFEST = "hierarchos_manifest.json"
FORMAT = "hierarchos-jax-train-checkpoint"
FORMAT_VERSION = 1
TOKENIZER_SUBDIR = "tokenizer"
_ITEMS = ("params", "opt_state", "state", "meta")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the run (one line)."""


@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpoints.restore` returns (``opt_state`` is None when not asked for)."""

    step: int
    params: Any
    opt_state: Any
    counters: Any
    rng: Any
    buffers: Any                 # the model's non-Param variables (``time_freqs``)
    data_state: dict | None
    meta: dict

    @property
    def extra(self) -> dict:
        return self.meta.get("extra", {})


# ---------------------------------------------------------------- manifest

def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# Orbax rewrites its step metadata (commit timestamp) after our manifest is written.
_UNHASHED = (MANIFEST, "_CHECKPOINT_METADATA")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _UNHASHED)


def write_manifest(step_dir: Path, step: int) -> Path:
    """Record size and SHA-256 of every file of ``step_dir`` (atomically)."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(step_dir)}
    body = {"format": FORMAT, "version": FORMAT_VERSION, "step": int(step), "files": files}
    return write_json_atomic(step_dir / MANIFEST, body, indent=1)


def verify_step_dir(step_dir: Path) -> dict:
    """Check a step directory against its manifest; returns the manifest or raises
    :class:`CheckpointError` (one line naming the checkpoint and the first problem)."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        raise CheckpointError(f"checkpoint {step_dir}: no such directory")
    mpath = step_dir / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {step_dir} is incomplete or corrupted: its commit manifest "
                              f"{MANIFEST} is missing (refusing to load it)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: {MANIFEST} is not a valid manifest") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {step_dir}: not a hierarchos-jax training checkpoint")
    for rel, want in files.items():
        p = step_dir / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: file {rel} is missing")
        size = p.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"checkpoint {step_dir} is corrupted: {rel} has {size} bytes, "
                                  f"the manifest says {want['bytes']}")
        if _sha256(p) != want["sha256"]:
            raise CheckpointError(f"checkpoint {step_dir} is corrupted: {rel} does not match its SHA-256 "
                                  "in the manifest")
    return manifest


# ---------------------------------------------------------------- the manager

def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _shape_mismatch(restored, target) -> str | None:
    rs = jax.tree_util.tree_structure(restored)
    ts = jax.tree_util.tree_structure(target)
    if rs != ts:
        return "the saved tree structure differs from this run's"
    for (path, r), t in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree_util.tree_leaves(target),
                            strict=True):
        if tuple(np.shape(r)) != tuple(t.shape) or np.dtype(r.dtype) != np.dtype(t.dtype):
            return (f"{jax.tree_util.keystr(path)} is {np.dtype(r.dtype)}{list(np.shape(r))} in the checkpoint, "
                    f"{np.dtype(t.dtype)}{list(t.shape)} in this run")
    return None


def state_target(buffers) -> dict:
    """The abstract ``state`` item for :meth:`Checkpoints.restore` (``buffers``: the model's
    non-Param variables, concrete or abstract)."""
    from hierarchos_jax.train.step import zero_counters

    return {"counters": jax.eval_shape(zero_counters), "rng": jax.ShapeDtypeStruct((2,), np.uint32),
            "buffers": jax.eval_shape(lambda: buffers)}


class Checkpoints:
    """Orbax ``CheckpointManager`` for training state (see the module docstring).

    ``save`` is asynchronous: it returns once the arrays are copied off the device (so the
    caller may donate them to the next step) and the files are written in a background
    thread; ``wait()`` blocks until the last save is committed.
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self._pending: int | None = None
        self._lock = threading.Lock()
        self.last_error: BaseException | None = None
        # read_only: only restore (create nothing; orbax's own read_only mode just adds warnings).
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=1, create=not read_only,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._on_finalized) if async_save else None,
        )
        self._async = async_save
        self._mngr = ocp.CheckpointManager(self.directory, options=opts, item_names=_ITEMS)

    # Orbax calls this (in its finalize thread) after every item is written and before
    # the temporary directory is renamed to the step: the manifest becomes part of the commit.
    def _on_finalized(self) -> None:
        with self._lock:
            step = self._pending
        if step is None:
            return
        suffix = self._ocp.path.atomicity_types.TMP_DIR_SUFFIX
        tmp = self.directory / f"{step}{suffix}"
        try:
            write_manifest(tmp if tmp.is_dir() else self.step_dir(step), step)
        except OSError as e:  # surfaced by wait(); the step then has no manifest and is refused
            self.last_error = e

    def step_dir(self, step: int) -> Path:
        return self.directory / str(int(step))

    def all_steps(self) -> list[int]:
        self._mngr.reload()
        return sorted(int(s) for s in self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step (its integrity is checked by :meth:`restore`)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, params, opt_state, counters, *, rng, data_state: dict | None,
             extra: dict | None = None, buffers=None) -> bool:
        """Save step ``step`` (async); False if that step is already saved."""
        ocp = self._ocp
        step = int(step)
        if step in self._mngr.all_steps():
            return False
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "step": step,
                "data_state": _jsonable(data_state), "extra": _jsonable(extra or {})}
        state = {"counters": counters, "rng": rng, "buffers": buffers if buffers is not None else {}}
        # Private copies: the caller donates params/opt_state to its next step, and on CPU the
        # arrays Orbax writes in the background may alias those (reused) device buffers.
        params, opt_state, state = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), (params, opt_state, state))
        self.wait()
        with self._lock:
            self._pending = step
        saved = self._mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        if not self._async:
            write_manifest(self.step_dir(step), step)
        return bool(saved)

    def wait(self) -> None:
        """Block until the last save is committed (manifest included)."""
        self._mngr.wait_until_finished()
        if self.last_error is not None:
            e, self.last_error = self.last_error, None
            raise CheckpointError(f"checkpoint manifest could not be written in {self.directory}: {e}")

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._mngr.close()

    def restore(self, step: int, *, params, opt_state=None, state=None) -> Restored:
        """Verify step ``step`` against its manifest, then restore it onto the given targets
        (concrete or abstract pytrees, e.g. from ``jax.eval_shape``); tree structure, shapes
        and dtypes must match. ``state`` is ``{"counters", "rng", "buffers"}``; a target left
        as None is not read (``opt_state=None``: parameters only, for export)."""
        ocp = self._ocp
        sdir = self.step_dir(step)
        verify_step_dir(sdir)
        targets = {"params": params, "opt_state": opt_state, "state": state}
        args = {k: ocp.args.StandardRestore(v) for k, v in targets.items() if v is not None}
        args["meta"] = ocp.args.JsonRestore()
        try:
            out = self._mngr.restore(int(step), args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types; report one line
            msg = " ".join(str(e).split())[:300]
            raise CheckpointError(f"checkpoint {sdir} cannot be restored: {msg}") from None
        for name, target in targets.items():
            if target is not None:
                bad = _shape_mismatch(out[name], target)
                if bad:
                    raise CheckpointError(f"checkpoint {sdir} does not fit this run: {name} {bad}")
        meta = dict(out["meta"])
        st = out["state"] if state is not None else {}
        return Restored(int(step), out["params"], out["opt_state"] if opt_state is not None else None,
                        st.get("counters"), st.get("rng"), st.get("buffers"), meta.get("data_state"), meta)


def read_meta(step_dir: Path) -> dict:
    """The JSON ``meta`` item of a step directory (no verification)."""
    p = Path(step_dir) / "meta" / "metadata"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {step_dir}: cannot read its metadata ({e})") from None


def resolve_step_dir(path) -> tuple[Path, int]:
    """``(checkpoints root, step)`` for a step directory, a checkpoints root (its latest
    committed step) or a run directory holding ``checkpoints/``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p}: no such file or directory")
    if p.is_dir() and p.name.isdigit() and (p / "meta").exists():
        return p.parent, int(p.name)
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    steps = sorted(int(c.name) for c in root.iterdir() if c.is_dir() and c.name.isdigit())
    if not steps:
        raise CheckpointError(f"checkpoint {p}: no committed checkpoint steps found")
    return root, steps[-1]


# ---------------------------------------------------------------- export

def checkpoint_to_inference_dir(ckpt, out_dir, *, tokenizer_dir=None) -> Path:
    """Write step ``ckpt`` (a step directory, a checkpoints root or a run directory) as an
    inference directory (config + safetensors + ``hierarchos.pt`` + tokenizer)."""
    from flax import nnx

    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.io.model_dir import save_model_dir
    from hierarchos_jax.model.hierarchos import Hierarchos

    root, step = resolve_step_dir(ckpt)
    sdir = root / str(step)
    verify_step_dir(sdir)
    meta = read_meta(sdir)
    extra = meta.get("extra", {})
    if "model_config" not in extra:
        raise CheckpointError(f"checkpoint {sdir}: its metadata has no model config")
    config = HierarchosConfig.from_reference_dict(extra["model_config"])
    abstract = nnx.eval_shape(lambda: Hierarchos(config, rngs=nnx.Rngs(0)))
    graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
    mngr = Checkpoints(root, max_to_keep=None, async_save=False, read_only=True)
    try:
        restored = mngr.restore(step, params=abs_params, state=state_target(abs_rest))
    finally:
        mngr.close()
    model = nnx.merge(graphdef, restored.params, restored.buffers)
    if tokenizer_dir is None:
        tok = root / TOKENIZER_SUBDIR
        tokenizer_dir = tok if tok.is_dir() else None
    if tokenizer_dir is not None:
        from hierarchos_jax.io.tokenizer import Tokenizer

        Tokenizer(tokenizer_dir).check_vocab(config.vocab_size)      # §8.5: sizes must agree
    md = {"completed_epoch": int(extra.get("completed_epoch", 0)), "converted_from": str(sdir),
          "tokenizer_name": extra.get("tokenizer_name")}
    return save_model_dir(model, out_dir, tokenizer_dir=tokenizer_dir, metadata=md)
