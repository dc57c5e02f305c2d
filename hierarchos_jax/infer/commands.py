"""Reading one chat input line: slash commands, exit words and feedback (spec inference.md §9, §10.2).

:func:`parse_line` turns a line into a :class:`Command` (pure; no session state except
whether learning is on and an answer is pending). Order of checks, as the reference's
(§9), with its loose parsing fixed (§18.16):

1. empty / whitespace-only line -> ``empty`` (the reference generated an empty instruction);
2. ``exit`` / ``quit`` (any case, surrounding spaces ignored) -> ``exit``;
3. a line starting with ``/`` whose first word is a known command -> that command
   (whole-word match: ``/tempx`` is unknown, not ``/temp``); an unknown ``/word`` ->
   ``unknown`` (answered with one line, not generated as a prompt);
4. with learning on and an answer pending: correction, then positive, then negative
   feedback (§10.2). Positive feedback is the *whole* line being one of the reference's
   words (``good``, ``yes``, ``thanks``, ...; trailing punctuation ignored) — the
   reference also took any line whose first word was one ("Great, now explain X"), §18.3;
5. anything else -> ``prompt``.

Settings values are checked here (``/topp 0``, ``/temp -1`` -> ``error`` with the usage).
"""

from __future__ import annotations

import dataclasses
import math
import re

from hierarchos_jax.infer.memory import parse_source

CORRECTION_PREFIXES = ("it's ", "its ", "it is ", "actually, ", "actually ", "no, ", "wrong, ", "incorrect, ",
                       "the answer is ", "answer is ", "it should be ", "should be ")
POSITIVE_WORDS = frozenset({"good", "great", "correct", "yes", "nice", "cool", "perfect", "thanks", "thx", "+",
                            "right", "accurate", "good bot", "thank you"})
NEGATIVE_WORDS = frozenset({"no", "n", "bad", "wrong", "bad bot"})

HELP = """\
commands (one per line; anything else is a prompt):
  /help                         this list
  /temp X  (/temperature X)     sampling temperature, X >= 0 (0 = greedy)
  /topk N                       keep the N most likely tokens (0 = off)
  /topp X                       nucleus mass, 0 < X <= 1 (1 = off)
  /penalty X                    repetition penalty > 0 (1 = off)
  /seed N                       restart the sampling seed
  /settings                     show the settings (/settings temperature X sets it)
  /system TEXT | /system clear  system prompt (placed inside the instruction)
  /reset                        fresh recurrent state and history (learned memory kept)
  /reset_ltm                    forget the learned memory (fast values, sources, times)
  /status                       position, learning, memory and filter state
  /memory [source=S] [since=T] [until=T] [limit=N]
                                list learned slots (S: 0-3 or unknown/user/training/
                                correction; T: Unix time, or -SECONDS = that long ago)
  /filter [time=T] [source=S] | /filter clear
                                retrieve only slots written since T / with source S
  /save_memory [PATH]           save the learned memory (default --ltm-lora-path)
  /load_memory PATH             load a saved memory
  /save_model DIR               write a model dir with the learned memory folded in
  /learn                        reinforce the previous answer
  yes / good / thanks ...       reinforce the previous answer
  no / bad / wrong              discourage the previous answer
  it's X / actually X / no, X   correct the previous answer to X
  exit / quit / Ctrl+D          end the session (Ctrl+C stops an answer)"""

USAGE = {
    "temp": "usage: /temp X with X a number >= 0 (0 = greedy)",
    "topk": "usage: /topk N with N an integer (<= 0 turns top-k off)",
    "topp": "usage: /topp X with 0 < X <= 1 (1 turns top-p off)",
    "penalty": "usage: /penalty X with X a number > 0 (1 = off)",
    "seed": "usage: /seed N with N an integer",
    "settings": "usage: /settings, or /settings temperature X",
    "memory": "usage: /memory [source=S] [since=T] [until=T] [limit=N]",
    "filter": "usage: /filter [time=T] [source=S], or /filter clear (T: Unix time or -SECONDS; S: 0-3 or a name)",
    "save_memory": "usage: /save_memory [PATH]",
    "load_memory": "usage: /load_memory PATH",
    "save_model": "usage: /save_model DIR",
}

COMMANDS = ("/help", "/temp", "/temperature", "/topk", "/topp", "/penalty", "/seed", "/settings", "/system",
            "/reset", "/reset_ltm", "/status", "/memory", "/filter", "/save_memory", "/load_memory", "/save_model",
            "/learn")


@dataclasses.dataclass(frozen=True)
class Command:
    """``kind``: empty | exit | help | set | settings | system | reset | reset_ltm | status |
    memory | filter | save_memory | load_memory | save_model | learn | correction | positive |
    negative | prompt | unknown | error. ``value`` depends on the kind (the setting
    ``(name, value)``, the text, the query dict, the path); ``error`` carries the message."""

    kind: str
    value: object = None
    text: str = ""


def _number(text: str) -> float:
    v = float(text)
    if math.isnan(v):
        raise ValueError("nan")
    return v


def _time_value(text: str, now: float) -> float:
    """``T`` of ``since=`` / ``time=``: Unix seconds, or ``-S`` meaning ``S`` seconds ago."""
    v = _number(text)
    if math.isinf(v):
        raise ValueError("inf")
    return now + v if v < 0 else v


def parse_setting(name: str, arg: str | None):
    """``(name, value)`` of a valid setting, else ``ValueError`` with the usage line."""
    if arg is None:
        raise ValueError(USAGE[name])
    try:
        if name == "temp":
            v = _number(arg)
            if not (0.0 <= v < math.inf):
                raise ValueError
            return "temperature", v
        if name == "topk":
            return "top_k", max(0, int(arg))
        if name == "topp":
            v = _number(arg)
            if not (0.0 < v <= 1.0):
                raise ValueError
            return "top_p", v
        if name == "penalty":
            v = _number(arg)
            if not (0.0 < v < math.inf):
                raise ValueError
            return "repetition_penalty", v
        if name == "seed":
            return "seed", int(arg)
    except ValueError:
        raise ValueError(USAGE[name]) from None
    raise ValueError(f"unknown setting {name}")


def parse_query(args: list[str], now: float, *, allowed: tuple[str, ...]) -> dict:
    """``key=value`` words of ``/memory`` and ``/filter``; ``ValueError`` on a bad one."""
    out: dict = {}
    for word in args:
        key, sep, value = word.partition("=")
        key = key.lower()
        if not sep or key not in allowed or not value:
            raise ValueError(f"bad argument {word!r}")
        try:
            if key in ("since", "until", "time"):
                out["since" if key == "time" else key] = _time_value(value, now)
            elif key == "source":
                out["source"] = parse_source(value)
            elif key == "limit":
                out["limit"] = int(value)
        except ValueError as e:
            raise ValueError(f"bad argument {word!r} ({e})") from None
    return out


def classify_feedback(line: str) -> tuple[str, str] | None:
    """``("correction", text)``, ``("positive", "")``, ``("negative", "")`` or ``None`` (§10.2)."""
    s = line.strip()
    low = s.lower()
    for prefix in CORRECTION_PREFIXES:
        if low.startswith(prefix):
            text = s[len(prefix):].strip()
            if text:
                return "correction", text
            break
    words = re.sub(r"[.!?,;:]+$", "", low).strip()
    if words in POSITIVE_WORDS:
        return "positive", ""
    if words in NEGATIVE_WORDS:
        return "negative", ""
    return None


def parse_line(line: str, *, learning: bool = True, pending: bool = False, now: float = 0.0) -> Command:
    """One input line -> :class:`Command` (module docstring for the order)."""
    s = line.strip()
    if not s:
        return Command("empty")
    if s.lower() in ("exit", "quit"):
        return Command("exit")
    if s.startswith("/"):
        word, _, rest = s.partition(" ")
        rest = rest.strip()
        args = rest.split()
        if word not in COMMANDS:
            return Command("unknown", word)
        try:
            if word == "/help":
                return Command("help")
            if word in ("/temp", "/temperature", "/topk", "/topp", "/penalty", "/seed"):
                name = "temp" if word == "/temperature" else word[1:]
                return Command("set", parse_setting(name, args[0] if args else None))
            if word == "/settings":
                if not args:
                    return Command("settings")
                if args[0] in ("temperature", "temp"):
                    return Command("set", parse_setting("temp", args[1] if len(args) > 1 else None))
                return Command("error", USAGE["settings"])
            if word == "/system":
                return Command("system", None if rest in ("", "clear") else rest)
            if word in ("/reset", "/reset_ltm", "/status"):
                return Command(word[1:]) if not args else Command("error", f"usage: {word} (no arguments)")
            if word == "/memory":
                try:
                    return Command("memory", parse_query(args, now, allowed=("source", "since", "until", "limit")))
                except ValueError as e:
                    return Command("error", f"{e}; {USAGE['memory']}")
            if word == "/filter":
                if args == ["clear"]:
                    return Command("filter", {})
                if not args:
                    return Command("filter", None)  # show the current filter
                try:
                    return Command("filter", parse_query(args, now, allowed=("time", "since", "source")))
                except ValueError as e:
                    return Command("error", f"{e}; {USAGE['filter']}")
            if word in ("/save_memory", "/load_memory", "/save_model"):
                if len(args) > 1 or (not args and word != "/save_memory"):
                    return Command("error", USAGE[word[1:]])
                return Command(word[1:], args[0] if args else None)
            if word == "/learn":
                return Command("learn")
        except ValueError as e:
            return Command("error", str(e))
    if learning and pending:
        fb = classify_feedback(s)
        if fb is not None:
            return Command(fb[0], text=fb[1])
    return Command("prompt", text=line)
