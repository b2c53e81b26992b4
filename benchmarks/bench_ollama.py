"""Benchmark the ollama backend against the loopback Ollama stand-in (no real server needed).

Two measurements, side by side in one run:

1. Overhead: ``backend.generate`` vs a raw ``ollama.Client.chat`` call that sends the very same
   request (think=False, the same options), interleaved call by call. Reported as the ratio of
   the medians (goal <= 1.05).
2. Concurrency: 8 ``agenerate`` calls awaited one after another vs the same 8 gathered, against
   a server that waits a fixed time before each answer (goal >= 6x). ``generate_batch`` (worker
   threads) vs 8 sequential ``generate`` calls is shown too.

The stand-in produces tokens with a random-weight Qwen3 checkpoint (``--size``; ``tiny`` by
default), so each answer costs real work on this machine.

The stand-in computes one answer at a time (like ``OLLAMA_NUM_PARALLEL=1``), so the
concurrency run keeps answers to one token: the fixed latency, not this machine's cores, is what
concurrent requests can overlap.

Run: ``.venv/bin/python benchmarks/bench_ollama.py [--calls 40] [--latency 0.5]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))

from ollama_server import INSTRUCT_TAG, OllamaServer, TinyQwen

from qwen_backends import SamplingParams, create_backend
from qwen_backends.backends.ollama import OllamaBackend, chat_request
from qwen_backends.testing import tiny_checkpoint

MESSAGES = [{"role": "user", "content": "Give me one short sentence about rivers."}]


def overhead(backend: OllamaBackend, calls: int, sampling: SamplingParams) -> dict[str, float]:
    """Median seconds of raw ``Client.chat`` and of ``backend.generate``, interleaved."""
    import ollama

    raw_client = ollama.Client(host=backend.host, timeout=backend.settings.ollama.timeout)
    request = chat_request(INSTRUCT_TAG, MESSAGES, sampling, backend.settings.ollama, stream=False)
    backend.generate(MESSAGES, sampling)  # first-use checks and warm-up, not timed
    raw_client.chat(**request)
    raw, wrapped = [], []
    for index in range(calls):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            if which == 0:
                raw_client.chat(**request)
                raw.append(time.perf_counter() - start)
            else:
                backend.generate(MESSAGES, sampling)
                wrapped.append(time.perf_counter() - start)
    raw_client.close()
    return {"raw": statistics.median(raw), "backend": statistics.median(wrapped)}


def concurrency(backend: OllamaBackend, sampling: SamplingParams, n: int) -> dict[str, float]:
    """Seconds for ``n`` agenerate calls one by one, gathered, and for generate_batch."""

    async def sequential() -> None:
        for _ in range(n):
            await backend.agenerate(MESSAGES, sampling)

    async def gathered() -> None:
        await asyncio.gather(*(backend.agenerate(MESSAGES, sampling) for _ in range(n)))

    timings: dict[str, float] = {}
    for name, run in (("async sequential", sequential), ("async gathered", gathered)):
        start = time.perf_counter()
        asyncio.run(run())
        timings[name] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        backend.generate(MESSAGES, sampling)
    timings["sync sequential"] = time.perf_counter() - start
    start = time.perf_counter()
    backend.generate_batch([MESSAGES] * n, sampling)
    timings["generate_batch"] = time.perf_counter() - start
    return timings


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="timed calls per side (overhead)")
    parser.add_argument("--tokens", type=int, default=16, help="num_predict per answer")
    parser.add_argument("--latency", type=float, default=0.5, help="server wait per request (s)")
    parser.add_argument("--concurrent", type=int, default=8, help="requests in flight")
    parser.add_argument("--size", default="tiny", help="test checkpoint size (tiny, bench)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the stand-in")
    args = parser.parse_args(argv)

    import torch

    # The stand-in runs one forward pass at a time; one thread keeps it steady on shared cores.
    torch.set_num_threads(args.threads)
    sampling = SamplingParams(max_new_tokens=args.tokens, seed=0)
    engine = TinyQwen(tiny_checkpoint(args.size))
    with OllamaServer(engine) as server:
        backend = create_backend(backend="ollama", model=INSTRUCT_TAG, ollama={"host": server.url})
        assert isinstance(backend, OllamaBackend)
        with backend:
            times = overhead(backend, args.calls, sampling)
            server.latency = args.latency
            conc = concurrency(backend, sampling.replace(max_new_tokens=1), args.concurrent)

    ratio = times["backend"] / times["raw"]
    print(f"checkpoint: {args.size}; {args.tokens} new tokens per answer; {args.calls} calls each")
    print(f"  raw ollama.Client.chat  median {times['raw'] * 1e3:8.2f} ms")
    print(f"  backend.generate        median {times['backend'] * 1e3:8.2f} ms")
    print(f"  overhead ratio          {ratio:8.3f}  (goal <= 1.05) {_verdict(ratio <= 1.05)}")
    n = args.concurrent
    print(f"{n} requests, server latency {args.latency:g} s each, 1 new token per answer")
    for name, seconds in conc.items():
        print(f"  {name:<22} {seconds:8.3f} s")
    speedup = conc["async sequential"] / conc["async gathered"]
    batch = conc["sync sequential"] / conc["generate_batch"]
    print(f"  agenerate speed-up      {speedup:8.2f}x (goal >= 6x) {_verdict(speedup >= 6)}")
    print(f"  generate_batch speed-up {batch:8.2f}x")
    return 0


def _verdict(ok: Any) -> str:
    return "ok" if ok else "MISSED"


if __name__ == "__main__":
    raise SystemExit(main())
