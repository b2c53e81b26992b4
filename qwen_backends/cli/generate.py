"""``qwen-backends generate PROMPT`` and ``qwen-backends chat``: one answer, or a conversation.

Both stream the answer to stdout as it is produced, with any backend (``--backend``), in
non-thinking mode; ``generate --json`` prints the whole
:class:`~qwen_backends.backends.base.Generation` instead, and ``generate --json-schema FILE``
constrains the answer to the JSON schema in FILE and prints the validated JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends._files import decode_utf8
from qwen_backends.chat import Message
from qwen_backends.cli._options import (
    add_backend_options,
    add_sampling_options,
    sampling_from_args,
    settings_from_args,
)
from qwen_backends.errors import ConfigurationError, QwenBackendsError
from qwen_backends.factory import create_backend
from qwen_backends.thinking import strip_thinking

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.sampling import SamplingParams

#: REPL commands of ``chat``.
RESET, EXIT = "/reset", "/exit"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` and ``chat`` subcommands."""
    generate = subparsers.add_parser(
        "generate",
        help="answer one prompt (streams to stdout)",
        description="Answer one user message with the configured backend, non-thinking.",
    )
    generate.add_argument("prompt", help="the user message ('-' reads it from stdin)")
    generate.add_argument("--system", help="a system message")
    generate.add_argument(
        "--json", action="store_true", help="print the full result as JSON instead of streaming"
    )
    generate.add_argument(
        "--json-schema",
        metavar="FILE",
        help="constrain the answer to the JSON schema in FILE and print the validated JSON",
    )
    generate.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        help="after the answer, show each token with its probability and the N most likely "
        "alternatives (0-20)",
    )
    add_backend_options(generate)
    add_sampling_options(generate)
    generate.set_defaults(handler=run)

    chat = subparsers.add_parser(
        "chat",
        help="talk to the model in a REPL that keeps the history",
        description=f"A conversation in the terminal. {RESET} clears the history, {EXIT} (or "
        "Ctrl-D) quits; Ctrl-C drops the line being typed or stops the answer being written, "
        "keeping the history. Thinking never enters the history.",
    )
    chat.add_argument("--system", help="a system message kept at the start of the history")
    add_backend_options(chat)
    add_sampling_options(chat)
    chat.set_defaults(handler=run_chat)


def run(args: argparse.Namespace) -> int:
    """Answer ``args.prompt``: stream it, or print the Generation as JSON."""
    prompt = _read_stdin() if args.prompt == "-" else args.prompt
    settings = settings_from_args(args)
    sampling = sampling_from_args(args, settings.sampling)
    messages = [*_opening(args.system), {"role": "user", "content": prompt}]
    schema = (
        _read_schema(args.json_schema, settings.allow_control_tokens) if args.json_schema else None
    )
    if args.logprobs is not None:
        sampling = sampling.replace(logprobs=True, top_logprobs=args.logprobs)
    with create_backend(settings) as backend:
        if args.logprobs is not None and not args.json and schema is None:
            from qwen_backends.cli.score import token_table

            result = backend.generate(messages, sampling)
            print(result.text)
            print(token_table(result.logprobs or ()))
        elif schema is not None:
            result = backend.generate(messages, sampling, response_format=schema)
            shown = result.to_dict() if args.json else result.parsed
            print(json.dumps(shown, ensure_ascii=False))
        elif args.json:
            print(json.dumps(backend.generate(messages, sampling).to_dict(), ensure_ascii=False))
        else:
            _stream_to_stdout(backend, messages, sampling)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """Read user turns from stdin until ``/exit`` or end of input."""
    settings = settings_from_args(args)
    sampling = sampling_from_args(args, settings.sampling)
    opening = _opening(args.system)
    history = list(opening)
    if sys.stdin is None or sys.stdin.closed:
        raise ConfigurationError(
            "standard input is closed, so chat cannot read your messages; run it in a terminal "
            "or pipe the messages in"
        )
    with create_backend(settings) as backend:
        print(
            f"chatting with {backend.model_name} ({settings.backend}); {RESET} clears the "
            f"history, Ctrl-C stops an answer, {EXIT} or Ctrl-D quits",
            file=sys.stderr,
        )
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:  # as in a shell: drop the line, keep the session
                print(f"\n(Ctrl-C: line dropped; {EXIT} or Ctrl-D quits)", file=sys.stderr)
                continue
            except UnicodeDecodeError:
                print("error: that line is not UTF-8 text; type it again", file=sys.stderr)
                continue
            text = line.strip()
            if not text:
                continue
            if text == EXIT:
                return 0
            if text == RESET:
                history = list(opening)
                print("(history cleared)")
                continue
            history.append({"role": "user", "content": line})
            try:
                answer = strip_thinking(_stream_to_stdout(backend, history, sampling))
            except QwenBackendsError as exc:
                history.pop()
                print(f"\nerror: {exc} ({RESET} starts over)", file=sys.stderr)
                continue
            except KeyboardInterrupt:  # the answer is stopped; the earlier turns stay
                history.pop()
                print("\n(Ctrl-C: answer stopped and not kept; history kept)", file=sys.stderr)
                continue
            if answer.strip():
                history.append({"role": "assistant", "content": answer})
            else:  # an empty turn cannot go back into a chat template
                history.pop()
                print("(empty answer; that turn is not kept)", file=sys.stderr)


def _read_schema(path: str, allow_control_tokens: bool = False) -> dict[str, Any]:
    """The JSON schema in the file at ``path``, checked (``allow_control_tokens``: the setting)."""
    from qwen_backends.structured import ResponseFormat

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the JSON schema file {path!r} ({exc.strerror or exc}); check the path"
        ) from exc
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{path}:{exc.lineno}: the JSON schema file is not JSON ({exc.msg})"
        ) from exc
    if not isinstance(schema, dict):
        raise ConfigurationError(
            f"{path} holds a {type(schema).__name__}; a JSON schema is an object"
        )
    # A bad schema is reported before the model loads.
    ResponseFormat.of(schema, allow_control_tokens=allow_control_tokens)
    return schema


def _read_stdin() -> str:
    """The prompt for ``generate -``: all of standard input, as UTF-8 text."""
    if sys.stdin is None or sys.stdin.closed:
        raise ConfigurationError(
            "the prompt '-' means standard input, which is closed; pipe the prompt in "
            "(echo hi | qwen-backends generate -) or pass it as an argument"
        )
    stream = getattr(sys.stdin, "buffer", None)
    try:
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the prompt from standard input ({exc.strerror or exc}); pass it as an "
            "argument instead"
        ) from None
    return decode_utf8(data, "<stdin>", "the prompt")


def _opening(system: str | None) -> list[Message]:
    return [{"role": "system", "content": system}] if system else []


def _stream_to_stdout(
    backend: ModelBackend, messages: list[Message], sampling: SamplingParams
) -> str:
    pieces: list[str] = []
    with backend.stream(messages, sampling) as stream:  # Ctrl-C closes it: generation stops
        for piece in stream:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)
