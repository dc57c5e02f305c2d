"""Inference: the generation engine, on-device sampling, the chat session, online LTM learning
and the learned memory (spec inference.md)."""

from hierarchos_jax.infer.chat import ChatOptions, ChatSession, Reply
from hierarchos_jax.infer.engine import (GenerationEngine, GenerationResult, GenerationState, GenerationStream,
                                         StopConditions, TokenEvent)
from hierarchos_jax.infer.memory import MemoryBank, MemoryFilter
from hierarchos_jax.infer.online import LearningOptions, OnlineLearner
from hierarchos_jax.infer.sampling import SamplingParams

__all__ = ["ChatOptions", "ChatSession", "GenerationEngine", "GenerationResult", "GenerationState",
           "GenerationStream", "LearningOptions", "MemoryBank", "MemoryFilter", "OnlineLearner", "Reply",
           "SamplingParams", "StopConditions", "TokenEvent"]
