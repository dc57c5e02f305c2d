"""Entry point of the ``hierarchos`` command."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import importlib

from ._common import CLIError

PROG = "hierarchos"
DIST_NAME = "hierarchos-jax"

# One module per command group (cli/<name>.py), each with register(subparsers);
# the order here is the order of `hierarchos --help`.
COMMAND_MODULE_NAMES = (
    "quickstart",
    "train",
    "finetune",
    "merge_lora",
    "expand",
    "chunk",
    "train_tokenizer",
    "ckpt_2_inf",
    "plot",
    "generate",
    "chat",
    "quantize",
    "benchmark",
    "perplexity",
    "export",
    "info",
    "conformance",
)


def command_modules():
    return [importlib.import_module(f"{__package__}.{name}") for name in COMMAND_MODULE_NAMES]


class UsageError(Exception):
    """Bad command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: error: {message} (see '{PROG} --help')")


def version_string() -> str:
    try:
        from importlib.metadata import version

        v = version(DIST_NAME)
    except Exception:  # not installed (running from a source tree)
        v = "unknown"
    return f"{DIST_NAME} {v}"


def _width() -> int:
    return max(80, shutil.get_terminal_size().columns)


def _top_formatter(prog: str) -> argparse.HelpFormatter:
    # Raw: keeps the hand-made one-line-per-command list in the epilog intact.
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30, width=_width())


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=30, width=_width())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [-h] [--version] COMMAND [ARGS ...]",
        formatter_class=_top_formatter,
        description="hierarchos-jax: JAX/Flax port of the Hierarchos language model.",
    )
    parser.add_argument("--version", action="version", version=version_string())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog=PROG)
    for module in command_modules():
        module.register(sub)
    # The command list, one line per command, built from the registered parsers.
    commands = [(a.dest, a.help or "") for a in sub._choices_actions]
    width = max(len(name) for name, _ in commands) + 2
    parser.epilog = "commands:\n" + "\n".join(
        f"  {name:<{width}}{text}" for name, text in commands
    ) + f"\n\nRun '{PROG} COMMAND --help' for a command's options."
    for sp in sub.choices.values():
        sp.formatter_class = _formatter
    return parser


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 error, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            raise UsageError(f"{PROG}: error: no command given (see '{PROG} --help')")
        if extra:
            if not getattr(args, "passthrough", False):
                raise UsageError(
                    f"{PROG} {args.command}: error: unrecognized arguments: "
                    f"{' '.join(extra)} (see '{PROG} {args.command} --help')"
                )
            args.extra = extra
    except UsageError as exc:
        _err(str(exc))
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        return 130
    except BrokenPipeError:  # e.g. `hierarchos info x | head`: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (CLIError, ValueError, OSError, ImportError) as exc:
        if os.environ.get("HIERARCHOS_DEBUG"):
            raise
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
            msg = f"{exc.filename}: {msg}"
        _err(f"{PROG}: error: {' '.join(msg.split())}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
