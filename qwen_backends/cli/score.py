"""``qwen-backends score``: the log-likelihood of a continuation, or the perplexity of a text file.

- ``score PROMPT CONTINUATION`` -- CONTINUATION scored as the assistant's answer to PROMPT
  (the non-thinking chat prompt, as ``generate`` would answer); ``--raw`` scores it right after
  PROMPT as plain text, with no chat template;
- ``score --file TEXT`` -- the whole file as one document, no chat template, in windows of
  ``--window`` tokens when it is longer (the perplexity of English text).

``--tokens`` adds one line per token; ``--json`` prints the whole
:class:`~qwen_backends.results.Score`. :func:`token_table` also serves
``generate --logprobs N``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qwen_backends._files import read_text
from qwen_backends.cli._options import add_backend_options, settings_from_args
from qwen_backends.errors import ConfigurationError
from qwen_backends.factory import create_backend

if TYPE_CHECKING:
    from qwen_backends.results import Score, ScoredToken, TokenLogprob

__all__ = ["register", "run", "token_table"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``score`` subcommand."""
    parser = subparsers.add_parser(
        "score",
        help="log-likelihood of a continuation, or perplexity of a text file",
        description="Score given text with the configured backend (nothing is generated): "
        "CONTINUATION as the answer to PROMPT, or a whole text file (--file).",
    )
    parser.add_argument("text", nargs="*", metavar="PROMPT CONTINUATION", help="two texts")
    parser.add_argument("--file", help="score this UTF-8 text file as one document")
    parser.add_argument("--system", help="a system message before PROMPT")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="score CONTINUATION right after PROMPT as plain text (no chat template)",
    )
    parser.add_argument(
        "--window", type=int, help="tokens per window for --file (default: the context window)"
    )
    parser.add_argument("--tokens", action="store_true", help="also print every token")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_backend_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Score what ``args`` names and print it."""
    if args.file is not None:
        if args.text:
            raise ConfigurationError("give either --file or PROMPT CONTINUATION, not both")
        document = read_text(args.file, "the text file")
        if not document.strip():
            raise ConfigurationError(f"{args.file} is empty; give a file with text to score")
    elif len(args.text) != 2:
        raise ConfigurationError(
            "give PROMPT and CONTINUATION (two arguments), or --file TEXT for a document"
        )
    elif not args.text[1]:  # refused before the model loads
        raise ConfigurationError(
            "the continuation is empty; give at least one token of text to score"
        )
    settings = settings_from_args(args)
    with create_backend(settings) as backend:
        if args.file is not None:
            score = backend.score_text(document, window=args.window)
        elif args.raw:
            score = backend.score_text(args.text[1], context=args.text[0])
        else:
            system = [{"role": "system", "content": args.system}] if args.system else []
            messages = [*system, {"role": "user", "content": args.text[0]}]
            score = backend.score(messages, args.text[1])
    if args.json:
        print(json.dumps(score.to_dict(), ensure_ascii=False))
        return 0
    print(summary_line(score))
    if args.tokens:
        print(token_table(score.tokens))
    return 0


def summary_line(score: Score) -> str:
    """``log-likelihood -12.3456 over 5 tokens, perplexity 11.84, greedy: no``."""
    return (
        f"log-likelihood {score.logprob:.4f} over {score.num_tokens} tokens, "
        f"perplexity {score.perplexity:.2f}, greedy: {'yes' if score.greedy else 'no'}"
    )


def token_table(tokens: Sequence[ScoredToken | TokenLogprob]) -> str:
    """One line per token: its text (quoted), probability, log-probability and alternatives."""
    lines = []
    for token in tokens:
        best = ", ".join(f"{alt.token!r} {_percent(alt.logprob)}" for alt in token.top)
        mark = "" if getattr(token, "greedy", True) else "  (not greedy)"
        line = f"{token.token!r:<20} {_percent(token.logprob):>7}  {token.logprob:9.4f}{mark}"
        lines.append(f"{line}  [{best}]" if best else line)
    return "\n".join(lines)


def _percent(logprob: float) -> str:
    return f"{100 * math.exp(logprob):.2f}%"
