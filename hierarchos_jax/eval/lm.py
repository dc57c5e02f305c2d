"""``HierarchosLM``: a Hierarchos model as an lm-evaluation-harness ``LM``.

    import lm_eval
    from hierarchos_jax.eval import HierarchosLM

    lm = HierarchosLM(pretrained="path/to/model_dir", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])

(also ``lm_eval --model hierarchos --model_args pretrained=DIR``). The requests follow the
reference wrapper (spec evaluation.md §2): joint-BPE context/continuation split,
truncation to ``max_length``, fresh state per scored input, Hebbian writes off,
working memory read-only, rolling windows restarted from fresh state, greedy or
temperature generation with stop strings. Unlike the reference, batch size never changes
a result: rows are scored independently (:mod:`hierarchos_jax.eval.scorer`), and a
context shared by several continuations runs once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from hierarchos_jax.eval.encoding import (
    encode_pair,
    encode_plain,
    eot_id,
    resolve_max_length,
    rolling_windows,
    truncate_pair,
)
from hierarchos_jax.eval.scorer import ContinuationScorer

DEFAULT_MAX_GEN_TOKS = 128
GREEDY_BELOW = 1e-4
SAMPLING_SEED = 1234


def _positive_int(value, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


@register_model("hierarchos", "hierarchos-jax")
class HierarchosLM(LM):
    """lm-eval model over a Hierarchos model directory (ours, the reference's, or quantized).

    ``HierarchosLM(pretrained=DIR, batch_size=1, max_length=None, prefill_chunk_size=None)``
    loads ``DIR``; or pass an already loaded ``model`` (with ``tokenizer``, a
    :class:`hierarchos_jax.io.tokenizer.Tokenizer`). ``max_length`` defaults to the
    checkpoint config's ``max_length`` (1024 when absent or empty); ``memory`` is the
    read-only working memory (default: empty).
    """

    def __init__(self, pretrained: str | None = None, *, model=None, tokenizer=None, config=None,
                 batch_size: int | str = 1, max_length: int | None = None, prefill_chunk_size: int | None = None,
                 memory=None, show_progress: bool = True, **_ignored: Any):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("HierarchosLM needs pretrained=<model dir> or a loaded model")
            from hierarchos_jax.io.model_dir import load_model_dir

            loaded = load_model_dir(pretrained)
            model, config = loaded.model, loaded.config
            if tokenizer is None:
                from hierarchos_jax.io.tokenizer import Tokenizer

                tokenizer = Tokenizer(loaded.directory if loaded.directory.is_dir() else loaded.directory.parent)
        if tokenizer is None:
            raise ValueError("HierarchosLM needs a tokenizer with a loaded model")
        self.model = model
        self.config = config if config is not None else model.config
        self.tokenizer = tokenizer
        tokenizer.check_vocab(self.config.vocab_size)
        if batch_size in (None, "auto") or (isinstance(batch_size, str) and batch_size.startswith("auto")):
            batch_size = 1
        self._batch_size = _positive_int(batch_size, "batch_size")
        self._max_length = resolve_max_length(self.config, max_length)
        self._eot = eot_id(tokenizer)
        pad = getattr(tokenizer, "pad_id", None)
        self._pad = self._eot if pad is None else int(pad)
        self.prefill_chunk_size = None if prefill_chunk_size is None else int(prefill_chunk_size)
        self.show_progress = show_progress
        self.scorer = ContinuationScorer(model, self.config, batch_size=self._batch_size,
                                         prefill_chunk_size=self.prefill_chunk_size, memory=memory)
        self._engine = None

    # ------------------------------------------------------------------ properties

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "directory", "hierarchos"))

    def tok_encode(self, string: str) -> list[int]:
        return encode_plain(self.tokenizer, string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The scored token pair of one request: joint encoding, then truncation."""
        ctx, cont = encode_pair(self.tok_encode, self._eot, context, continuation)
        return truncate_pair(ctx, cont, self._max_length, self._eot)

    # ------------------------------------------------------------------- scoring

    def _score_pairs(self, pairs, desc: str, disable: bool) -> list[tuple[float, bool]]:
        todo = [i for i, (_, cont) in enumerate(pairs) if cont]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # empty continuation
        if not todo:
            return results
        bar = tqdm(total=len(todo), desc=desc, unit="req", disable=disable or not self.show_progress)
        start = time.perf_counter()

        def progress(n):
            bar.update(n)
            bar.set_postfix(req_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):.1f}")

        try:
            scored = self.scorer.score([pairs[i] for i in todo], progress=progress)
        finally:
            bar.close()
        for i, res in zip(todo, scored):
            results[i] = res
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_request(*req.args) for req in requests]
        results = self._score_pairs(pairs, "loglikelihood", disable_tqdm)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-probabilities of each whole document: the disjoint rolling windows
        of spec §2.6, each scored from fresh state (windows of all documents are batched)."""
        owners, pairs = [], []
        for d, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in rolling_windows(self.tok_encode(text), self._max_length, self._eot):
                owners.append(d)
                pairs.append(truncate_pair(ctx, cont, self._max_length, self._eot))
        scored = self._score_pairs(pairs, "loglikelihood_rolling", disable_tqdm)
        totals = [0.0] * len(requests)
        for d, (lp, _) in zip(owners, scored):
            totals[d] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---------------------------------------------------------------- generation

    @property
    def engine(self):
        if self._engine is None:
            from hierarchos_jax.infer.engine import GenerationEngine

            self._engine = GenerationEngine(self.model, self.config, self.tokenizer,
                                            prefill_chunk_size=self.prefill_chunk_size)
        return self._engine

    def _generation_settings(self, gen_kwargs: dict) -> tuple[tuple[str, ...], int, float]:
        until = gen_kwargs.get("until", None)
        if until is None:
            until = [getattr(self.tokenizer, "eos_token", None) or "</s>"]
        if isinstance(until, str):
            until = [until]
        until = tuple(s for s in until if s)  # an empty stop string would match everywhere
        max_gen = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        if max_gen < 0:
            raise ValueError(f"max_gen_toks must be >= 0, got {max_gen}")
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        return until, max_gen, temperature

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (temperature < 1e-4) or temperature sampling through the generation engine,
        stopping at any ``until`` string or the eot token; the text is cut before the first
        ``until`` string (in list order) that occurs. Requests with equal settings run as
        independent batch rows."""
        from hierarchos_jax.infer.engine import StopConditions
        from hierarchos_jax.infer.sampling import SamplingParams

        settings = [self._generation_settings(dict(req.args[1] or {})) for req in requests]
        out: list[str] = [""] * len(requests)
        order: dict[tuple, list[int]] = {}
        for i, s in enumerate(settings):
            order.setdefault(s, []).append(i)
        bar = tqdm(total=len(requests), desc="generate_until", unit="req",
                   disable=disable_tqdm or not self.show_progress)
        try:
            for (until, max_gen, temperature), idx in order.items():
                budget = max(1, self._max_length - max_gen)
                sampling = SamplingParams(temperature=temperature if temperature >= GREEDY_BELOW else 0.0,
                                          seed=SAMPLING_SEED)
                stop = StopConditions(max_new_tokens=max_gen, eos_ids=(self._eot,), stop_strings=until)
                for b in range(0, len(idx), self._batch_size):
                    rows = idx[b:b + self._batch_size]
                    prompts = [(self.tok_encode(requests[i].args[0]) or [self._eot])[-budget:] for i in rows]
                    results = self.engine.generate_batch(prompts, sampling, stop)
                    for i, res in zip(rows, results):
                        out[i] = cut_at_stop(self.tok_decode(res.token_ids), until)
                        self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                    bar.update(len(rows))
        finally:
            bar.close()
        return out


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of the first ``until`` string (list order) in it."""
    for s in until:
        if s and s in text:
            return text.split(s, 1)[0]
    return text
