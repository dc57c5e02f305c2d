"""Perplexity of a model on a text or JSONL file (``hierarchos perplexity``).

A ``.jsonl`` file holds one document per line (the ``text`` field, or a field you name);
any other file is one document. Each document is scored like lm-eval's
``loglikelihood_rolling`` (spec evaluation.md §2.6): disjoint windows of ``max_length``
tokens, the first predicted after the eot token, each window from fresh state.
Perplexity = ``exp(total NLL / tokens)``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple


class Perplexity(NamedTuple):
    documents: int
    tokens: int
    nll: float          # total negative log-likelihood (nats)

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else float("nan")


def read_documents(path: str | os.PathLike, *, text_field: str = "text") -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix.lower() != ".jsonl":
        return [raw] if raw else []
    docs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise ValueError(  # noqa: TRY004 - bad data, reported as one line by the CLI
                f"{path}:{n}: expected an object with a string {text_field!r} field")
        docs.append(row[text_field])
    return docs


def perplexity(lm, documents: list[str]) -> Perplexity:
    """Perplexity of ``documents`` under ``lm`` (a :class:`~hierarchos_jax.eval.lm.HierarchosLM`)."""
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(documents)]
    logprobs = lm.loglikelihood_rolling(requests)
    tokens = sum(len(lm.tok_encode(d)) for d in documents)
    return Perplexity(len(documents), tokens, -float(sum(logprobs)))
