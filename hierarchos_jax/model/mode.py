"""How a forward pass runs: training or inference, and which loop policies apply."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RunMode:
    """Static switches of one forward pass (a jit static argument).

    * ``training``: training-mode semantics (memory-gate warm-up, detach-every-n,
      per-row working memory, fixed-length masked inner loops so gradients flow).
    * ``training_refinement``: the worker stops only on drift convergence and computes
      the commitment cost (training, or eval with ``inference_logit_parity`` /
      ``full_sample_bptt``). Otherwise the legacy eval rule also stops on state closeness.
    * ``act_early_exit``: the manager may stop pondering when the batch-mean halt
      probability exceeds ``h_halt_thresh`` (legacy eval only).
    * ``hebbian``: eval-time Hebbian writes into working memory after every token.
    """

    training: bool = False
    training_refinement: bool = True
    act_early_exit: bool = False
    hebbian: bool = False

    @staticmethod
    def train() -> "RunMode":
        return RunMode(training=True, training_refinement=True, act_early_exit=False, hebbian=False)

    @staticmethod
    def eval(*, logit_parity: bool, hebbian: bool = False) -> "RunMode":
        """Eval semantics; ``logit_parity`` = the config's ``inference_logit_parity or full_sample_bptt``."""
        return RunMode(training=False, training_refinement=logit_parity, act_early_exit=not logit_parity,
                       hebbian=hebbian)

    @property
    def legacy_worker_exit(self) -> bool:
        return not self.training_refinement


def hebbian_writes_enabled(config, *, suppress_hebbian: bool | None = None,
                           allow_hebbian_update: bool | None = None) -> bool:
    """Whether an eval call writes to working memory (the reference's decision, spec §6.6).

    Writes need an aligned value projection (``val_proj_trained``) or the explicit
    ``allow_untrained_hebbian_writer``; then ``allow_hebbian_update=True`` turns them on,
    and otherwise they happen only if ``suppress_hebbian`` is False (it defaults to True).
    """
    writer_ok = bool(config.val_proj_trained or config.allow_untrained_hebbian_writer)
    if not writer_ok:
        return False
    if allow_hebbian_update:
        return True
    return suppress_hebbian is False
