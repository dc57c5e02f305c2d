"""Chat prompt templates and the "Previous Context" history (spec inference.md §3).

Byte-exact with the reference's training formatter:

* Alpaca: ``[### Previous Context:\\n<h>\\n\\n]### Instruction:\\n<u>\\n\\n### Response:\\n``
* otherwise: ``User: <u>\\n\\nAssistant: `` (no history).

``u`` is the stripped user line, prefixed with ``[<system>]\\n`` when a system prompt is set.
"""

from __future__ import annotations

import collections


def apply_system(user: str, system: str | None) -> str:
    u = user.strip()
    return f"[{system}]\n{u}" if system else u


def format_prompt(user: str, *, alpaca: bool, system: str | None = None, history: str = "") -> str:
    u = apply_system(user, system)
    if not alpaca:
        return f"User: {u}\n\nAssistant: "
    context = f"### Previous Context:\n{history}\n\n" if history else ""
    return f"{context}### Instruction:\n{u}\n\n### Response:\n"


class ChatHistory:
    """The last turns as text for the Alpaca "Previous Context" field (§3.4).

    ``turns`` (``--chat-input-history-turns``, default 0 = off) entries of
    ``"User: <line>\\nAssistant: <response>"`` joined by blank lines, cut to the last
    ``chars`` characters (``--chat-input-history-chars``, default 3000).
    """

    def __init__(self, turns: int = 0, chars: int = 3000):
        self.turns = int(turns)
        self.chars = int(chars)
        self._entries: collections.deque[str] = collections.deque(maxlen=max(self.turns, 1))

    def add(self, user_line: str, response: str) -> None:
        if response:
            self._entries.append(f"User: {user_line.strip()}\nAssistant: {response}")

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def text(self) -> str:
        if self.turns <= 0 or self.chars <= 0:
            return ""
        parts = [e.strip() for e in list(self._entries)[-self.turns:]]
        h = "\n\n".join(p for p in parts if p)
        if len(h) > self.chars:
            h = h[-self.chars:].lstrip()
        return h
