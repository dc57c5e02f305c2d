"""Online LTM learning from a conversation (spec inference.md §10).

One update (:meth:`OnlineLearner.update`, the reference's ``perform_ltm_update``):

1. ``s = prompt ++ labels`` (the last ``max_length`` tokens); supervised positions are the
   labels (or every position with ``learn_input_tokens``).
2. Replay ``s`` from a fresh recurrent state (position 0, no drift seed, a fresh ROSA
   history, Hebbian writes off) reading the current working memory, with a zero
   ``retrieval_probe`` added to the raw retrieved values; the loss is the mean
   cross-entropy of the supervised next tokens (or, for ``penalty``, the unlikelihood
   ``-ln(1 - p)`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``) on the model's clamped logits.
3. ``G = dloss/dprobe [1, T, k, D]`` — the gradient w.r.t. every retrieved value.
4. Gradient preparation (``grad_clip c > 0``): reject non-finite, clip each element to
   ``[-c, c]``, then scale the whole tensor by ``min(1, c / (||G|| + 1e-8))``.
5. Titans inner update (:func:`hierarchos_jax.model.ltm.inner_update`) at the replay's
   top-k indices with learning rate ``lr``, model timestamp 0, the given source and
   ``tokens_covered = T``.

Differentiable replay: eval mode's early exits are ``while`` loops, which reverse-mode
autodiff cannot go through. The replay therefore runs the training loop structure
(fixed-length masked loops) with the settings that make it equal *in value* to the eval
forward of an exact checkpoint (``inference_logit_parity``/``full_sample_bptt``: full
pondering, drift-convergence-only refinement): memory-gate warm-up off, no in-chunk
gradient detach, no straight-through score gradient (eval has none). For legacy
checkpoints the gradient is taken under that same parity policy, not under the eval early
exits the reference's replay happens to use (a documented difference: the early exits are
discrete, so the reference's gradient is the one of whichever steps ran).

Replays are compiled per length bucket (64, 256, 1024, ... tokens); padding sits after the
sequence (it cannot influence earlier tokens), has no loss and its retrievals are not
written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hierarchos_jax.model.hierarchos import Hierarchos, forward
from hierarchos_jax.model.ltm import WorkingMemory, inner_update
from hierarchos_jax.model.mode import RunMode, hebbian_writes_enabled
from hierarchos_jax.model.rosa import RosaAutomaton
from hierarchos_jax.model.state import zeros_state

SOURCE_USER, SOURCE_TRAINING, SOURCE_CORRECTION = 1, 2, 3
PROB_CLIP = 1e-7
MIN_BUCKET = 64


def model_with_config(model: Hierarchos, config) -> Hierarchos:
    """The same parameters under another (shape-compatible) config, without copying them."""
    abstract = nnx.eval_shape(lambda: Hierarchos(config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    _, state = nnx.split(model)
    return nnx.merge(graphdef, state)


def prepare_gradients(grads: np.ndarray, clip: float) -> np.ndarray | None:
    """Spec §10.3 step 7: ``None`` if any element is non-finite, else element clip to
    ``[-c, c]`` and a global rescale to norm at most ``c`` (``c <= 0``: unchanged)."""
    g = np.asarray(grads, np.float32)
    if not np.all(np.isfinite(g)):
        return None
    if clip > 0:
        g = np.clip(g, -clip, clip)
        g = g * min(1.0, clip / (float(np.linalg.norm(g)) + 1e-8))
    return g.astype(np.float32)


def cosine_ltm_lr(step: int, base: float, minimum: float, period: int) -> float:
    """The chat's dynamic LTM learning rate after ``step`` scheduled updates (spec §10.4):
    ``min + (base - min)(1 + cos(pi step / period)) / 2`` (periodic, like torch's
    ``CosineAnnealingLR`` stepped past its end)."""
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * step / max(1, period)))


def quality_gate(ids) -> str | None:
    """Why a self-generated response must not be learned (spec §10.6), or ``None``."""
    ids = [int(t) for t in ids]
    n = len(ids)
    if n < 8:
        return "too short"
    if n >= 20 and len(set(ids)) / n < 0.35:
        return "low token diversity"
    for k in (3, 4):
        if n >= 2 * k:
            grams = [tuple(ids[i:i + k]) for i in range(n - k + 1)]
            if len(set(grams)) / len(grams) < 0.75:
                return "repeated n-grams"
    return None


@dataclasses.dataclass(frozen=True)
class LearningOptions:
    """The chat's online-learning settings (reference CLI names and defaults)."""

    ltm_lr: float = 1e-3                  # --ltm-lr
    dynamic_lr: bool = False              # --dynamic-ltm-lr
    schedule_steps: int = 100             # --ltm-schedule-steps
    schedule_min_lr: float = 1e-5         # --ltm-schedule-min-lr
    grad_clip: float = 0.75               # --online-ltm-grad-clip
    passive_learning: bool = False        # --passive-learning
    passive_response_learning: bool = False  # --passive-response-learning
    passive_lr: float = 5e-6              # --passive-lr
    surprise_threshold: float = 1.0       # --surprise-threshold

    def validated(self) -> "LearningOptions":
        for name in ("ltm_lr", "schedule_min_lr", "passive_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.grad_clip, (int, float)) and math.isfinite(self.grad_clip)):
            raise ValueError(f"online-ltm-grad-clip must be a finite number, got {self.grad_clip!r}")
        if self.schedule_steps < 1:
            raise ValueError(f"ltm-schedule-steps must be >= 1, got {self.schedule_steps}")
        if math.isnan(self.surprise_threshold):
            raise ValueError("surprise-threshold must be a number")
        return self


class UpdateResult(NamedTuple):
    """What an update did. ``memory`` is the new working memory (``None``: nothing written);
    ``touched [S]`` the slots written; ``reason`` why nothing was written."""

    loss: float
    memory: WorkingMemory | None
    touched: np.ndarray | None
    lr: float
    reason: str | None = None

    @property
    def written(self) -> bool:
        return self.memory is not None


def _bucket(n: int) -> int:
    size = MIN_BUCKET
    while size < n:
        size *= 4
    return size


class OnlineLearner:
    """Gradient writes into a working memory from (prompt, response) pairs."""

    def __init__(self, model: Hierarchos, options: LearningOptions = LearningOptions()):
        self.options = options.validated()
        cfg = model.config
        self.config = cfg
        self.exact = bool(cfg.inference_logit_parity or cfg.full_sample_bptt)
        self.max_length = int(cfg.extra.get("max_length") or 1024)
        replay_cfg = cfg.replace(detach_every_n_steps=0, ltm_score_grad_scale=0.0, memory_gate_warmup_steps=0)
        self._replay_model = model_with_config(model, replay_cfg)
        self._graphdef, self._params = nnx.split(self._replay_model)
        self.hebbian_allowed = hebbian_writes_enabled(cfg, allow_hebbian_update=True)
        hebb_cfg = cfg.replace(ltm_lr=float(self.options.ltm_lr))
        self._hebb_graphdef, self._hebb_params = nnx.split(model_with_config(model, hebb_cfg))
        self.schedule_step = 0  # scheduled updates performed so far

    # ------------------------------------------------------------------ the pieces

    def next_lr(self) -> float:
        o = self.options
        if not o.dynamic_lr:
            return float(o.ltm_lr)
        return cosine_ltm_lr(self.schedule_step, o.ltm_lr, o.schedule_min_lr, o.schedule_steps)

    def _sequence(self, prompt_ids, label_ids, learn_input_tokens: bool):
        prompt = [int(t) for t in prompt_ids]
        labels = [int(t) for t in (label_ids or [])]
        seq = prompt + labels
        supervised = [learn_input_tokens] * len(prompt) + [True] * len(labels)
        seq, supervised = seq[-self.max_length:], supervised[-self.max_length:]
        return seq, supervised

    def _arrays(self, seq, supervised):
        """Padded ``ids, rosa, targets, weights`` ``[1, Tb]``: position ``t`` predicts ``seq[t+1]``,
        weighted iff ``t+1`` is supervised."""
        T, V = len(seq), self.config.vocab_size
        Tb = _bucket(T)
        ids = np.zeros((1, Tb), np.int32)
        ids[0, :T] = seq
        rosa = np.full((1, Tb), V, np.int32)
        if self.config.use_rosa:
            rosa[0, :T] = RosaAutomaton(V).extend(seq)
        targets = np.zeros((1, Tb), np.int32)
        targets[0, :T - 1] = seq[1:]
        weights = np.zeros((1, Tb), np.float32)
        weights[0, :T - 1] = np.asarray(supervised[1:], np.float32)
        return ids, rosa, targets, weights

    def replay(self, memory: WorkingMemory, prompt_ids, label_ids=None, *, penalty: bool = False,
               learn_input_tokens: bool = False):
        """``(loss, grads [1, T, k, D], idx [1, T, k])`` of the replay (host arrays), or
        ``None`` when nothing is supervised."""
        seq, supervised = self._sequence(prompt_ids, label_ids, learn_input_tokens)
        if len(seq) < 2 or not any(supervised[1:]):
            return None
        ids, rosa, targets, weights = self._arrays(seq, supervised)
        loss, grads, idx = _replay_jit(self._graphdef, self._params, WorkingMemory(*memory), jnp.asarray(ids),
                                       jnp.asarray(rosa), jnp.asarray(targets), jnp.asarray(weights),
                                       jnp.bool_(penalty))
        T = len(seq)
        return float(loss), np.asarray(grads)[:, :T], np.asarray(idx)[:, :T]

    def write(self, memory: WorkingMemory, grads: np.ndarray, idx: np.ndarray, lr: float, source: int):
        """Titans inner update of ``memory`` at ``idx`` with ``grads``; ``(memory, touched [S])``."""
        cfg = self.config
        T = idx.shape[1]
        new = _inner_update_jit(WorkingMemory(*memory), jnp.asarray(idx), jnp.asarray(grads), jnp.float32(lr),
                                jnp.float32(T), source=int(source), reference_chunk_len=float(
                                    cfg.effective_reference_chunk_len), momentum=float(cfg.ltm_momentum),
                                weight_decay=float(cfg.ltm_weight_decay), forget_rate=float(cfg.ltm_forget_rate))
        touched = np.zeros((cfg.ltm_slots,), bool)
        valid = idx[idx >= 0]
        touched[valid] = True
        return WorkingMemory(*(np.asarray(a) for a in new)), touched

    # ------------------------------------------------------------------ one update

    def update(self, memory: WorkingMemory, prompt_ids, label_ids=None, *, source: int = SOURCE_USER,
               penalty: bool = False, lr: float | None = None, learn_input_tokens: bool = False,
               compute_only: bool = False) -> UpdateResult:
        """One online update (module docstring). ``lr=None`` uses (and advances) the
        feedback schedule; an explicit ``lr`` (passive learning) does not touch it."""
        got = self.replay(memory, prompt_ids, label_ids, penalty=penalty, learn_input_tokens=learn_input_tokens)
        if got is None:
            return UpdateResult(float("nan"), None, None, 0.0, "nothing to learn")
        loss, grads, idx = got
        if not math.isfinite(loss):
            return UpdateResult(loss, None, None, 0.0, "non-finite loss")
        if compute_only:
            return UpdateResult(loss, None, None, 0.0, "compute only")
        if not np.any(idx >= 0):
            return UpdateResult(loss, None, None, 0.0, "no LTM gradients (no slot was retrieved)")
        if lr is None:
            lr = self.next_lr()
            self.schedule_step += 1  # advanced before the gradient check, as the reference
        g = prepare_gradients(grads, self.options.grad_clip)
        if g is None:
            return UpdateResult(loss, None, None, lr, "non-finite LTM gradients")
        new, touched = self.write(memory, g, idx, lr, source)
        return UpdateResult(loss, new, touched, lr)

    def hebbian_validation(self, memory: WorkingMemory, prompt_ids, response_ids):
        """Spec §10.7: replay prompt ++ response with per-token Hebbian writes at the base
        LTM learning rate (only for checkpoints whose value writer is trained).
        Returns ``(memory, touched)`` with momentum zeroed, or ``None`` when not allowed."""
        if not self.hebbian_allowed:
            return None
        seq = ([int(t) for t in prompt_ids] + [int(t) for t in response_ids])[-self.max_length:]
        if not seq:
            return None
        V = self.config.vocab_size
        rosa = RosaAutomaton(V).extend(seq)[None] if self.config.use_rosa else None
        new, idx = _hebbian_jit(self._hebb_graphdef, self._hebb_params, WorkingMemory(*memory),
                                jnp.asarray([seq], jnp.int32), None if rosa is None else jnp.asarray(rosa, jnp.int32),
                                self.exact)
        idx = np.asarray(idx)
        touched = np.zeros((self.config.ltm_slots,), bool)
        touched[idx[idx >= 0]] = True
        new = WorkingMemory(*(np.asarray(a) for a in new))
        return new._replace(mom=np.zeros_like(new.mom)), touched


# ---------------------------------------------------------------------- compiled parts

REPLAY_MODE = RunMode.train()  # fixed-length loops; see the module docstring


@functools.partial(jax.jit, static_argnums=(0,))
def _replay_jit(graphdef, params, memory, ids, rosa, targets, weights, penalty):
    model = nnx.merge(graphdef, params)
    cfg = model.config
    state = zeros_state(cfg, 1, shared_memory=True)._replace(memory=memory)
    k, D = cfg.ltm_topk, cfg.ltm_val_dim
    probe0 = jnp.zeros(ids.shape + (k, D), jnp.float32)

    def loss_fn(probe):
        out, _ = forward(model, ids, state, mode=REPLAY_MODE, rosa_ids=rosa if cfg.use_rosa else None,
                         warmup_step=0.0, retrieval_probe=probe)
        logp = jax.nn.log_softmax(model.logits(out.hidden).astype(jnp.float32), axis=-1)
        tgt = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        p = jnp.clip(jnp.exp(tgt), PROB_CLIP, 1.0 - PROB_CLIP)
        per = jnp.where(penalty, -jnp.log1p(-p), -tgt)  # unlikelihood or cross-entropy
        loss = jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        return loss, out.topk_idx

    (loss, idx), grads = jax.value_and_grad(loss_fn, has_aux=True)(probe0)
    return loss, grads, idx


@functools.partial(jax.jit, static_argnames=("source", "reference_chunk_len", "momentum", "weight_decay",
                                             "forget_rate"))
def _inner_update_jit(memory, idx, grads, lr, tokens_covered, *, source, reference_chunk_len, momentum,
                      weight_decay, forget_rate):
    return inner_update(memory, idx, grads, lr, timestamp=0.0, source=source, tokens_covered=tokens_covered,
                        reference_chunk_len=reference_chunk_len, momentum=momentum, weight_decay=weight_decay,
                        forget_rate=forget_rate)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _hebbian_jit(graphdef, params, memory, ids, rosa, exact: bool):
    model = nnx.merge(graphdef, params)
    state = zeros_state(model.config, 1, shared_memory=True)._replace(memory=memory)
    out, new = forward(model, ids, state, mode=RunMode.eval(logit_parity=exact, hebbian=True), rosa_ids=rosa)
    return new.memory, out.topk_idx
