"""Inference: the generation engine and on-device sampling (spec inference.md)."""

from hierarchos_jax.infer.engine import (GenerationEngine, GenerationResult, GenerationState, GenerationStream,
                                         StopConditions, TokenEvent)
from hierarchos_jax.infer.sampling import SamplingParams

__all__ = ["GenerationEngine", "GenerationResult", "GenerationState", "GenerationStream", "SamplingParams",
           "StopConditions", "TokenEvent"]
