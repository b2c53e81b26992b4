"""The server base (qwen_backends/backends/server.py) with an in-memory "server": its clients
answer from Python, so the base's own work is seen without a network: generate, stream and the
async calls through one assembler, dialogues answered by either client, one resend, errors in
the middle of an answer, and the closed check."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from qwen_backends.backends.answer import Piece
from qwen_backends.backends.remote import Remote
from qwen_backends.backends.server import Call, Dialogue, ServerBackend
from qwen_backends.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    GenerationError,
)
from qwen_backends.results import Request
from qwen_backends.settings import Settings

WORDS = ["Hello", " there", ",", " friend"]


class _Client:
    """Answers ``chat`` from :data:`WORDS`: a list of chunks, or a stream of them."""

    def __init__(self, owner: _Echo) -> None:
        self.owner = owner

    def chat(self, body: dict[str, Any]) -> Any:
        self.owner.bodies.append(body)
        if body["mode"] == "refused":
            raise ConfigurationError("the server refused mode 'refused'")
        chunks = self.owner.chunks()
        return self._stream(chunks) if body["stream"] else chunks[-1] | {"text": "".join(WORDS)}

    def _stream(self, chunks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for index, chunk in enumerate(chunks):
            if index == self.owner.fail_at:
                raise TimeoutError("no bytes")
            yield chunk

    def probe(self) -> str:
        if self.owner.probe_fails:
            raise ConnectionRefusedError("nothing listens")
        return "probed"


class _AsyncClient:
    def __init__(self, owner: _Echo) -> None:
        self.sync = _Client(owner)

    async def chat(self, body: dict[str, Any]) -> Any:
        answer = self.sync.chat(body)
        return _aiter(answer) if body["stream"] else answer

    async def probe(self) -> str:
        return self.sync.probe()


async def _aiter(chunks: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


class _Echo(ServerBackend):
    """A server backend over :class:`_Client` (with ollama's settings; not registered)."""

    name = "echo"
    thinking_switch = "think=false"
    thinking_field = "thinking"

    def __init__(self) -> None:
        super().__init__(Settings(backend="ollama"))
        self.remote = Remote(
            backend=self.name,
            server="Echo",
            url="http://127.0.0.1:9",
            how_to_start="echo serve",
            timeout=1.0,
            timeout_setting="QWEN_ECHO__TIMEOUT",
            max_retries=0,
        )
        self.bodies: list[dict[str, Any]] = []
        self.checks: list[str] = []
        self.mode = "refused"
        self.fail_at = -1
        self.probe_fails = False

    def chunks(self) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = [{"text": word} for word in WORDS]
        return [*chunks, {"text": "", "done": True, "prompt": 3, "completion": len(WORDS)}]

    def _sync_client(self) -> _Client:
        return _Client(self)

    @contextlib.asynccontextmanager
    async def _async_client(self) -> AsyncIterator[_AsyncClient]:
        yield _AsyncClient(self)

    def _body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        return {"mode": self.mode, "stream": stream}

    def _send(self, client: Any, body: dict[str, Any]) -> Any:
        return client.chat(body)

    def _parse(self, chunk: Any) -> Piece:
        done = chunk.get("done", False)
        return Piece(
            text=chunk["text"],
            final=done,
            finish_reason="stop" if done else None,
            prompt_tokens=chunk.get("prompt"),
            completion_tokens=chunk.get("completion"),
        )

    def _resend(self, request: Request, error: ConfigurationError) -> bool:
        if self.mode != "refused":
            return False
        self.mode = "plain"
        return True

    def _first_use_check(self) -> Dialogue[None]:
        try:
            self.checks.append((yield Call(lambda client: client.probe())))
        except BackendUnavailableError:
            self.checks.append("unreachable, checked anyway")


@pytest.fixture
def echo() -> Iterator[_Echo]:
    with _Echo() as backend:
        yield backend


def test_every_call_assembles_the_same_answer(echo: _Echo) -> None:
    generated = echo.generate("hi")
    stream = echo.stream("hi")
    pieces = list(stream)

    async def both() -> tuple[Any, list[str]]:
        return await echo.agenerate("hi"), [piece async for piece in echo.astream("hi")]

    agenerated, apieces = asyncio.run(both())
    batch = echo.generate_batch(["hi", "hello"])
    expected = "".join(WORDS)
    assert pieces == apieces == WORDS
    for generation in (generated, stream.generation, agenerated, *batch):
        assert generation is not None and generation.text == expected
        assert (generation.prompt_tokens, generation.completion_tokens) == (3, len(WORDS))
        assert generation.finish_reason == "stop"
    assert echo.checks == ["probed"]  # the first-use check ran once, with the sync client
    # The first request was refused once and resent as the backend changed it; then kept.
    assert [body["mode"] for body in echo.bodies] == ["refused"] + ["plain"] * 6
    assert [body["stream"] for body in echo.bodies[1:]] == [False, True, False, True, False, False]


def test_a_dialogue_handles_errors_thrown_back_into_it_on_either_client() -> None:
    with _Echo() as sync_backend:
        sync_backend.probe_fails = True
        assert sync_backend.generate("hi").text
        assert sync_backend.checks == ["unreachable, checked anyway"]
    with _Echo() as async_backend:
        async_backend.probe_fails = True
        assert asyncio.run(async_backend.agenerate("hi")).text
        assert async_backend.checks == ["unreachable, checked anyway"]


def test_an_error_mid_answer_keeps_the_text_handed_out(echo: _Echo) -> None:
    echo.fail_at = 2
    received: list[str] = []
    with pytest.raises(BackendTimeoutError) as caught:
        for piece in echo.stream("hi"):
            received.append(piece)
    assert received == WORDS[:2]
    assert caught.value.partial_text == "".join(WORDS[:2])
    assert "kept in partial_text" in str(caught.value)


def test_after_close_every_call_and_dialogue_is_refused(echo: _Echo) -> None:
    echo.generate("hi")
    echo.close()
    for call in (
        lambda: echo.generate("hi"),
        lambda: echo.stream("hi"),
        lambda: echo._call(Call(lambda client: client.probe())),
        lambda: asyncio.run(echo.agenerate("hi")),
    ):
        with pytest.raises(GenerationError, match="this echo backend was closed"):
            call()
    assert len(echo.bodies) == 2  # nothing was sent after close()
