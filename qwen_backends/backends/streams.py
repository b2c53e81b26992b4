"""What ``stream()`` and ``astream()`` return, and the bridge from a sync stream to async.

:class:`TextStream` / :class:`AsyncTextStream` hand out an answer's text pieces and keep its
final :class:`~qwen_backends.results.Generation`; :func:`on_worker_thread` iterates a blocking
stream on worker threads for async callers (the default ``_astream`` of every backend).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from qwen_backends.results import Generation

__all__ = ["AsyncTextStream", "TextStream", "on_worker_thread"]


class TextStream(Iterator[str]):
    """The text of one answer as it is produced; ``"".join`` equals ``generate().text``.

    Iterate it for the pieces; once exhausted, :attr:`generation` holds the final
    :class:`Generation` (counts, finish reason, tool calls) when the backend reported one.
    ``close()`` (or leaving a ``with`` block) stops the generation early.
    """

    def __init__(self, pieces: Iterator[str | Generation]) -> None:
        self._pieces = pieces
        self.generation: Generation | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while True:
            item = next(self._pieces)
            if isinstance(item, Generation):
                self.generation = item
                continue
            return item

    def close(self) -> None:
        """Stop the generation (safe to call twice)."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTextStream(AsyncIterator[str]):
    """Async :class:`TextStream`: ``async for piece in stream``; then :attr:`generation`."""

    def __init__(self, pieces: AsyncIterator[str | Generation]) -> None:
        self._pieces = pieces
        self.generation: Generation | None = None

    def __aiter__(self) -> AsyncTextStream:
        return self

    async def __anext__(self) -> str:
        while True:
            item = await anext(self._pieces)
            if isinstance(item, Generation):
                self.generation = item
                continue
            return item

    async def aclose(self) -> None:
        """Stop the generation (safe to call twice)."""
        close = getattr(self._pieces, "aclose", None)
        if close is not None:
            await close()


async def on_worker_thread(
    start: Callable[[], Iterator[str | Generation]],
) -> AsyncIterator[str | Generation]:
    """The items of the stream ``start()`` opens, each taken on a worker thread.

    Closing the async stream early closes the sync one (which stops the generation).
    """
    iterator = await asyncio.to_thread(start)
    done = object()
    # A worker thread still inside next() when the consumer goes away must finish before the
    # iterator is closed; the lock orders the two.
    lock = threading.Lock()

    def step() -> object:
        with lock:
            return next(iterator, done)

    try:
        while True:
            item = await asyncio.to_thread(step)
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with lock:
                close()
