"""The hf backend side by side with raw transformers, on a random-weight Qwen3 checkpoint.

Every figure is per generated token and a median of per-round ratios; the sides of a round run in
rotating order so drift on a shared machine hits them alike.

1. Overhead: ``backend.generate`` against a hand-written ``model.generate`` on the same model and
   prompt ids with the same ``GenerationConfig`` as transformers would sample with by itself
   (``generation_config_for(..., native_sampling=True)``: ``do_sample`` and its warpers) and no
   handicap (no ``min_new_tokens``). Sampled (Qwen3's 0.7 / 0.8 / 20 / 0, seed 1) goal <= 0.80,
   greedy goal <= 1.01.
2. Sampled against greedy, both through the backend: goal <= 1.05.
3. ``english_only`` against unconstrained (sampled), both through the backend: goal <= 1.01.
4. ``logprobs=True, top_logprobs=5`` against off (sampled), both through the backend: goal
   <= 1.05. 1,000 stop strings that never occur against none (sampled), both through the
   backend; and what transformers' ``StopStringCriteria`` costs to build per string, for
   reference. Also
   ``stream`` against ``generate`` (same seed, so the same tokens).
5. Batching: tokens per second of one ``generate_batch`` of 8 conversations against 8 sequential
   ``generate`` calls, sampled (goal >= 3.5x) and greedy.
6. The floor: a bare loop of forward passes and ``argmax`` (no processors, no checks, no text)
   against raw sampling and against the backend, i.e. how far below transformers' own forward
   pass a goal asks the backend to go.

Usage: ``.venv/bin/python benchmarks/bench_hf.py [--size bench] [--rounds 9] [--tokens 32]
[--threads 1]`` (docs/benchmarks.md uses ``--threads 2 --rounds 15 --batch-rounds 3``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
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

#: Stop strings that the random checkpoint never produces (so every answer runs to the end).
STOPS = tuple(f"<<stop marker {i:04d}>>" for i in range(1_000))

#: One round's measurement: (wall seconds, CPU seconds of this process, tokens generated).
Run = Callable[[], tuple[float, float, int]]


class Clock:
    """Wall and process CPU time since creation (CPU time is the steadier figure on a shared
    machine: time spent waiting for a core is not in it)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        """``(wall, cpu)`` seconds elapsed."""
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def raw_generate(backend: HFBackend, prompt: list[int], sampling: SamplingParams) -> Run:
    """A hand-written ``model.generate`` with transformers' own sampling, same seed handling."""
    import torch

    config = generation_config_for(
        sampling,
        eos_token_ids=backend.eos_token_ids,
        pad_token_id=backend.pad_token_id,
        native_sampling=True,
    )

    def run() -> tuple[float, float, int]:
        clock = Clock()
        input_ids = torch.tensor([prompt], device=backend.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampling.seed or 0)
            generate: Any = backend.model.generate
            output = generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
            )
        return (*clock.read(), output.shape[1] - len(prompt))

    return run


def bare_forward(backend: HFBackend, prompt: list[int], tokens: int) -> Run:
    """The floor: ``tokens`` forward passes and ``argmax`` with a ``DynamicCache``, nothing else
    (no processors, no stopping checks, no text). What any decode loop over this model and
    transformers' forward costs at least."""
    import torch
    from transformers import DynamicCache

    model = backend.model

    def run() -> tuple[float, float, int]:
        clock = Clock()
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            inputs = torch.tensor([prompt], device=backend.device)
            for _ in range(tokens):
                output = model(
                    input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                inputs = output.logits[:, -1].argmax(dim=-1, keepdim=True)
        return (*clock.read(), tokens)

    return run


def backend_generate(backend: HFBackend, prompt: str, sampling: SamplingParams) -> Run:
    """``backend.generate`` timed from the call to the returned ``Generation``."""

    def run() -> tuple[float, float, int]:
        clock = Clock()
        result = backend.generate(prompt, sampling)
        return (*clock.read(), result.completion_tokens)

    return run


def backend_stream(backend: HFBackend, prompt: str, sampling: SamplingParams) -> Run:
    """``stream`` consumed to the end; the same seed gives ``generate``'s tokens, so its count."""
    tokens = backend.generate(prompt, sampling).completion_tokens

    def run() -> tuple[float, float, int]:
        clock = Clock()
        for _ in backend.stream(prompt, sampling):
            pass
        return (*clock.read(), tokens)

    return run


def per_token_rounds(
    runs: dict[str, Run], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per generated token of every side, ``rounds`` times, in rotating
    order."""
    for run in runs.values():  # warm-up
        run()
    names = list(runs)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, used, tokens = runs[name]()
            wall[name].append(elapsed / tokens)
            cpu[name].append(used / tokens)
    return wall, cpu


def median_ratio(values: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of ``top / bottom``."""
    return statistics.median(a / b for a, b in zip(values[top], values[bottom], strict=True))


def batching(backend: HFBackend, sampling: SamplingParams, rounds: int) -> dict[str, float]:
    """Tokens/s (wall) of one ``generate_batch`` of 8 against 8 sequential ``generate`` calls,
    and the median speed-up by wall and by CPU time."""
    sequential_rates, batch_rates, speedups, cpu_speedups = [], [], [], []
    backend.generate_batch(CONVERSATIONS[:2], sampling)  # warm-up
    for _ in range(rounds):
        clock = Clock()
        tokens = sum(backend.generate(c, sampling).completion_tokens for c in CONVERSATIONS)
        wall, cpu = clock.read()
        sequential_rates.append(tokens / wall)
        sequential_cpu = tokens / cpu
        clock = Clock()
        results = backend.generate_batch(CONVERSATIONS, sampling)
        tokens = sum(result.completion_tokens for result in results)
        wall, cpu = clock.read()
        batch_rates.append(tokens / wall)
        speedups.append(batch_rates[-1] / sequential_rates[-1])
        cpu_speedups.append(tokens / cpu / sequential_cpu)
    return {
        "sequential_tps": statistics.median(sequential_rates),
        "batch_tps": statistics.median(batch_rates),
        "speedup": statistics.median(speedups),
        "cpu_speedup": statistics.median(cpu_speedups),
    }


def stop_string_build_seconds(backend: HFBackend, count: int) -> float:
    """Seconds transformers' ``StopStringCriteria`` takes to build for ``count`` strings."""
    from transformers import StopStringCriteria

    start = time.perf_counter()
    StopStringCriteria(backend.tokenizer, list(STOPS[:count]))
    return time.perf_counter() - start


def main() -> None:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", help="tiny, vllm or bench (512 hidden)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved per-token rounds")
    parser.add_argument("--batch-rounds", type=int, default=3, help="batching rounds")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--stop-build", type=int, default=2, help="strings for the StopStringCriteria reference"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    backend = create_backend(backend="hf", model=str(tiny_checkpoint(args.size)))
    assert isinstance(backend, HFBackend)
    print(f"checkpoint {args.size}, torch threads {torch.get_num_threads()}, {args.tokens} tokens")
    sampled = SamplingParams(seed=1, max_new_tokens=args.tokens)
    greedy = SamplingParams.preset("greedy", max_new_tokens=args.tokens)
    prompt = CONVERSATIONS[0]
    prompt_ids = render_prompt_ids(backend.tokenizer, prompt)
    runs = {
        "backend sampled": backend_generate(backend, prompt, sampled),
        "raw sampled": raw_generate(backend, prompt_ids, sampled),
        "backend greedy": backend_generate(backend, prompt, greedy),
        "raw greedy": raw_generate(backend, prompt_ids, greedy),
        "backend english_only": backend_generate(
            backend, prompt, sampled.replace(english_only=True)
        ),
        "backend 1,000 stops": backend_generate(backend, prompt, sampled.replace(stop=STOPS)),
        "backend logprobs top 5": backend_generate(
            backend, prompt, sampled.replace(logprobs=True, top_logprobs=5)
        ),
        "backend stream sampled": backend_stream(backend, prompt, sampled),
        "bare forward + argmax": bare_forward(backend, prompt_ids, args.tokens),
    }
    wall, cpu = per_token_rounds(runs, args.rounds)
    print(f"\nper generated token, median of {args.rounds} rounds (wall / CPU):")
    for name in runs:
        print(
            f"  {name:<24} {1000 * statistics.median(wall[name]):8.2f} ms "
            f"{1000 * statistics.median(cpu[name]):8.2f} ms"
        )
    rows = [
        ("backend / raw, sampled", "backend sampled", "raw sampled", "<= 0.80"),
        ("backend / raw, greedy", "backend greedy", "raw greedy", "<= 1.01"),
        ("sampled / greedy, backend", "backend sampled", "backend greedy", "<= 1.05"),
        ("sampled / greedy, raw", "raw sampled", "raw greedy", ""),
        ("english_only / unconstrained", "backend english_only", "backend sampled", "<= 1.01"),
        ("1,000 stop strings / none", "backend 1,000 stops", "backend sampled", ""),
        ("logprobs top 5 / off", "backend logprobs top 5", "backend sampled", "<= 1.05"),
        ("stream / generate, sampled", "backend stream sampled", "backend sampled", ""),
        ("bare forward / raw sampled", "bare forward + argmax", "raw sampled", "(the floor)"),
        ("backend greedy / bare forward", "backend greedy", "bare forward + argmax", ""),
        ("backend sampled / bare forward", "backend sampled", "bare forward + argmax", ""),
    ]
    print("\nratios (median of per-round ratios, per generated token; wall / CPU):")
    for label, top, bottom, goal in rows:
        print(
            f"  {label:<30} {median_ratio(wall, top, bottom):.3f} "
            f"{median_ratio(cpu, top, bottom):.3f}"
            + (f"  (goal {goal})" if goal.startswith("<") or goal.startswith(">") else "")
            + (f"  {goal}" if goal.startswith("(") else "")
        )

    if args.stop_build:
        build = stop_string_build_seconds(backend, args.stop_build)
        print(
            f"\ntransformers' StopStringCriteria for {args.stop_build} strings: {build:.2f} s "
            f"to build ({build / args.stop_build:.2f} s per string; 1,000 strings ~ "
            f"{1000 * build / args.stop_build / 60:.0f} min), against nothing for the backend's "
            "text-level criterion"
        )

    for label, sampling, goal in (
        ("sampled", sampled, ">= 3.5x"),
        ("greedy", greedy, ""),
    ):
        figures: dict[str, Any] = batching(backend, sampling, args.batch_rounds)
        print(
            f"batching, 8 conversations, {label}: sequential {figures['sequential_tps']:.1f} "
            f"tokens/s, generate_batch {figures['batch_tps']:.1f} tokens/s, speed-up "
            f"{figures['speedup']:.2f}x (by CPU time {figures['cpu_speedup']:.2f}x)"
            + (f" (goal {goal})" if goal else "")
        )
    backend.close()


if __name__ == "__main__":
    main()
