"""A total deadline for one call to a server backend: :func:`within_deadline` and
:func:`awithin_deadline`.

A server backend's ``timeout`` bounds each read; a server that keeps sending, slowly, is waited
for however long the answer takes. ``deadline`` (the ``ollama`` and ``vllm`` settings) bounds
the whole call instead: the request, its retries, the first-use check and every piece of the
answer. When it passes, the caller gets :class:`~qwen_backends.errors.BackendTimeoutError` at
once, with the text received so far in ``partial_text``, and the answer's connection is closed,
so the server stops generating.

Async calls wait for each piece with the time that is left (``asyncio.wait_for``); cancelling
the answer closes its connection. A sync read cannot be interrupted, so a sync call runs on a
worker thread and the caller waits on a queue for the time that is left; the worker closes the
answer after the read it was in returns (within one per-read ``timeout``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from qwen_backends.errors import BackendTimeoutError
from qwen_backends.results import Generation

__all__ = ["awithin_deadline", "within_deadline"]

Item = str | Generation
#: Builds the error for a passed deadline from the text received so far.
Expired = Callable[[str], BackendTimeoutError]


def within_deadline(
    start: Callable[[], Iterator[Item]], seconds: float, expired: Expired
) -> Iterator[Item]:
    """The items of the answer ``start()`` opens, each within ``seconds`` of this call.

    Like ``start()``, this returns only once the answer's first item (or its error) is in, so
    errors before any text are raised here, not on the first ``next``.
    """
    end = time.monotonic() + seconds
    handoff: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
    abandoned = threading.Event()

    def produce() -> None:
        try:
            answer = start()
            try:
                for item in answer:
                    if abandoned.is_set():
                        break
                    handoff.put((True, item))
            finally:
                close = getattr(answer, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the caller, raised there
            handoff.put((False, exc))
        else:
            handoff.put((False, None))

    threading.Thread(target=produce, name="qwen-backends-deadline", daemon=True).start()
    received: list[str] = []

    def take() -> tuple[bool, object]:
        try:
            return handoff.get(timeout=max(end - time.monotonic(), 0.0))
        except queue.Empty:
            abandoned.set()
            raise expired("".join(received)) from None

    first = take()

    def rest(message: tuple[bool, object]) -> Iterator[Item]:
        try:
            while True:
                more, value = message
                if not more:
                    if isinstance(value, BaseException):
                        raise value
                    return
                if isinstance(value, str):
                    received.append(value)
                yield value  # type: ignore[misc]
                message = take()
        finally:
            abandoned.set()

    if not first[0] and isinstance(first[1], BaseException):
        abandoned.set()
        raise first[1]
    return rest(first)


async def awithin_deadline(
    answer: AsyncIterator[Item], seconds: float, expired: Expired
) -> AsyncIterator[Item]:
    """The items of ``answer`` (an async generator), each within ``seconds`` of the first step."""
    end = time.monotonic() + seconds
    received: list[str] = []
    try:
        while True:
            try:
                item = await asyncio.wait_for(anext(answer), max(end - time.monotonic(), 0.0))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise expired("".join(received)) from None
            if isinstance(item, str):
                received.append(item)
            yield item
    finally:
        close = getattr(answer, "aclose", None)
        if close is not None:
            await close()
