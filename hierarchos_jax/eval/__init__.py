"""Evaluation: the lm-eval model (:class:`HierarchosLM`), batch-invariant scoring,
benchmark runs and perplexity.

``HierarchosLM`` is imported lazily (importing lm-eval takes a few seconds).
"""

from __future__ import annotations

__all__ = ["HierarchosLM"]


def __getattr__(name):
    if name == "HierarchosLM":
        from hierarchos_jax.eval.lm import HierarchosLM

        return HierarchosLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
