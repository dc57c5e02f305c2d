"""How lm-eval requests become token ids (spec evaluation.md §2.2, §2.3, §2.6, §2.7).

Pure functions over a tokenizer: the joint-BPE ``(context, continuation)`` split, the
truncation of a scoring pair to ``max_length`` tokens, and the disjoint rolling windows
of a document. Nothing here touches the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Encode = Callable[[str], list]

DEFAULT_MAX_LENGTH = 1024


def encode_plain(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode(text, add_special_tokens=False)``: no BOS/EOS added, but a literal
    special-token text (``<|endoftext|>``) still becomes its id."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def eot_id(tokenizer) -> int:
    """The end-of-text id: the eos id, else the pad id, else 0."""
    for name in ("eos_id", "pad_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_pair(encode: Encode, eot: int, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids, with BPE merges across the boundary as lm-eval's HF model.

    * empty context: ``[eot]`` + the continuation (or, when the continuation's first id is
      ``eot``, that id as the context);
    * otherwise the context's trailing whitespace moves to the continuation, then the
      continuation ids are the joint encoding minus as many leading ids as the context
      alone has (so a merge across the boundary changes what is scored, and may leave
      nothing to score).
    """
    if not context:
        ids = encode(continuation)
        if not ids:
            return [eot], []
        if ids[0] == eot:
            return ids[:1], ids[1:]
        return [eot], ids
    stripped = context.rstrip()
    if len(stripped) < len(context):
        continuation = context[len(stripped):] + continuation
        context = stripped
    joint = encode(context + continuation)
    ctx = encode(context)
    return ctx, joint[len(ctx):]


def truncate_pair(context: Sequence[int], continuation: Sequence[int], max_length: int,
                  eot: int) -> tuple[list[int], list[int]]:
    """Keep the newest ``max_length`` continuation ids and enough context (at least one id,
    ``[eot]`` if none) that ``context + continuation[:-1]`` fits in ``max_length``."""
    context, continuation = list(context), list(continuation)
    if not continuation:
        return context[-max_length:] if max_length > 0 else [], []
    continuation = continuation[-max_length:] if max_length > 0 else []
    budget = max(1, max_length - len(continuation) + 1)
    return context[-budget:] or [eot], continuation


def rolling_windows(tokens: Sequence[int], max_length: int, eot: int) -> list[tuple[list[int], list[int]]]:
    """The disjoint scoring windows of a document (lm-eval's ``get_rolling_token_windows``
    with ``context_len=1`` made disjoint): the first predicts up to ``max_length`` ids after
    ``[eot]``; each later full window has one context id; the last, partial window of ``w``
    ids gets ``max_length - w + 1`` context ids (it re-reads already scored ids)."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(tokens)
    if not tokens:
        return []
    windows = get_rolling_token_windows(token_list=tokens, prefix_token=eot, max_seq_len=max_length, context_len=1)
    return [tuple(map(list, make_disjoint_window(w))) for w in windows]


def resolve_max_length(config, override: int | None = None) -> int:
    """``override``, else the checkpoint config's ``max_length``, else 1024 (also for a key
    that is present but null/0, where the reference wrapper breaks)."""
    if override is not None:
        if int(override) < 1:
            raise ValueError(f"max_length must be >= 1, got {override}")
        return int(override)
    value = config.extra.get("max_length") if hasattr(config, "extra") else None
    try:
        value = int(value) if value is not None else 0
    except (TypeError, ValueError):
        value = 0
    return value if value > 0 else DEFAULT_MAX_LENGTH
