"""The ``qwen-backends`` command: parse, build settings, call the library, print.

Each subcommand lives in its own module in this package and exposes ``register(subparsers)``;
:data:`COMMAND_MODULES` lists them. :func:`main` is the one choke point that turns a
:class:`~qwen_backends.errors.QwenBackendsError` (a user mistake or an unavailable runtime) into
a one-line message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qwen_backends.errors import ConfigurationError, QwenBackendsError

__all__ = ["COMMAND_MODULES", "main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "info",
    "generate",
    "make_test_model",
    "eval",
    "vocab",
    "finetune",
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
        description="Qwen3-4B through one interface on transformers, Ollama, Unsloth and vLLM "
        "(always non-thinking).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"qwen_backends.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 runtime failure, 2 user mistake)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except ConfigurationError as exc:
        print(f"qwen-backends: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QwenBackendsError as exc:
        print(f"qwen-backends: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ImportError) else EXIT_FAILURE
    except KeyboardInterrupt:
        print("qwen-backends: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
