"""Check that the configured Qwen3 model loads with transformers and answers one prompt.

Usage::

    python scripts/test_qwen3_loading.py                      # the configured model (Qwen/Qwen3-4B)
    python scripts/test_qwen3_loading.py --model ./Qwen3-4B   # a local directory
    python scripts/test_qwen3_loading.py --tokenizer-only     # no weights: tokenizer + template

Settings come from the usual sources (QWEN_* variables, .env, configs/default.yaml); the
backend is always ``hf``. Exit status 0 on success, 1 or 2 with a one-line error otherwise.
"""

from __future__ import annotations

import argparse
import sys

from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import ConfigurationError, QwenBackendsError
from qwen_backends.factory import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings
from qwen_backends.tokenizer import load_tokenizer

DEFAULT_PROMPT = "In one sentence, what does a tokenizer do?"


def main(argv: list[str] | None = None) -> int:
    """Load, render or generate, and report what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local directory (default: the configured one)")
    parser.add_argument("--tokenizer-only", action="store_true", help="load only the tokenizer")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message to answer")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        overrides = {"backend": "hf", **({"model": args.model} if args.model else {})}
        settings = Settings(**overrides)
        if args.tokenizer_only:
            return _tokenizer_only(settings, args.prompt)
        return _full(settings, args.prompt, args.max_new_tokens)
    except QwenBackendsError as exc:
        print(f"test_qwen3_loading: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigurationError) else 1


def _tokenizer_only(settings: Settings, prompt: str) -> int:
    hf = settings.hf
    tokenizer = load_tokenizer(
        settings.model_name,
        revision=hf.revision,
        token=hf.token.get_secret_value() if hf.token is not None else None,
        local_files_only=hf.local_files_only,
    )
    ids = render_prompt_ids(tokenizer, prompt)
    print(f"tokenizer of {settings.model_name}: {len(tokenizer):,} tokens")
    print(f"non-thinking prompt: {len(ids)} tokens: {ids}")
    return 0


def _full(settings: Settings, prompt: str, max_new_tokens: int) -> int:
    with create_backend(settings) as backend:
        model = getattr(backend, "model", None)
        device = getattr(backend, "device", "?")
        dtype = getattr(model, "dtype", "?")
        print(f"loaded {backend.model_name} on {device} ({dtype})")
        result = backend.generate(prompt, SamplingParams(max_new_tokens=max_new_tokens))
    print(f"prompt: {prompt}")
    print(f"answer: {result.text}")
    print(
        f"{result.prompt_tokens} prompt + {result.completion_tokens} new tokens, "
        f"finish_reason={result.finish_reason}, {result.tokens_per_second:.1f} tokens/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
