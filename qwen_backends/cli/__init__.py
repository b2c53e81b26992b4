"""The ``qwen-backends`` command: parse, build settings, call the library, print.

Each subcommand lives in its own module in this package and exposes ``register(subparsers)``;
:data:`COMMAND_MODULES` lists them. :func:`main` is the one choke point that turns a
:class:`~qwen_backends.errors.QwenBackendsError` (a user mistake or an unavailable runtime) into
a one-line message and a non-zero exit status, never a traceback. Failures from outside the
library are translated where they arise; anything that still slips through is printed as one
line too, with a pointer to ``--debug``, which prints the traceback of any failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from qwen_backends.errors import ConfigurationError, QwenBackendsError

__all__ = ["COMMAND_MODULES", "main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "info",
    "generate",
    "score",
    "make_test_model",
    "eval",
    "vocab",
    "finetune",
    "export",
    "serve",
)

#: Exit status for a user mistake (bad argument, setting or input).
EXIT_USAGE = 2
#: Exit status for a runtime that failed or cannot be reached.
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="qwen-backends",
        description="Qwen3-4B through one interface on transformers, Ollama, llama.cpp, MLX, "
        "Unsloth and vLLM (always non-thinking).",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"qwen_backends.cli.{name}").register(subparsers)
    _add_debug_everywhere(subparsers)
    return parser


_DEBUG_HELP = "print the full traceback of any failure (for bug reports)"


def _add_debug_everywhere(subparsers: argparse._SubParsersAction) -> None:
    # ``--debug`` is accepted after the subcommand too; SUPPRESS keeps a subcommand's default
    # from overwriting a ``--debug`` given before it.
    for sub in set(subparsers.choices.values()):
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug_everywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 runtime failure, 2 user mistake)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        status: int = args.handler(args)
    except ConfigurationError as exc:
        return _fail(str(exc), EXIT_USAGE, debug)
    except QwenBackendsError as exc:
        return _fail(str(exc), EXIT_USAGE if isinstance(exc, ImportError) else EXIT_FAILURE, debug)
    except KeyboardInterrupt:
        print("qwen-backends: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last resort: a failure nothing translated (a bug)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = lines[0][:300] if lines else "(no message)"
        hint = "" if debug else " (run with --debug for the traceback)"
        return _fail(f"unexpected {type(exc).__name__}: {text}{hint}", EXIT_FAILURE, debug)
    return status


def _fail(message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(f"qwen-backends: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
