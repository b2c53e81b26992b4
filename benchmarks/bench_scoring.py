"""Scoring speed on the ``bench`` checkpoint (hidden 512, 4 layers), measured side by side.

1. ``hf``: ``score()`` of a 512-token continuation against ONE plain forward pass over the same
   tokens (``model(input_ids)``: every position's logits, nothing else). Goal: <= 1.2x.
2. ``hf``: ``score_batch`` of 8 choices of one question against 8 separate ``score()`` calls.
   Goal: >= 3x faster.
3. ``llamacpp`` (an f16 GGUF of the same checkpoint, when llama-cpp-python is installed):
   ``score()`` of the 512-token continuation (logits only at the scored rows) against a plain
   evaluation of the same tokens with no logits (``Llama.eval``): the price of the rows.

Pairs run interleaved (A B, B A, ...) and the figure is the median ratio, so drift on a shared
machine hits both sides alike. Run: ``python benchmarks/bench_scoring.py [--pairs N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

QUESTION = [{"role": "user", "content": "Which of these best describes the weather today?"}]
CHOICES = [
    "It is sunny and warm.",
    "It is raining heavily.",
    "There is snow on the ground.",
    "A strong wind is blowing from the north.",
    "Fog covers the whole valley this morning.",
    "It is cloudy but dry.",
    "A thunderstorm is coming.",
    "The sky is clear and it is cold.",
]


def paired(a: Callable[[], Any], b: Callable[[], Any], pairs: int) -> dict[str, float]:
    """Median seconds of ``a`` and ``b`` and the median of the per-pair ratios a / b."""

    def timed(call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    from paired import interleaved

    timed(a), timed(b)  # warm-up
    a_seconds, b_seconds, ratio = interleaved(lambda _: timed(a), lambda _: timed(b), pairs)
    return {"a_ms": 1000 * a_seconds, "b_ms": 1000 * b_seconds, "ratio": ratio}


def continuation(tokenizer: Any, length: int) -> list[int]:
    """``length`` token ids of English text (the Apache licence, repeated as needed)."""
    from pathlib import Path

    text = Path("/usr/share/common-licenses/Apache-2.0").read_text()
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    while len(ids) < length:
        ids += ids
    return ids[:length]


def bench_hf(model_dir: str, pairs: int) -> None:
    import torch

    from qwen_backends import create_backend

    backend: Any
    with create_backend(backend="hf", model=model_dir, hf={"device": "cpu"}) as backend:
        tokens = continuation(backend.tokenizer, 512)
        prompt = backend.prompt_ids(QUESTION)
        inputs = torch.tensor([prompt + tokens])

        def forward() -> None:
            with torch.inference_mode():
                backend.model(inputs)

        one = paired(lambda: backend.score(QUESTION, tokens), forward, pairs)
        print(
            f"hf score() of 512 tokens: {one['a_ms']:.0f} ms; one forward pass: "
            f"{one['b_ms']:.0f} ms; ratio {one['ratio']:.2f} (goal <= 1.2)"
        )
        batch = paired(
            lambda: [backend.score(QUESTION, choice) for choice in CHOICES],
            lambda: backend.score_batch([(QUESTION, choice) for choice in CHOICES]),
            pairs,
        )
        print(
            f"hf 8 choices: 8 score() calls {batch['a_ms']:.0f} ms; one score_batch "
            f"{batch['b_ms']:.0f} ms; speed-up {batch['ratio']:.2f}x (goal >= 3)"
        )


def bench_llamacpp(pairs: int) -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llamacpp: skipped (llama-cpp-python is not installed)")
        return
    from qwen_backends import create_backend
    from qwen_backends.testing import tiny_gguf

    options = {"n_ctx": 2048, "n_threads": 2, "n_threads_batch": 2}
    model = str(tiny_gguf("f16", "bench"))
    backend: Any
    with create_backend(backend="llamacpp", model=model, llamacpp=options) as backend:
        tokens = continuation(backend.tokenizer, 512)
        prompt = backend.prompt_ids(QUESTION)
        llama = backend.llama

        def plain_eval() -> None:
            llama.reset()
            llama.eval(prompt + tokens)

        result = paired(lambda: backend.score(QUESTION, tokens), plain_eval, pairs)
        print(
            f"llamacpp score() of 512 tokens: {result['a_ms']:.0f} ms; the same tokens "
            f"evaluated without logits: {result['b_ms']:.0f} ms; ratio {result['ratio']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    from qwen_backends.testing import tiny_checkpoint

    bench_hf(str(tiny_checkpoint("bench")), args.pairs)
    bench_llamacpp(args.pairs)


if __name__ == "__main__":
    main()
