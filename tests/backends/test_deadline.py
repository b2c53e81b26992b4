"""The total deadline of a server call, on stand-in answers (the servers: tests/conformance)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from qwen_backends.backends.deadline import awithin_deadline, within_deadline
from qwen_backends.errors import BackendTimeoutError, ConfigurationError


def expired(text: str) -> BackendTimeoutError:
    return BackendTimeoutError("deadline passed", partial_text=text)


class Answer:
    """A sync answer: ``pieces``, then (with ``stall``) a read that waits for ``release``."""

    def __init__(self, pieces: list[str], stall: bool = False) -> None:
        self.pieces = pieces
        self.stall = stall
        self.release = threading.Event()
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[str]:
        yield from self.pieces
        if self.stall:
            self.release.wait(30)
            yield "late"

    def close(self) -> None:
        self.closed.set()


class Opened:
    """``start`` for within_deadline: the answer, whose generator closes the answer."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def __call__(self) -> Iterator[str]:
        def pieces() -> Iterator[str]:
            try:
                yield from self.answer
            finally:
                self.answer.close()

        return pieces()


def test_an_answer_within_the_deadline_is_passed_on_whole() -> None:
    answer = Answer(["a", "b", "c"])
    assert list(within_deadline(Opened(answer), 30, expired)) == ["a", "b", "c"]
    assert answer.closed.wait(10)


def test_an_error_before_any_text_is_raised_by_the_call_itself() -> None:
    def refused() -> Iterator[str]:
        raise ConfigurationError("bad request")

    with pytest.raises(ConfigurationError, match="bad request"):
        within_deadline(refused, 30, expired)


def test_a_passed_deadline_raises_with_the_text_so_far_and_closes_the_answer() -> None:
    answer = Answer(["a", "b"], stall=True)
    received: list[object] = []
    with pytest.raises(BackendTimeoutError) as caught:
        for piece in within_deadline(Opened(answer), 0.5, expired):
            received.append(piece)
    assert received == ["a", "b"] and caught.value.partial_text == "ab"
    assert not answer.closed.is_set(), "the worker is still inside the stalled read"
    answer.release.set()
    assert answer.closed.wait(10), "the worker closes the answer once the read returns"


def test_closing_the_stream_early_closes_the_answer() -> None:
    answer = Answer(["a", "b", "c"], stall=True)
    stream = within_deadline(Opened(answer), 30, expired)
    assert next(stream) == "a"
    stream.close()  # type: ignore[attr-defined]
    answer.release.set()
    assert answer.closed.wait(10)


def test_the_async_form_cancels_the_answer_at_the_deadline() -> None:
    closed = []

    async def stalled() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.sleep(30)
            yield "late"
        finally:
            closed.append(True)

    async def run() -> list[object]:
        received: list[object] = []
        with pytest.raises(BackendTimeoutError) as caught:
            async for piece in awithin_deadline(stalled(), 0.5, expired):
                received.append(piece)
        assert caught.value.partial_text == "a"
        return received

    assert asyncio.run(run()) == ["a"]
    assert closed == [True]


def test_the_async_form_passes_a_quick_answer_on() -> None:
    async def quick() -> AsyncIterator[str]:
        for piece in ("a", "b"):
            yield piece

    async def run() -> list[object]:
        return [piece async for piece in awithin_deadline(quick(), 30, expired)]

    assert asyncio.run(run()) == ["a", "b"]
