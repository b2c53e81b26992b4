"""A bounded load test on loopback: 200 requests, 16 at a time, through the real async client.

Each request carries one of a few prompts whose expected answer (fixed seed) is computed with
the backend directly first; every answer must match its own prompt's, so a lost, duplicated or
mixed-up answer fails. Memory must stay flat, measured after a warm-up round: the number of
live Python objects (a leak of even ten objects per request fails) and, more loosely, the
process's RSS (glibc keeps per-thread arenas that torch's worker threads fill once; measured runs
grew 5-90 MiB per 100 requests at first, then levelled off while Python's heap stayed constant).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import psutil
import pytest
from conftest import Served
from ollama_server import OllamaServer

from qwen_backends.backends.base import ModelBackend

REQUESTS = 200
CONCURRENCY = 16
WARMUP = 32
#: Prompt -> the seed it is always sent with (different seeds keep the answers apart).
PROMPTS = {
    f"Request {word}: answer briefly.": seed
    for seed, word in enumerate(("red", "green", "blue", "amber"), start=11)
}
MAX_TOKENS = 6
#: Allowed growth between the warm-up and the end of the run.
RSS_BOUND = 192 * 2**20
OBJECTS_BOUND = REQUESTS * 10


def expected_answers(backend: ModelBackend) -> dict[str, str]:
    params = backend.settings.sampling.replace(max_new_tokens=MAX_TOKENS)
    answers = {
        prompt: backend.generate(
            [{"role": "user", "content": prompt}], params.replace(seed=seed)
        ).text
        for prompt, seed in PROMPTS.items()
    }
    assert len(set(answers.values())) == len(PROMPTS), "prompts must give distinct answers"
    return answers


async def one(client: Any, served: Served, number: int) -> tuple[str, str, str]:
    prompt = list(PROMPTS)[number % len(PROMPTS)]
    fields: dict[str, Any] = {
        "model": served.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "seed": PROMPTS[prompt],
    }
    if number % 3 == 0:
        pieces, ids = [], set()
        stream = await client.chat.completions.create(stream=True, **fields)
        async for chunk in stream:
            ids.add(chunk.id)
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
        assert len(ids) == 1
        return prompt, "".join(pieces), ids.pop()
    answer = await client.chat.completions.create(**fields)
    return prompt, answer.choices[0].message.content or "", answer.id


async def run_load(served: Served, count: int) -> list[tuple[str, str, str]]:
    client = served.async_client(timeout=120)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def limited(number: int) -> tuple[str, str, str]:
        async with limit:
            return await one(client, served, number)

    try:
        return await asyncio.gather(*(limited(n) for n in range(count)))
    finally:
        await client.close()


def check_load(served: Served) -> None:
    expected = expected_answers(served.backend)
    asyncio.run(run_load(served, WARMUP))
    gc.collect()
    objects_before = len(gc.get_objects())
    before = psutil.Process().memory_info().rss
    results = asyncio.run(run_load(served, REQUESTS))
    after = psutil.Process().memory_info().rss
    gc.collect()
    objects_after = len(gc.get_objects())
    assert len(results) == REQUESTS
    assert len({completion_id for _, _, completion_id in results}) == REQUESTS
    wrong = [(prompt, text) for prompt, text, _ in results if text != expected[prompt]]
    assert not wrong, f"{len(wrong)} answers lost or mixed, e.g. {wrong[:2]}"
    assert objects_after - objects_before < OBJECTS_BOUND, (
        f"{objects_after - objects_before} more live Python objects after {REQUESTS} requests"
    )
    assert after - before < RSS_BOUND, f"RSS grew by {(after - before) / 2**20:.1f} MiB"
    assert not served.state().tasks
    assert served.state().gate.active == 0


@pytest.mark.timeout(600)
def test_load_hf_tiny(hf_served: Served) -> None:
    check_load(hf_served)


@pytest.mark.timeout(600)
def test_load_ollama_stand_in(ollama_served: Served, ollama_server: OllamaServer) -> None:
    check_load(ollama_served)
    # Served concurrently: the stand-in had several requests at once.
    assert ollama_server.max_in_flight > 1
    assert len(ollama_server.chats()) == REQUESTS + WARMUP + len(PROMPTS)
