"""One record (a dict) -> one :class:`Example`, as the reference's formatter (spec/training.md §3).

``format_record`` returns an :class:`Example` or a :class:`Rejected` with the reason. Columns are
resolved per record (§3.1), the text is built from the template of the mode (§3.2), blank
records are rejected (§3.3), prompt + response are composed and cut to ``max_length`` keeping the
prompt's suffix and at least ``min_response_tokens`` answer tokens (§3.4), and loss weights are
attached only when a weight option is not its default (§3.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hierarchos_jax.data.examples import IGNORE, Example
from hierarchos_jax.data.options import FormatOptions
from hierarchos_jax.data.tokens import encode_batch, require_eos

TEXT_COLUMNS = ("text", "content")
PAIR_COLUMNS = (("instruction", "output"), ("prompt", "completion"), ("question", "answer"))


@dataclasses.dataclass(frozen=True)
class Rejected:
    reason: str

    def __bool__(self) -> bool:
        return False


def _present(record: dict, column: str | None) -> bool:
    """Key exists, value is not null and not blank once converted to text (§3.1 rules 4-5)."""
    if not column or column not in record:
        return False
    value = record[column]
    return value is not None and str(value).strip() != ""


def resolve_columns(record: dict, opts: FormatOptions) -> tuple[str | None, str | None, str | None]:
    """``(text_column, prompt_column, completion_column)`` for this record (§3.1)."""
    if opts.text_column:
        return opts.text_column, None, None
    if opts.alpaca and not (opts.prompt_column or opts.completion_column):
        return None, "instruction", "output"
    if opts.prompt_column or opts.completion_column:
        return None, opts.prompt_column, opts.completion_column
    for column in TEXT_COLUMNS:
        if _present(record, column):
            return column, None, None
    for prompt, completion in PAIR_COLUMNS:
        if _present(record, prompt) or _present(record, completion):
            return None, prompt, completion
    return None, None, None


def _field(record: dict, column: str) -> str:
    """Python ``str()`` of the value (JSON null -> 'None', as the reference); missing -> ''."""
    return str(record.get(column, ""))


def _alpaca_pair(prompt: str, completion: str) -> bool:
    return prompt.lower() == "instruction" and completion.lower() == "output"


def prompt_response_texts(record: dict, prompt_col: str, completion_col: str,
                          opts: FormatOptions) -> tuple[str, list[str]] | Rejected:
    """The prompt text and the response pieces of a prompt/completion record (§3.2, §3.3)."""
    instruction = _field(record, prompt_col)
    output = _field(record, completion_col)
    extra = _field(record, "input").strip()
    if opts.drop_empty_completions and not output.strip():
        return Rejected(f"blank completion ({completion_col!r})")
    if not instruction.strip() and not output.strip() and not extra:
        return Rejected("instruction, output and input are all blank")
    if opts.kayla:
        feelings = _field(record, "feelings")
        prompt = f"### Instruction:\n{instruction}\n\n" + (f"### Feelings:\n{feelings}\n\n" if feelings else "")
        thought = _field(record, "thought-process")
        return prompt, [f"### Thought Process:\n{thought}\n\n", f"### Response:\n{output}"]
    if opts.alpaca or _alpaca_pair(prompt_col, completion_col):
        prompt = (f"### Previous Context:\n{extra}\n\n" if extra else "") + \
            f"### Instruction:\n{instruction}\n\n### Response:\n"
        return prompt, [output]
    prompt = (f"User: {extra}\n\n" if extra else "") + f"User: {instruction}\n\nAssistant: "
    return prompt, [output]


def compose(prompt_ids: list[int], response_ids: list[int], eos: int, max_length: int,
            opts: FormatOptions) -> Example | Rejected:
    """Prompt + response + EOS, cut to ``max_length`` (§3.4), with labels and weights (§3.5)."""
    M = int(max_length)
    P, R = list(prompt_ids), list(response_ids) + [eos]
    if M > 0 and len(P) + len(R) > M:
        answer = min(opts.min_response_tokens, len(response_ids))
        reserved = max(min(M, answer + 1), 1)
        budget = M - reserved
        if budget < 0:
            return Rejected(f"max_length {M} leaves no room for the response")
        if len(P) > budget:
            P = P[len(P) - budget:] if budget > 0 else []
        room = M - len(P)
        if room <= 0:
            return Rejected(f"max_length {M} leaves no room for the response")
        if len(R) > room:
            R = R[:room]
            R[-1] = eos
    ids = P + R
    labels = (P if opts.train_prompt_tokens else [IGNORE] * len(P)) + R
    weights = None
    if opts.custom_weights:
        prompt_w = opts.prompt_loss_weight if opts.train_prompt_tokens else 0.0
        resp = [opts.response_loss_weight] * len(R)
        for j in range(min(opts.response_boundary_tokens, len(R) - 1)):
            resp[j] = opts.response_loss_weight * opts.response_boundary_loss_weight
        weights = [prompt_w] * len(P) + resp
    return _example(ids, labels, weights, M, eos)


def _example(ids: list[int], labels: list[int], weights: list[float] | None, M: int, eos: int) -> Example:
    if len(ids) > M:  # final safety cut (§3.4 step 4): first M-1 tokens + EOS
        ids = ids[:M - 1] + [eos]
        labels = labels[:M - 1] + [eos]
        if weights is not None:
            weights = weights[:M - 1] + [weights[-1] if weights else 1.0]
    return Example(np.asarray(ids, np.int32), np.asarray(labels, np.int32),
                   None if weights is None else np.asarray(weights, np.float32))


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A record as text: the whole text (text mode) or the prompt and the response pieces."""

    text: str | None = None
    prompt: str | None = None
    pieces: tuple[str, ...] = ()


def render_record(record, opts: FormatOptions) -> Rendered | Rejected:
    """Column resolution, rejections and templates (§3.1-3.3), before tokenization."""
    if not isinstance(record, dict):
        return Rejected(f"not a JSON object ({type(record).__name__})")
    text_col, prompt_col, completion_col = resolve_columns(record, opts)
    if text_col:
        text = _field(record, text_col)
        if not text.strip():
            return Rejected(f"blank text ({text_col!r})")
        return Rendered(text=text)
    if not (prompt_col and completion_col):
        if prompt_col or completion_col:
            return Rejected("only one of --prompt-column/--completion-column is given")
        return Rejected("no text (text/content) or prompt/completion columns")
    texts = prompt_response_texts(record, prompt_col, completion_col, opts)
    if isinstance(texts, Rejected):
        return texts
    return Rendered(prompt=texts[0], pieces=tuple(texts[1]))


def format_records(records, tokenizer, max_length: int, opts: FormatOptions) -> list[Example | Rejected]:
    """Format many records; the texts are tokenized in batches (same ids as one at a time)."""
    eos = require_eos(tokenizer)
    rendered = [render_record(r, opts) for r in records]
    ok = [r for r in rendered if isinstance(r, Rendered)]
    special = encode_batch(tokenizer, [r.text if r.text is not None else r.prompt for r in ok], special=True)
    plain = iter(encode_batch(tokenizer, [p for r in ok for p in r.pieces], special=False))
    out: list[Example | Rejected] = []
    k = 0
    for r in rendered:
        if isinstance(r, Rejected):
            out.append(r)
            continue
        ids = special[k]
        k += 1
        if r.text is not None:
            ids = ids + [eos]
            weights = [opts.response_loss_weight] * len(ids) if opts.custom_weights else None
            out.append(_example(ids, list(ids), weights, max_length, eos))
            continue
        response: list[int] = []
        for _ in r.pieces:
            response += next(plain)
        out.append(compose(ids, response, eos, max_length, opts))
    return out


def format_record(record, tokenizer, max_length: int, opts: FormatOptions) -> Example | Rejected:
    """Format one record into token ids, labels and optional loss weights."""
    return format_records([record], tokenizer, max_length, opts)[0]
