"""The mlx backend side by side with raw mlx-lm, on a random-weight Qwen3 checkpoint.

Overhead: ``backend.generate`` against mlx-lm's own generation loop (``stream_generate``, which
``mlx_lm.generate`` wraps, run to the end so the number of new tokens can be checked) on the same
model, the same prompt ids and the same number of new tokens, with mlx-lm's own
``make_sampler`` on the raw side; interleaved pairs, rotated so drift on a shared machine hits
both sides alike; the median of the per-pair ratios, which is the per-token ratio since both
sides generate exactly ``--tokens`` tokens; the same for process CPU time, steadier on a shared
machine. Goal: <= 1.03.

Structured output: ``response_format`` (a bounded JSON schema, enforced by the llguidance mask)
against the same call without it, per generated token (the answers differ in length), interleaved;
the hf backend's figure for the same mask is 1.02 (docs/benchmarks.md).

Runs wherever MLX runs; on Linux that is MLX's CPU build (Apple GPU figures must be measured on a
Mac). Usage: ``.venv/bin/python benchmarks/bench_mlx.py [--size bench] [--pairs 9] [--tokens 32]
[--only overhead|structured|logprobs]``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from typing import Any

from qwen_backends import create_backend
from qwen_backends.backends.mlx import MLXBackend
from qwen_backends.chat import render_prompt_ids
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint

PROMPT = "Name three primary colours."


def raw_generate(
    backend: MLXBackend, prompt: list[int], sampling: SamplingParams
) -> tuple[float, float]:
    """Wall and CPU seconds for mlx-lm's own loop with its own sampler doing the same work."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(
        temp=sampling.temperature, top_p=sampling.top_p, min_p=sampling.min_p, top_k=sampling.top_k
    )
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    start, cpu = time.perf_counter(), time.process_time()
    responses = stream_generate(
        backend.model,
        backend.wrapper,
        mx.array(prompt),
        max_tokens=sampling.max_new_tokens,
        sampler=sampler,
    )
    last = collections.deque(responses, maxlen=1)[0]
    seconds = time.perf_counter() - start, time.process_time() - cpu
    assert last.generation_tokens == sampling.max_new_tokens, last
    return seconds


def overhead(backend: MLXBackend, sampling: SamplingParams, pairs: int) -> dict[str, float]:
    """Interleaved raw/backend pairs; returns medians (ms per token) and the median ratio."""
    prompt_ids = render_prompt_ids(backend.tokenizer, PROMPT)

    def timed_backend() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        result = backend.generate(PROMPT, sampling)
        assert result.completion_tokens == sampling.max_new_tokens, result
        return time.perf_counter() - start, time.process_time() - cpu

    runs = {"backend": timed_backend, "raw": lambda: raw_generate(backend, prompt_ids, sampling)}
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {"backend": [], "raw": []}
    ratios, cpu_ratios = [], []
    for index in range(pairs):
        order = ["backend", "raw"] if index % 2 == 0 else ["raw", "backend"]
        pair = {name: runs[name]() for name in order}
        for name, (seconds, _) in pair.items():
            times[name].append(seconds)
        ratios.append(pair["backend"][0] / pair["raw"][0])
        cpu_ratios.append(pair["backend"][1] / pair["raw"][1])
    per_token = 1000 / sampling.max_new_tokens
    return {
        "backend_ms_per_token": per_token * statistics.median(times["backend"]),
        "raw_ms_per_token": per_token * statistics.median(times["raw"]),
        "ratio": statistics.median(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
    }


#: A bounded schema: whatever the random weights, the grammar can finish it.
PICK = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "note": {"type": "string", "maxLength": 40},
    },
    "required": ["colour", "count", "note"],
    "additionalProperties": False,
}


def structured(backend: MLXBackend, pairs: int, tokens: int) -> dict[str, float]:
    """Per-token wall time with ``response_format`` against without, interleaved pairs."""
    from paired import per_token_pairs

    def side(**extra: Any) -> Any:
        return lambda index: backend.generate(
            PROMPT, SamplingParams(seed=1, max_new_tokens=tokens), **extra
        )

    figures = per_token_pairs(side(response_format=PICK), side(), pairs)
    return {
        "constrained_ms": figures["option_ms_per_token"],
        "free_ms": figures["baseline_ms_per_token"],
        "ratio": figures["ratio"],
    }


def text_work(backend: MLXBackend, ids: list[int], repeats: int = 200) -> float:
    """Microseconds per token of the backend's own text work (decode, stop strings, thinking)."""
    from qwen_backends.backends.token_loop import IncrementalDecoder
    from qwen_backends.thinking import TextPipeline

    start = time.perf_counter()
    for _ in range(repeats):
        decoder, pipeline = IncrementalDecoder(backend.tokenizer), TextPipeline(("###",))
        for token in ids:
            pipeline.feed(decoder.add(token))
        pipeline.feed(decoder.flush())
        pipeline.flush()
    return 1e6 * (time.perf_counter() - start) / (repeats * len(ids))


def main() -> None:
    """Measure the overhead for default sampling and greedy and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", help="tiny, vllm or bench (512 hidden)")
    parser.add_argument("--pairs", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument("--only", choices=("overhead", "structured", "logprobs"), default=None)
    args = parser.parse_args()
    wanted = {args.only} if args.only else {"overhead", "structured", "logprobs"}

    import mlx.core as mx

    backend = create_backend(backend="mlx", model=str(tiny_checkpoint(args.size)))
    assert isinstance(backend, MLXBackend)
    print(
        f"checkpoint {args.size}, MLX {getattr(mx, '__version__', '?')} on {mx.default_device()}, "
        f"{args.tokens} tokens"
    )
    overhead_runs = (
        ("default sampling (0.7/0.8/20, seed 1)", SamplingParams(seed=1)),
        ("greedy", SamplingParams.preset("greedy")),
    )
    for label, sampling in overhead_runs if "overhead" in wanted else ():
        figures = overhead(backend, sampling.replace(max_new_tokens=args.tokens), args.pairs)
        print(
            f"overhead, {label}: backend {figures['backend_ms_per_token']:.2f} ms/token, raw "
            f"mlx-lm {figures['raw_ms_per_token']:.2f} ms/token, ratio {figures['ratio']:.3f} "
            f"(CPU time {figures['cpu_ratio']:.3f}; goal <= 1.03)"
        )
    if "structured" in wanted:
        figures = structured(backend, args.pairs, 2 * args.tokens)
        print(
            f"response_format (llguidance mask) / unconstrained, per token: "
            f"{figures['constrained_ms']:.2f} / {figures['free_ms']:.2f} ms, ratio "
            f"{figures['ratio']:.3f}"
        )
    if "logprobs" not in wanted:
        return
    from paired import per_token_pairs

    def side(**extra: Any) -> Any:
        sampling = SamplingParams(seed=1, max_new_tokens=args.tokens, **extra)
        return lambda index: backend.generate(PROMPT, sampling.replace(seed=index))

    figures = per_token_pairs(side(logprobs=True, top_logprobs=5), side(), args.pairs)
    print(
        f"logprobs top 5 / off, per token: {figures['option_ms_per_token']:.2f} / "
        f"{figures['baseline_ms_per_token']:.2f} ms, ratio {figures['ratio']:.3f} (goal <= 1.05)"
    )
    sample = backend.tokenizer(
        "Red, yellow and blue are the three primary colours of paint; red, green and blue of "
        "light. Ünïcödé 中文 🙂 too.",
        add_special_tokens=False,
    )["input_ids"]
    print(
        f"backend's own text work per token (decode + stop strings + thinking filter): "
        f"{text_work(backend, sample):.1f} us"
    )
    backend.close()


if __name__ == "__main__":
    main()
