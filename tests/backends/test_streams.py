"""qwen_backends.backends.streams: the sync-to-async bridge closes what it opened."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from qwen_backends.backends.streams import AsyncTextStream, on_worker_thread
from qwen_backends.results import Generation


def test_the_bridge_hands_over_every_item_then_closes_the_sync_stream() -> None:
    closed: list[bool] = []
    final = Generation("ab", "stop", 1, 2, 0.0)

    def pieces() -> Iterator[str | Generation]:
        try:
            yield "a"
            yield "b"
            yield final
        finally:
            closed.append(True)

    async def collect() -> tuple[list[str], Generation | None]:
        stream = AsyncTextStream(on_worker_thread(pieces))
        return [piece async for piece in stream], stream.generation

    assert asyncio.run(collect()) == (["a", "b"], final)
    assert closed == [True]


def test_closing_the_async_stream_early_closes_the_sync_one() -> None:
    given: list[int] = []
    closed: list[bool] = []

    def pieces() -> Iterator[str]:
        try:
            for index in range(1000):
                given.append(index)
                yield str(index)
        finally:
            closed.append(True)

    async def first_two() -> list[str]:
        stream = AsyncTextStream(on_worker_thread(pieces))
        taken = [await anext(stream), await anext(stream)]
        await stream.aclose()
        return taken

    assert asyncio.run(first_two()) == ["0", "1"]
    assert closed == [True] and len(given) == 2
