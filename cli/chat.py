"""``hierarchos chat``: the interactive REPL (a thin terminal front end over ``ChatSession``)."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading

from ._common import CLIError, load


def _flag(p, *names, **kw):
    p.add_argument(*names, **kw)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal (streaming, slash commands, online LTM learning)",
        description=(
            "Chat with a model directory (ours or the reference's). Answers stream token by token; "
            "/help lists the commands (sampling settings, system prompt, reset, memory inspection and "
            "queries by time and source, retrieval filters, saving/loading the learned memory). Feedback "
            "on the previous answer (yes/good, no/bad, \"it's X\") writes the long-term memory online. "
            "Works on a terminal and with piped stdin; exit, quit or Ctrl+D ends the session, Ctrl+C "
            "stops an answer."
        ),
    )
    _flag(p, "--model-path", "--model_path", required=True, metavar="DIR", help="model directory or checkpoint file")
    _flag(p, "--tokenizer-path", "--tokenizer_path", metavar="DIR",
          help="tokenizer directory (default: the model directory)")
    g = p.add_argument_group("sampling")
    _flag(g, "--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default %(default)s)")
    _flag(g, "--top-k", "--top_k", type=int, default=40, help="top-k filter; 0 = off (default %(default)s)")
    _flag(g, "--top-p", "--top_p", type=float, default=0.9, help="nucleus mass, 0 < P <= 1 (default %(default)s)")
    _flag(g, "--repetition-penalty", "--repetition_penalty", type=float, default=1.2,
          help="penalty > 0 on tokens already in the answer; 1 = off (default %(default)s)")
    _flag(g, "--max-new-tokens", "--max_new_tokens", type=int, default=512,
          help="most tokens per answer (default %(default)s)")
    _flag(g, "--seed", type=int, default=0, help="sampling seed; turn i uses SEED+i (default %(default)s)")
    _flag(g, "--eos-stop-prob", "--eos_stop_prob", type=float, default=0.0,
          help="stop once the EOS probability reaches this (0 = off)")
    _flag(g, "--entropy-stop-threshold", "--entropy_stop_threshold", type=float, default=0.0,
          help="stop when the next-token entropy reaches this (0 = off)")
    _flag(g, "--entropy-stop-min-tokens", "--entropy_stop_min_tokens", type=int, default=3,
          help="tokens before the entropy stop may fire (default %(default)s)")
    _flag(g, "--entropy-stop-top-prob", "--entropy_stop_top_prob", type=float, default=0.05,
          help="the entropy stop also needs the top probability <= this; 0 = no condition (default %(default)s)")
    c = p.add_argument_group("conversation")
    _flag(c, "--alpaca", action="store_true", default=None,
          help="Alpaca prompt template (default: the checkpoint config's 'alpaca')")
    _flag(c, "--system", metavar="TEXT", help="initial system prompt (also /system)")
    _flag(c, "--carry-chat-state", "--carry_chat_state", action="store_true",
          help="carry the recurrent state, position and ROSA history across turns")
    _flag(c, "--chat-prefill-chunk-size", "--chat_prefill_chunk_size", type=int, default=None, metavar="N",
          help="prefill chunk (default: 0 for exact checkpoints, training_chunk_size for legacy ones)")
    _flag(c, "--chat-input-history-turns", "--chat_input_history_turns", type=int, default=0, metavar="N",
          help="previous turns in the Alpaca 'Previous Context' field (default %(default)s)")
    _flag(c, "--chat-input-history-chars", "--chat_input_history_chars", type=int, default=3000, metavar="N",
          help="character cap of that field (default %(default)s)")
    m = p.add_argument_group("online LTM learning")
    _flag(m, "--no-online-learning", dest="online_learning", action="store_false",
          help="feedback words are ordinary prompts; the memory is never written")
    _flag(m, "--ltm-lr", "--ltm_lr", type=float, default=1e-3, help="LTM learning rate of feedback updates")
    _flag(m, "--dynamic-ltm-lr", dest="dynamic_ltm_lr", action="store_true",
          help="cosine schedule of the feedback learning rate")
    _flag(m, "--static-ltm-lr", dest="dynamic_ltm_lr", action="store_false", help="constant learning rate (default)")
    _flag(m, "--ltm-schedule-steps", type=int, default=100, help="cosine period in updates (default %(default)s)")
    _flag(m, "--ltm-schedule-min-lr", type=float, default=1e-5, help="cosine floor (default %(default)s)")
    _flag(m, "--online-ltm-grad-clip", type=float, default=0.75,
          help="element and norm clip of the memory gradients; 0 = off (default %(default)s)")
    _flag(m, "--passive-learning", dest="passive_learning", action="store_true",
          help="also learn every prompt (LR --passive-lr)")
    _flag(m, "--no-passive-learning", dest="passive_learning", action="store_false")
    _flag(m, "--passive-response-learning", action="store_true",
          help="also learn own answers the model was confident about (loss <= --surprise-threshold)")
    _flag(m, "--passive-lr", type=float, default=5e-6, help="LR of passive updates (default %(default)s)")
    _flag(m, "--surprise-threshold", type=float, default=1.0, help="passive response learning loss ceiling")
    _flag(m, "--ltm-lora-path", "--ltm_lora_path", metavar="FILE",
          help="learned-memory file (safetensors + FILE.json): loaded at start if present, saved at exit")
    _flag(c, "--chat-state-file", "--chat_state_file", nargs="?", const="auto", default=None, metavar="PATH",
          help="autosave the conversation state (recurrence, position, ROSA history) after every turn; "
               "no value: ./hierarchos_chat_states/<model>-<time>.safetensors")
    _flag(c, "--resume-chat-from-state-file", "--resume_chat_from_state_file", metavar="PATH",
          help="continue the conversation saved in PATH (turns state carrying on) and keep autosaving it")
    p.set_defaults(func=run, dynamic_ltm_lr=False, passive_learning=False)


def _check(args) -> None:
    if args.max_new_tokens < 0:
        raise CLIError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise CLIError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not (0.0 < args.top_p <= 1.0):
        raise CLIError(f"--top-p must satisfy 0 < P <= 1, got {args.top_p}")
    if not (0.0 < args.repetition_penalty < math.inf):
        raise CLIError(f"--repetition-penalty must be a finite number > 0, got {args.repetition_penalty}")
    if args.chat_prefill_chunk_size is not None and args.chat_prefill_chunk_size < 0:
        raise CLIError(f"--chat-prefill-chunk-size must be >= 0, got {args.chat_prefill_chunk_size}")


class _Interrupts:
    """SIGINT while an answer streams sets a flag (checked between tokens) instead of
    raising inside a device call, so the session and its state survive Ctrl+C."""

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        self.hit = False
        self._old = signal.signal(signal.SIGINT, self._on)
        return self

    def _on(self, signum, frame):
        self.hit = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)
        return False


def _read_line(interactive: bool) -> str | None:
    """One line, or ``None`` at EOF. Ctrl+C at the prompt gives ``""`` plus a notice."""
    try:
        if interactive:
            return input(">>> ")
        line = sys.stdin.readline()
        return None if line == "" else line.rstrip("\n")
    except EOFError:
        return None


def _relay_ctrl_c_to_main_thread() -> None:
    """Make every Ctrl+C reach the main thread.

    At the prompt the main thread waits in readline's select(), which only a signal delivered
    to that thread interrupts; but SIGINT goes to any thread that does not block it, and the
    XLA runtime runs many. So SIGINT is blocked here, before the runtime starts (threads
    inherit the mask), a small thread takes it with sigwait() and re-sends it to the main
    thread as SIGUSR1, whose handler runs whatever SIGINT handler is installed at that moment
    (KeyboardInterrupt at the prompt, the stop flag during an answer)."""
    if not (hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait")):
        return
    main = threading.main_thread().ident

    def forward(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    def wait():
        while True:
            signal.sigwait({signal.SIGINT})
            signal.pthread_kill(main, signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, forward)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=wait, name="ctrl-c-relay", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    _check(args)
    _relay_ctrl_c_to_main_thread()
    model_dir = load("hierarchos_jax.io.model_dir", "chat")
    tokenizer_mod = load("hierarchos_jax.io.tokenizer", "chat")
    chat = load("hierarchos_jax.infer.chat", "chat")
    online = load("hierarchos_jax.infer.online", "chat")

    loaded = model_dir.load_model_dir(args.model_path)
    directory = loaded.directory if loaded.directory.is_dir() else loaded.directory.parent
    tokenizer = tokenizer_mod.Tokenizer(args.tokenizer_path or directory)
    learning = online.LearningOptions(
        ltm_lr=args.ltm_lr, dynamic_lr=args.dynamic_ltm_lr, schedule_steps=args.ltm_schedule_steps,
        schedule_min_lr=args.ltm_schedule_min_lr, grad_clip=args.online_ltm_grad_clip,
        passive_learning=args.passive_learning, passive_response_learning=args.passive_response_learning,
        passive_lr=args.passive_lr, surprise_threshold=args.surprise_threshold)
    state_path = args.resume_chat_from_state_file or args.chat_state_file
    if state_path == "auto":
        state_path = str(load("hierarchos_jax.infer.chat_state", "chat").default_path(args.model_path))
    options = chat.ChatOptions(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, max_new_tokens=args.max_new_tokens, eos_stop_prob=args.eos_stop_prob,
        entropy_stop_threshold=args.entropy_stop_threshold, entropy_stop_min_tokens=args.entropy_stop_min_tokens,
        entropy_stop_top_prob=args.entropy_stop_top_prob, alpaca=args.alpaca, system=args.system,
        carry_state=args.carry_chat_state, prefill_chunk_size=args.chat_prefill_chunk_size,
        history_turns=args.chat_input_history_turns, history_chars=args.chat_input_history_chars,
        learning=args.online_learning, learning_options=learning, memory_path=args.ltm_lora_path,
        state_path=state_path, resume_state=args.resume_chat_from_state_file is not None)
    try:
        session = chat.ChatSession(loaded.model, loaded.config, tokenizer, options)
    except ValueError as e:  # bad option values, vocabulary mismatch, unusable memory file
        raise CLIError(str(e)) from None
    return repl(session, sys.stdin.isatty())


def repl(session, interactive: bool) -> int:
    out = sys.stdout
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def say(*lines):
        for line in lines:
            print(line, file=out, flush=True)

    say(*session.banner())
    try:
        say(*session.diagnostic())  # also compiles the session's prefill before the first line
    except Exception as e:  # noqa: BLE001  (a diagnostic only: one line, go on)
        say(f"(start-up check failed: {type(e).__name__}: {e})")
    interrupts = _Interrupts()
    try:
        while True:
            try:
                line = _read_line(interactive)
            except KeyboardInterrupt:
                say("", "(Ctrl+C: type exit or press Ctrl+D to quit)")
                continue
            if line is None:
                if interactive:
                    say("")
                break
            with interrupts:  # Ctrl+C while working: stop the answer, keep the session
                try:
                    if not _answer(session.handle(line), interrupts, out, say):
                        break
                except Exception as e:  # noqa: BLE001  (one line, the session goes on)
                    say("", f"error: {type(e).__name__}: {e}")
    finally:
        say(*session.close())
    return 0


def _answer(reply, interrupts, out, say) -> bool:
    """Show one reply (streaming a turn); ``False`` when the session should end."""
    say(*reply.lines)
    if reply.kind == "exit":
        return False
    if reply.kind == "turn":
        for piece in reply:
            out.write(piece)
            out.flush()
            if interrupts.hit and not reply.interrupted:
                reply.interrupt()
        if interrupts.hit:
            reply.interrupted = True
        out.write("\n")
        if reply.interrupted:
            say("(answer stopped)")
        say(*reply.after)
    elif interrupts.hit:
        say("(interrupted)")
    return True
