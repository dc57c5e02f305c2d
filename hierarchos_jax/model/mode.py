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
