"""Benchmark ``qwen-backends serve``: what the OpenAI endpoint costs over calling the backend.

Measured side by side in one run, on loopback (the app behind uvicorn in a background thread,
the real ``openai`` client):

1. Overhead per request (goal <= 1.05 for server backends' small requests): ``backend.generate``
   vs ``client.chat.completions.create`` through the server, the same request and seed,
   interleaved call by call, ratio of the medians. Backend: ollama against the loopback Ollama
   stand-in (tests/backends/ollama_server.py; tokens from a random-weight Qwen3 checkpoint).
2. Throughput with 16 concurrent clients (``AsyncOpenAI``): requests per second through the
   server vs the backend called directly with the same concurrency (``agenerate`` gathered 16 at
   a time). For the ollama stand-in, and (``--hf``) for the hf backend on the tiny checkpoint,
   whose in-process policy is one generation at a time.

Run: ``.venv/bin/python benchmarks/bench_serve.py [--calls 40] [--requests 64] [--hf]``
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))

from conftest import Served
from ollama_server import OllamaServer, TinyQwen

from qwen_backends import create_backend
from qwen_backends.backends.base import ModelBackend
from qwen_backends.testing import tiny_checkpoint

MESSAGES = [{"role": "user", "content": "Give me one short sentence about rivers."}]


def overhead(served: Served, calls: int, tokens: int) -> dict[str, float]:
    """Median seconds of ``backend.generate`` and of the same request through the server."""
    backend = served.backend
    sampling = backend.settings.sampling.replace(max_new_tokens=tokens, seed=0)
    client = served.client()

    def through_server() -> str:
        answer = client.chat.completions.create(
            model=served.model, messages=MESSAGES, max_tokens=tokens, seed=0
        )
        return answer.choices[0].message.content or ""

    # Warm-up (first-use checks, connections), and the two paths agree.
    assert backend.generate(MESSAGES, sampling).text == through_server()
    direct, served_times = [], []
    for index in range(calls):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            if which == 0:
                backend.generate(MESSAGES, sampling)
                direct.append(time.perf_counter() - start)
            else:
                through_server()
                served_times.append(time.perf_counter() - start)
    client.close()
    return {"direct": statistics.median(direct), "served": statistics.median(served_times)}


async def _limited(count: int, concurrency: int, call: Any) -> float:
    limit = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with limit:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - start


def throughput(served: Served, requests: int, concurrency: int, tokens: int) -> dict[str, float]:
    """Seconds for ``requests`` answers, ``concurrency`` at a time: direct and through serve."""
    backend = served.backend
    sampling = backend.settings.sampling.replace(max_new_tokens=tokens, seed=0)

    async def direct() -> float:
        return await _limited(requests, concurrency, lambda: backend.agenerate(MESSAGES, sampling))

    async def through_server() -> float:
        client = served.async_client(timeout=600)
        try:
            return await _limited(
                requests,
                concurrency,
                lambda: client.chat.completions.create(
                    model=served.model, messages=MESSAGES, max_tokens=tokens, seed=0
                ),
            )
        finally:
            await client.close()

    return {"direct": asyncio.run(direct()), "served": asyncio.run(through_server())}


def report_throughput(name: str, times: dict[str, float], requests: int, concurrency: int) -> None:
    print(f"{name}: {requests} requests, {concurrency} concurrent clients")
    for side in ("direct", "served"):
        seconds = times[side]
        print(f"  {side:<7} {seconds:8.2f} s  {requests / seconds:8.2f} requests/s")
    print(f"  served / direct time  {times['served'] / times['direct']:8.3f}")


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="timed calls per side (overhead)")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per answer")
    parser.add_argument("--requests", type=int, default=64, help="requests (throughput)")
    parser.add_argument("--concurrent", type=int, default=16, help="concurrent clients")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--hf", action="store_true", help="also the hf backend's throughput")
    args = parser.parse_args(argv)

    import torch

    # The stand-in runs one forward pass at a time; one thread keeps it steady on shared cores.
    torch.set_num_threads(args.threads)
    engine = TinyQwen(tiny_checkpoint("tiny"))
    with OllamaServer(engine) as stand_in:
        backend: ModelBackend = create_backend(backend="ollama", ollama={"host": stand_in.url})
        with backend, Served(backend) as served:
            times = overhead(served, args.calls, args.tokens)
            conc = throughput(served, args.requests, args.concurrent, args.tokens)
    ratio = times["served"] / times["direct"]
    print(f"ollama stand-in, tiny checkpoint, {args.tokens} new tokens, {args.calls} calls each")
    print(f"  backend.generate         median {times['direct'] * 1e3:8.2f} ms")
    print(f"  openai client via serve  median {times['served'] * 1e3:8.2f} ms")
    print(f"  overhead ratio           {ratio:8.3f}  (goal <= 1.05) {_verdict(ratio <= 1.05)}")
    report_throughput("ollama stand-in", conc, args.requests, args.concurrent)

    if args.hf:
        hf = create_backend(backend="hf", model=str(tiny_checkpoint("tiny")), hf={"device": "cpu"})
        with hf, Served(hf, max_queue=args.concurrent) as served:
            hf_times = throughput(served, args.requests, args.concurrent, args.tokens)
        report_throughput(
            "hf tiny (one generation at a time)", hf_times, args.requests, args.concurrent
        )
    return 0


def _verdict(ok: Any) -> str:
    return "ok" if ok else "MISSED"


if __name__ == "__main__":
    raise SystemExit(main())
