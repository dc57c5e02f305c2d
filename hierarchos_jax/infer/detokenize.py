"""Incremental detokenization for streaming, with stop strings held back until decided."""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Turns generated token ids into text pieces as they arrive, in O(1) per token.

    Each new token is decoded together with the few tokens before it (the "prefix window")
    and the difference to the window's own decode is the new text, so characters split
    across tokens come out whole; text that still ends in an incomplete UTF-8 sequence
    (decoded as U+FFFD) waits for the next token. ``push(token)`` returns the new *safe*
    text, which also holds back a tail that could be the beginning of a stop string.
    Once a stop string appears, ``stop_index`` is its position, :attr:`text` ends there and
    nothing after it is ever emitted.
    """

    def __init__(self, tokenizer, stop_strings=()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._longest_stop = max((len(s) for s in self.stop_strings), default=0)
        self.ids: list[int] = []
        self._prefix = 0     # ids[_prefix:_read] were decoded already (the window's context)
        self._read = 0
        self._decoded = ""   # text of ids[:_read]
        self.emitted = ""    # text handed out so far
        self.stop_index: int | None = None

    @property
    def text(self) -> str:
        """The text of the tokens so far, cut before the first stop string."""
        return self._decoded if self.stop_index is None else self._decoded[:self.stop_index]

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        if self.stop_index is not None:
            return ""
        self.ids.append(int(token))
        window = self._decode(self.ids[self._prefix:self._read])
        new = self._decode(self.ids[self._prefix:])
        if len(new) > len(window) and not new.endswith(REPLACEMENT_CHAR):
            self._append(new[len(window):])
        return self._safe()

    def flush(self) -> str:
        """Everything not yet emitted, incomplete characters included (at the end)."""
        if self.stop_index is None and self._read < len(self.ids):
            window = self._decode(self.ids[self._prefix:self._read])
            new = self._decode(self.ids[self._prefix:])
            self._append(new[len(window):])
        return self._emit(self.text)

    def _append(self, delta: str) -> None:
        start = max(0, len(self._decoded) - self._longest_stop + 1)
        self._decoded += delta
        self._prefix, self._read = self._read, len(self.ids)
        for s in self.stop_strings:
            i = self._decoded.find(s, start)
            if i >= 0 and (self.stop_index is None or i < self.stop_index):
                self.stop_index = i

    def _safe(self) -> str:
        if self.stop_index is not None:
            return self._emit(self.text)
        text = self._decoded
        return self._emit(text[:len(text) - self._stop_prefix_len(text)])

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _emit(self, upto: str) -> str:
        if len(upto) <= len(self.emitted):
            return ""
        piece = upto[len(self.emitted):]
        self.emitted = upto
        return piece
