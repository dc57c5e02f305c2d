"""Chat input parsing, prompt templates and the pure pieces of online learning (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hierarchos_jax.infer.commands import classify_feedback, parse_line
from hierarchos_jax.infer.online import cosine_ltm_lr, prepare_gradients, quality_gate
from hierarchos_jax.infer.prompt import ChatHistory, format_prompt


@pytest.mark.parametrize("line, kind, value", [
    ("", "empty", None), ("   ", "empty", None),
    ("exit", "exit", None), (" EXIT ", "exit", None), ("quit", "exit", None),
    ("/temp 0.3", "set", ("temperature", 0.3)), ("/temperature 0", "set", ("temperature", 0.0)),
    ("/temp 0.3 junk", "set", ("temperature", 0.3)),
    ("/topk -5", "set", ("top_k", 0)), ("/topk 7", "set", ("top_k", 7)),
    ("/topp 1", "set", ("top_p", 1.0)), ("/topp 0.5", "set", ("top_p", 0.5)),
    ("/penalty 1.15", "set", ("repetition_penalty", 1.15)), ("/seed 4", "set", ("seed", 4)),
    ("/settings temperature 0.5", "set", ("temperature", 0.5)), ("/settings", "settings", None),
    ("/system", "system", None), ("/system clear", "system", None), ("/system Be brief.", "system", "Be brief."),
    ("/reset", "reset", None), ("/reset_ltm", "reset_ltm", None), ("/status", "status", None),
    ("/help", "help", None), ("/learn", "learn", None),
    ("/tempx 0.5", "unknown", "/tempx"), ("/resetx", "unknown", "/resetx"), ("/Status", "unknown", "/Status"),
    ("/save_memory", "save_memory", None), ("/save_memory a.st", "save_memory", "a.st"),
    ("/load_memory a.st", "load_memory", "a.st"), ("/save_model out", "save_model", "out"),
    ("/filter", "filter", None), ("/filter clear", "filter", {}),
    ("/filter source=correction", "filter", {"source": 3}), ("/filter time=100", "filter", {"since": 100.0}),
    ("/memory", "memory", {}), ("/memory source=2 limit=3", "memory", {"source": 2, "limit": 3}),
    ("/memory since=-60", "memory", {"since": 940.0}),
])
def test_commands_parse(line, kind, value):
    cmd = parse_line(line, now=1000.0)
    assert cmd.kind == kind
    if kind not in ("empty", "exit", "help", "learn", "reset", "reset_ltm", "status", "settings"):
        assert cmd.value == value


@pytest.mark.parametrize("line", ["/topp 0", "/topp -inf", "/topp 1.5", "/topp nan", "/topp abc", "/topp",
                                  "/temp -1", "/temp nan", "/temp inf", "/temp", "/topk abc", "/topk 5.5",
                                  "/penalty 0", "/settings foo", "/settings temperature", "/memory source=9",
                                  "/memory foo=1", "/filter time=abc", "/filter source=", "/load_memory",
                                  "/save_model", "/reset now"])
def test_bad_values_are_one_line_errors(line):
    cmd = parse_line(line)
    assert cmd.kind == "error" and "\n" not in str(cmd.value) and str(cmd.value)


def test_feedback_only_with_a_pending_answer_and_learning():
    assert parse_line("yes", pending=True).kind == "positive"
    assert parse_line("Thanks!", pending=True).kind == "positive"
    assert parse_line("yes", pending=False).kind == "prompt"
    assert parse_line("yes", pending=True, learning=False).kind == "prompt"
    assert parse_line("no", pending=True).kind == "negative"
    assert parse_line("Great, now explain X", pending=True).kind == "prompt"  # the reference swallowed it
    c = parse_line("No, it's 4", pending=True)
    assert (c.kind, c.text) == ("correction", "it's 4")
    assert classify_feedback("Actually, Paris") == ("correction", "Paris")
    assert classify_feedback("the answer is 42") == ("correction", "42")
    assert classify_feedback("it's ") is None


def test_prompt_templates_are_byte_exact():
    assert format_prompt("  hi ", alpaca=False) == "User: hi\n\nAssistant: "
    assert format_prompt("hi", alpaca=False, system="S") == "User: [S]\nhi\n\nAssistant: "
    assert format_prompt("hi", alpaca=True) == "### Instruction:\nhi\n\n### Response:\n"
    assert format_prompt("hi", alpaca=True, system="S", history="User: a\nAssistant: b") == (
        "### Previous Context:\nUser: a\nAssistant: b\n\n### Instruction:\n[S]\nhi\n\n### Response:\n")


def test_history_keeps_the_last_turns_and_chars():
    h = ChatHistory(turns=2, chars=3000)
    for i in range(3):
        h.add(f" q{i} ", f"a{i}")
    h.add("ignored", "")
    assert h.text() == "User: q1\nAssistant: a1\n\nUser: q2\nAssistant: a2"
    short = ChatHistory(turns=2, chars=10)
    short.add("q", "a long answer")
    assert short.text() == "ong answer" and len(ChatHistory(turns=0).text()) == 0


def test_gradient_preparation_matches_the_spec_example():
    g = prepare_gradients(np.array([3.0, -4.0, 0.1]), 0.75)
    np.testing.assert_allclose(g, [0.5280, -0.5280, 0.0704], atol=1e-4)
    assert prepare_gradients(np.array([1.0, np.nan]), 0.75) is None
    np.testing.assert_array_equal(prepare_gradients(np.array([3.0]), 0.0), [3.0])


def test_cosine_schedule_matches_the_reference_sequence():
    lrs = [cosine_ltm_lr(t, 1e-3, 1e-5, 2) for t in range(6)]
    np.testing.assert_allclose(lrs, [1e-3, 5.05e-4, 1e-5, 5.05e-4, 1e-3, 5.05e-4], rtol=1e-9)
    assert math.isclose(cosine_ltm_lr(0, 1e-3, 1e-5, 100), 1e-3)


def test_quality_gate():
    assert quality_gate([1, 2, 3]) == "too short"
    assert quality_gate([1, 2] * 12) == "low token diversity"
    assert quality_gate([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]) == "repeated n-grams"
    assert quality_gate(list(range(30))) is None
