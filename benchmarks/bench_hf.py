"""The hf backend side by side with raw transformers, on a random-weight Qwen3 checkpoint.

1. Overhead: ``backend.generate`` against ``model.generate`` on the same model, prompt ids and
   number of new tokens (``min_new_tokens = max_new_tokens`` on the raw side, and the backend's
   answer is checked to have run to ``max_new_tokens``), in interleaved pairs; the median of the
   per-pair ratios. Goal: <= 1.02.
2. Batching: tokens per second of ``generate_batch`` with 8 conversations against 8 sequential
   ``generate`` calls, interleaved. Goal: >= 3x on CPU with the 512-hidden ("bench") checkpoint.

Usage: ``.venv/bin/python benchmarks/bench_hf.py [--size bench] [--pairs 9] [--tokens 32]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from qwen_backends import create_backend
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.transformers_sampling import generation_config_for
from qwen_backends.chat import render_prompt_ids
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint

CONVERSATIONS = [
    "Name three primary colours.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a child in two sentences.",
    "List the planets of the solar system.",
    "Give me a synonym for 'happy'.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
]


def raw_generate(
    backend: HFBackend, prompt: list[int], sampling: SamplingParams, *, min_new_tokens: bool
) -> float:
    """Seconds for a hand-written ``model.generate`` doing the same work.

    With ``min_new_tokens`` the end-of-turn tokens are masked until ``max_new_tokens``; without
    it, the output is only checked to have that length (the same seed gives the same tokens).
    """
    import torch

    config = generation_config_for(
        sampling, eos_token_ids=backend.eos_token_ids, pad_token_id=backend.pad_token_id
    )
    if min_new_tokens:
        config.min_new_tokens = sampling.max_new_tokens
    start = time.perf_counter()
    input_ids = torch.tensor([prompt], device=backend.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sampling.seed or 0)
        output = backend.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
        )
    seconds = time.perf_counter() - start
    assert output.shape[1] - len(prompt) == sampling.max_new_tokens
    return seconds


def overhead(backend: HFBackend, sampling: SamplingParams, pairs: int) -> dict[str, Any]:
    """Interleaved raw/backend pairs; returns medians and the median ratio."""
    prompt = CONVERSATIONS[0]
    prompt_ids = render_prompt_ids(backend.tokenizer, prompt)
    times: dict[str, list[float]] = {"backend": [], "raw_min": [], "raw": []}
    ratios: dict[str, list[float]] = {"raw_min": [], "raw": []}

    def timed_backend() -> float:
        start = time.perf_counter()
        result = backend.generate(prompt, sampling)
        assert result.completion_tokens == sampling.max_new_tokens, result
        return time.perf_counter() - start

    runs = {
        "backend": timed_backend,
        "raw_min": lambda: raw_generate(backend, prompt_ids, sampling, min_new_tokens=True),
        "raw": lambda: raw_generate(backend, prompt_ids, sampling, min_new_tokens=False),
    }
    for run in runs.values():  # warm-up
        run()
    order = list(runs)
    for index in range(pairs):
        # Rotate the order so drift on a shared machine hits every side alike.
        pair = {name: runs[name]() for name in order[index % 3 :] + order[: index % 3]}
        for name, seconds in pair.items():
            times[name].append(seconds)
        for name in ratios:
            ratios[name].append(pair["backend"] / pair[name])
    return {
        **{f"{name}_ms": 1000 * statistics.median(values) for name, values in times.items()},
        **{f"ratio_{name}": statistics.median(values) for name, values in ratios.items()},
    }


def batching(backend: HFBackend, sampling: SamplingParams, rounds: int) -> dict[str, Any]:
    """Tokens/s of one ``generate_batch`` of 8 against 8 sequential ``generate`` calls."""
    sequential_rates, batch_rates = [], []
    backend.generate_batch(CONVERSATIONS[:2], sampling)  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        tokens = sum(backend.generate(c, sampling).completion_tokens for c in CONVERSATIONS)
        sequential_rates.append(tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        results = backend.generate_batch(CONVERSATIONS, sampling)
        tokens = sum(result.completion_tokens for result in results)
        batch_rates.append(tokens / (time.perf_counter() - start))
    sequential, batch = statistics.median(sequential_rates), statistics.median(batch_rates)
    return {"sequential_tps": sequential, "batch_tps": batch, "speedup": batch / sequential}


def main() -> None:
    """Run both measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", help="tiny, vllm or bench (512 hidden)")
    parser.add_argument("--pairs", type=int, default=9, help="interleaved overhead rounds")
    parser.add_argument("--rounds", type=int, default=3, help="batching rounds")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    args = parser.parse_args()

    import torch

    backend = create_backend(backend="hf", model=str(tiny_checkpoint(args.size)))
    assert isinstance(backend, HFBackend)
    print(f"checkpoint {args.size}, torch threads {torch.get_num_threads()}, {args.tokens} tokens")
    for label, sampling in (
        ("default sampling (0.7/0.8/20, seed 1)", SamplingParams(seed=1)),
        ("greedy", SamplingParams.preset("greedy")),
    ):
        figures = overhead(backend, sampling.replace(max_new_tokens=args.tokens), args.pairs)
        print(
            f"overhead, {label}: backend {figures['backend_ms']:.1f} ms; raw with min_new_tokens "
            f"{figures['raw_min_ms']:.1f} ms (ratio {figures['ratio_raw_min']:.3f}); "
            f"raw without it {figures['raw_ms']:.1f} ms (ratio {figures['ratio_raw']:.3f}); "
            "goal <= 1.02"
        )
    for label, sampling in (
        ("default sampling", SamplingParams(seed=1)),
        ("greedy", SamplingParams.preset("greedy")),
    ):
        figures = batching(backend, sampling.replace(max_new_tokens=args.tokens), args.rounds)
        print(
            f"batching, 8 conversations, {label}: sequential {figures['sequential_tps']:.1f} "
            f"tokens/s, generate_batch {figures['batch_tps']:.1f} tokens/s, speed-up "
            f"{figures['speedup']:.2f}x (goal >= 3x)"
        )


if __name__ == "__main__":
    main()
