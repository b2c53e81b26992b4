"""vLLM backend: 8 concurrent requests vs the hf backend, and the backend's per-request overhead.

Side by side in one run, on one random-weight Qwen3 checkpoint (``qwen_backends.testing``):

1. throughput -- the same conversations and token counts answered by the ``vllm`` backend
   (``generate_batch``: concurrent requests, batched by the server's scheduler) and by the ``hf``
   backend (``generate_batch``: one padded batch in this process); generated tokens per second
   and the ratio vllm / hf;
2. overhead -- one request at a time, the ``vllm`` backend's ``generate`` vs a raw ``openai``
   call with the identical request body, interleaved; the ratio of median latencies
   (goal <= 1.05);
3. english_only -- the cost of sending the English tier (~97k ids) as ``allowed_token_ids``
   with every request: median latency with and without it.

Starts a vLLM server from the vLLM environment (``scripts/setup.sh --with-vllm``) unless
``--base-url`` names one that already serves the checkpoint::

    .venv/bin/python benchmarks/bench_vllm.py               # "bench" checkpoint (hidden 512)
    .venv/bin/python benchmarks/bench_vllm.py --size vllm   # the test checkpoint (hidden 128)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from qwen_backends.backends.vllm import VLLMBackend, build_request
from qwen_backends.chat import validate_messages
from qwen_backends.factory import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))
from vllm_server import VLLMServer

PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain recursion to a child.",
    "List three prime numbers.",
    "Translate 'good morning' into German.",
    "Why is the sky blue?",
    "Give me a name for a cat.",
    "Summarise the plot of Hamlet in one sentence.",
]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="bench", help="test checkpoint size (default: bench)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per answer (64)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per backend (3)")
    parser.add_argument("--overhead-calls", type=int, default=30, help="calls per side (30)")
    parser.add_argument("--overhead-tokens", type=int, default=16, help="tokens per call (16)")
    parser.add_argument("--base-url", help="use this running vLLM server instead of starting one")
    return parser.parse_args(argv)


def _throughput(backend: Any, sampling: SamplingParams, rounds: int) -> tuple[float, int, float]:
    """Best-of-``rounds`` (tokens/s, generated tokens, seconds) for the 8 prompts at once."""
    backend.generate_batch(PROMPTS[:2], sampling.replace(max_new_tokens=4))  # warm-up
    best: tuple[float, int, float] = (0.0, 0, 0.0)
    for _ in range(rounds):
        started = time.perf_counter()
        results = backend.generate_batch(PROMPTS, sampling)
        seconds = time.perf_counter() - started
        tokens = sum(result.completion_tokens for result in results)
        best = max(best, (tokens / seconds, tokens, seconds))
    return best


def _overhead(backend: VLLMBackend, calls: int, tokens: int) -> tuple[float, float]:
    """Median seconds per call: (backend.generate, raw openai call with the same body)."""
    from openai import OpenAI

    sampling = SamplingParams(temperature=0.7, top_k=20, max_new_tokens=tokens, seed=1)
    request = build_request(
        validate_messages(PROMPTS[0]), sampling, model=backend.model_name, stream=False
    )
    raw = OpenAI(base_url=backend.settings.vllm.base_url, api_key="EMPTY", max_retries=0)
    backend_times: list[float] = []
    raw_times: list[float] = []
    try:
        for index in range(calls + 2):
            # Alternate who goes first so drift on the shared machine hits both sides alike.
            order = ("backend", "raw") if index % 2 else ("raw", "backend")
            for side in order:
                started = time.perf_counter()
                if side == "backend":
                    backend.generate(PROMPTS[0], sampling)
                else:
                    response = raw.chat.completions.create(**request)
                    _ = response.choices[0].message.content, response.usage
                elapsed = time.perf_counter() - started
                if index >= 2:  # the first two rounds warm connections and caches
                    (backend_times if side == "backend" else raw_times).append(elapsed)
    finally:
        raw.close()
    return statistics.median(backend_times), statistics.median(raw_times)


def _english_only_cost(backend: VLLMBackend, calls: int, tokens: int) -> tuple[float, float]:
    """Median seconds per ``generate``: (english_only, unrestricted), interleaved."""
    sampling = SamplingParams(temperature=0.7, max_new_tokens=tokens, seed=1)
    backend.generate(PROMPTS[0], sampling.replace(english_only=True))  # loads the tokenizer
    english: list[float] = []
    free: list[float] = []
    for _ in range(calls):
        for restricted, times in ((True, english), (False, free)):
            started = time.perf_counter()
            backend.generate(PROMPTS[0], sampling.replace(english_only=restricted))
            times.append(time.perf_counter() - started)
    return statistics.median(english), statistics.median(free)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print a report."""
    args = _parse(argv)
    checkpoint = str(tiny_checkpoint(args.size))
    sampling = SamplingParams(
        temperature=0.7, top_p=0.8, top_k=20, max_new_tokens=args.new_tokens, seed=0
    )
    print(f"checkpoint: {args.size} ({checkpoint})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")

    server = None
    base_url = args.base_url
    if base_url is None:
        server = VLLMServer(checkpoint, startup_timeout=600).start()
        base_url = server.base_url
        print(f"vLLM server started in {server.startup_seconds:.0f} s at {base_url}")
    try:
        with create_backend(backend="vllm", model=checkpoint, vllm={"base_url": base_url}) as vllm:
            assert isinstance(vllm, VLLMBackend)
            v_tps, v_tokens, v_seconds = _throughput(vllm, sampling, args.rounds)
            backend_s, raw_s = _overhead(vllm, args.overhead_calls, args.overhead_tokens)
            english_s, free_s = _english_only_cost(vllm, 10, args.overhead_tokens)
    finally:
        if server is not None:
            server.stop()
    # The server is gone before hf runs, so the two never compete for the cores.
    with create_backend(backend="hf", model=checkpoint, hf={"device": "cpu"}) as hf:
        h_tps, h_tokens, h_seconds = _throughput(hf, sampling, args.rounds)

    print(f"\n8 concurrent requests x {args.new_tokens} new tokens (best of {args.rounds}):")
    print(f"  vllm backend  {v_tokens:4d} tokens in {v_seconds:6.2f} s = {v_tps:7.1f} tok/s")
    print(f"  hf backend    {h_tokens:4d} tokens in {h_seconds:6.2f} s = {h_tps:7.1f} tok/s")
    print(f"  throughput ratio vllm / hf = {v_tps / h_tps:.2f}")
    print(f"\nper-request overhead, {args.overhead_tokens} new tokens, median of "
          f"{args.overhead_calls} interleaved calls:")  # fmt: skip
    print(f"  vllm backend generate {backend_s * 1000:7.1f} ms")
    print(f"  raw openai call       {raw_s * 1000:7.1f} ms")
    ratio = backend_s / raw_s
    print(f"  overhead ratio = {ratio:.3f} (goal <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'})")
    print(f"\nenglish_only, {args.overhead_tokens} new tokens, median of 10 interleaved calls:")
    print(f"  with allowed_token_ids {english_s * 1000:7.1f} ms")
    print(f"  unrestricted           {free_s * 1000:7.1f} ms")
    print(f"  ratio = {english_s / free_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
