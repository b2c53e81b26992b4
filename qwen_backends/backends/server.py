"""What the server backends (ollama, vllm) share: :class:`ServerBackend`.

A server backend supplies what is its own and nothing else:

- a pure request body (:meth:`ServerBackend._body`) and the call that sends it
  (:meth:`ServerBackend._send`, one expression for its sync and its async client);
- a chunk parser (:meth:`ServerBackend._parse`) from one chunk of an answer to a
  :class:`~qwen_backends.backends.answer.Piece`. A non-streamed answer is one chunk, so every
  answer -- generated or streamed, sync or async -- is assembled by the one
  :class:`~qwen_backends.backends.answer.Assembler`;
- its first-use check (:meth:`ServerBackend._first_use_check`), written once as a *dialogue*:
  a generator that yields the :class:`Call` objects it needs answered and receives their
  results (or has their errors thrown in). :meth:`ServerBackend._run` answers a dialogue with
  the sync client, :meth:`ServerBackend._arun` with the async one, both through the shared
  retry policy of :mod:`qwen_backends.backends.remote`;
- its clients (:meth:`ServerBackend._sync_client`, :meth:`ServerBackend._async_client`).

The base holds the rest once: generate / stream / agenerate / astream / generate_batch (a
thread pool: the server batches what arrives together), the closed check (after ``close()``
every call raises the one error the in-process backends raise), the translation of errors in
the middle of an answer (the text so far kept in ``partial_text``) and the warning for thinking
that comes back despite the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from qwen_backends.backends.answer import Assembler
from qwen_backends.backends.base import ModelBackend, check_open
from qwen_backends.backends.deadline import awithin_deadline, within_deadline
from qwen_backends.errors import ConfigurationError, GenerationError, QwenBackendsError
from qwen_backends.results import FinishReason, Generation, Request

if TYPE_CHECKING:
    from qwen_backends.backends.answer import Piece
    from qwen_backends.backends.remote import Failure, Remote
    from qwen_backends.settings import Settings

__all__ = ["Call", "Dialogue", "ServerBackend", "StatusErrors"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A backend's wording for a 4xx (see :meth:`~qwen_backends.backends.remote.Remote.error`).
StatusErrors = Callable[["Failure"], QwenBackendsError | None]
#: The end of a stream (a sentinel no chunk can be).
_END: Any = object()


@dataclass(frozen=True)
class Call:
    """One request to the server, the same for the sync and the async client.

    Attributes
    ----------
    send
        ``send(client)`` makes the request: its answer with the sync client, an awaitable of it
        with the async one (the two clients of a server share their method names).
    status_errors
        The backend's wording for a 4xx.
    stream
        The answer is a stream: its first chunk is read inside the retry loop too (a failure
        before any text is retried like a failed request), and the driver returns
        ``(chunks, first_chunk)``.
    """

    send: Callable[[Any], Any]
    status_errors: StatusErrors | None = None
    stream: bool = False


#: Steps that need the server, written once: yields :class:`Call` objects, receives answers.
Dialogue = Generator[Call, Any, T]


class ServerBackend(ModelBackend):
    """A backend that talks to a server (see the module docs).

    Subclasses set :attr:`remote` in ``__init__`` and implement the hooks below.

    Attributes
    ----------
    remote
        The shared error table and retry policy (:class:`~qwen_backends.backends.remote.Remote`).
    """

    #: Most requests :meth:`generate_batch` keeps in flight at once.
    batch_concurrency: ClassVar[int] = 8
    #: The switch the requests carry, as the thinking warning names it.
    thinking_switch: ClassVar[str]
    #: What the thinking warning calls the field the server reports thinking in.
    thinking_field: ClassVar[str]
    #: Whether the server reports log-probabilities for every generated token (the assembler
    #: then checks the count); Ollama leaves some out.
    logprobs_cover_every_token: ClassVar[bool] = True
    #: Appended to the thinking warning (what to do about it).
    thinking_advice: ClassVar[str] = ""

    remote: Remote

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._checked = False
        self._check_lock = threading.Lock()

    # -- hooks of a server backend ------------------------------------------------------------

    @abstractmethod
    def _sync_client(self) -> Any:
        """The client of sync calls."""

    @abstractmethod
    def _async_client(self) -> AbstractAsyncContextManager[Any]:
        """The client of one async call (kept open for the whole answer)."""

    @abstractmethod
    def _body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        """The request body for ``request`` (no I/O)."""

    @abstractmethod
    def _send(self, client: Any, body: dict[str, Any]) -> Any:
        """Send ``body`` with ``client`` (sync or async: the same expression)."""

    @abstractmethod
    def _parse(self, chunk: Any) -> Piece:
        """What one chunk of an answer holds (a non-streamed answer is one chunk).

        Raises
        ------
        ProtocolError
            For a chunk without what the protocol promises.
        """

    def _first_use_check(self) -> Dialogue[None]:
        """Checks run once, before the first answer (the default checks nothing)."""
        return
        yield  # pragma: no cover  # makes this a generator

    def _local_work(self, request: Request) -> Callable[[], object] | None:
        """Blocking work to do here before ``request`` is sent (async calls run it on a worker
        thread), or ``None``; its errors come before any request."""
        return None

    def _status_errors(self, failure: Failure) -> QwenBackendsError | None:
        """The backend's wording for a 4xx; ``None`` keeps the remote layer's."""
        return None

    def _logprob_tokenizer(self) -> Any:
        """The served model's tokenizer, which names the ids of per-token log-probabilities
        (asked only of backends whose capabilities include ``logprobs``)."""
        raise NotImplementedError(f"{self.name} reports no per-token log-probabilities")

    def _resend(self, request: Request, error: ConfigurationError) -> bool:
        """Whether to send ``request`` once more after the server refused it with ``error``
        (the backend changed what it sends); the default never does."""
        return False

    def _finish_reason(self, value: str | None) -> FinishReason | None:
        """The library's finish reason for the server's; ``None`` makes the answer a
        :class:`GenerationError` (an abort)."""
        return "length" if value == "length" else "stop"

    # -- the generation hooks, once ----------------------------------------------------------

    def _generate(self, request: Request) -> Generation:
        return _generation(self._bounded(request, stream=False))

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        return self._bounded(request, stream=True)

    async def _agenerate(self, request: Request) -> Generation:
        generation = None
        async for item in self._abounded(request, stream=False):
            generation = item
        assert isinstance(generation, Generation)
        return generation

    def _astream(self, request: Request) -> AsyncIterator[str | Generation]:
        return self._abounded(request, stream=True)

    def _bounded(self, request: Request, *, stream: bool) -> Iterator[str | Generation]:
        """:meth:`_answer` within the ``deadline`` setting, when there is one."""
        deadline = self.remote.deadline
        if deadline is None:
            return self._answer(request, stream=stream)
        start = functools.partial(self._answer, request, stream=stream)
        return within_deadline(start, deadline, self.remote.deadline_error)

    def _abounded(self, request: Request, *, stream: bool) -> AsyncIterator[str | Generation]:
        """:meth:`_aanswer` within the ``deadline`` setting, when there is one."""
        deadline = self.remote.deadline
        answer = self._aanswer(request, stream=stream)
        if deadline is None:
            return answer
        return awithin_deadline(answer, deadline, self.remote.deadline_error)

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        # The server runs concurrent requests together; the client's pool is thread-safe.
        self._check_open()
        work = self._local_work(requests[0])  # the same sampling for every request
        if work is not None:
            work()
        self._ensure_checked()
        workers = min(len(requests), self.batch_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.name) as pool:
            return list(pool.map(self._generate, requests))

    def _answer(self, request: Request, *, stream: bool) -> Iterator[str | Generation]:
        """Send ``request`` (everything up to its first chunk happens before this returns)."""
        self._check_open()
        work = self._local_work(request)
        if work is not None:
            work()
        self._ensure_checked()
        started = time.perf_counter()
        chunks, first = self._run(self._open(request, stream=stream))
        return self._assemble(request, chunks, first, started)

    def _assemble(
        self, request: Request, chunks: Any, first: Any, started: float
    ) -> Iterator[str | Generation]:
        assembler = Assembler(self, tools=bool(request.tools), top_logprobs=_top_logprobs(request))
        # Closing the response makes the server stop generating (early break included).
        with _closed_after(chunks), self._translating(assembler):
            for chunk in _chain(first, chunks):
                if piece := assembler.feed(chunk):
                    yield piece
            yield from assembler.finish(time.perf_counter() - started)

    async def _aanswer(self, request: Request, *, stream: bool) -> AsyncIterator[str | Generation]:
        """Async :meth:`_answer` (an async generator: nothing runs before the first step)."""
        self._check_open()
        work = self._local_work(request)
        if work is not None:
            await asyncio.to_thread(work)
        async with self._async_client() as client:
            if not self._checked:
                await self._arun(client, self._first_use_check())
                self._checked = True
            started = time.perf_counter()
            chunks, first = await self._arun(client, self._open(request, stream=stream))
            assembler = Assembler(
                self, tools=bool(request.tools), top_logprobs=_top_logprobs(request)
            )
            async with _aclosed_after(chunks), contextlib.aclosing(_achain(first, chunks)) as rest:
                with self._translating(assembler):
                    async for chunk in rest:
                        if piece := assembler.feed(chunk):
                            yield piece
                    for item in assembler.finish(time.perf_counter() - started):
                        yield item

    @contextlib.contextmanager
    def _translating(self, assembler: Assembler) -> Iterator[None]:
        """Errors in the middle of an answer as the library's, with the text handed out so far
        in ``partial_text``."""
        try:
            yield
        except Exception as exc:
            error = self._answer_error(exc, assembler.text)
            if error is exc:
                raise
            raise error from exc

    def _open(self, request: Request, *, stream: bool) -> Dialogue[tuple[Any, Any]]:
        """Send ``request``: ``(chunks, first_chunk)``, ``chunks`` ``None`` for a whole answer."""
        while True:
            body = self._body(request, stream=stream)
            try:
                reply = yield Call(
                    functools.partial(self._send, body=body), self._status_errors, stream=stream
                )
            except ConfigurationError as exc:
                if self._resend(request, exc):
                    continue
                raise
            return reply if stream else (None, reply)

    # -- dialogues and the first-use check ----------------------------------------------------

    def _run(self, dialogue: Dialogue[T]) -> T:
        """Answer ``dialogue`` with the sync client, each call through the retry policy."""
        self._check_open()
        client = self._sync_client()
        steps = _Steps(dialogue)
        while steps.advance():
            try:
                steps.reply = self.remote.call(
                    functools.partial(_send, steps.call, client), steps.call.status_errors
                )
            except Exception as exc:
                steps.error = exc
        return steps.result

    async def _arun(self, client: Any, dialogue: Dialogue[T]) -> T:
        """Answer ``dialogue`` with the async ``client`` (see :meth:`_run`)."""
        steps = _Steps(dialogue)
        while steps.advance():
            try:
                steps.reply = await self.remote.acall(
                    functools.partial(_asend, steps.call, client), steps.call.status_errors
                )
            except Exception as exc:
                steps.error = exc
        return steps.result

    def _call(self, call: Call) -> Any:
        """The answer to one :class:`Call`, sent with the sync client."""
        return self._run(_single(call))

    def _ensure_checked(self) -> None:
        """Run the first-use check once (concurrent callers wait for its verdict)."""
        if self._checked:
            return
        with self._check_lock:
            if not self._checked:
                self._run(self._first_use_check())
                self._checked = True

    # -- what every server backend says the same way -----------------------------------------

    def _check_open(self) -> None:
        check_open(self._closed, self.name)

    def _answer_error(self, exc: Exception, text: str) -> BaseException:
        """The library error for ``exc`` raised in the middle of an answer, with ``text`` (what
        was handed out so far) in ``partial_text``."""
        if isinstance(exc, GenerationError):
            if text and not exc.partial_text:
                exc.partial_text = text
            return exc
        return self.remote.translate(exc, partial_text=text, status_errors=self._status_errors)

    def _warn_thinking(self, where: str) -> None:
        """Log that the server returned thinking (``where``) although the request said not to
        (the assembler calls it at most once per answer)."""
        logger.warning(
            "%s (%s) returned thinking (%s) despite %s; it was removed from the answer%s",
            self.remote.server,
            self.model_name,
            where,
            self.thinking_switch,
            self.thinking_advice,
        )


def _top_logprobs(request: Request) -> int | None:
    """What :class:`Assembler` is told of the request's log-probabilities."""
    return request.sampling.top_logprobs if request.sampling.logprobs else None


def _generation(items: Iterator[str | Generation]) -> Generation:
    generation = None
    for item in items:
        generation = item
    assert isinstance(generation, Generation)
    return generation


class _Steps(Generic[T]):
    """Walks a dialogue: the call it asks next, and the answer (or error) to hand back."""

    def __init__(self, dialogue: Dialogue[T]) -> None:
        self.dialogue = dialogue
        self.call: Call
        self.reply: Any = None
        self.error: Exception | None = None
        self.result: T

    def advance(self) -> bool:
        """Hand back the last answer; ``True`` with :attr:`call` set while the dialogue asks
        for more, ``False`` with :attr:`result` set once it returned."""
        reply, error, self.reply, self.error = self.reply, self.error, None, None
        try:
            self.call = self.dialogue.send(reply) if error is None else self.dialogue.throw(error)
        except StopIteration as stop:
            self.result = stop.value
            return False
        return True


def _single(call: Call) -> Dialogue[Any]:
    return (yield call)


def _send(call: Call, client: Any) -> Any:
    reply = call.send(client)
    if not call.stream:
        return reply
    try:
        return reply, next(reply, _END)
    except BaseException:
        reply.close()
        raise


async def _asend(call: Call, client: Any) -> Any:
    reply = await call.send(client)
    if not call.stream:
        return reply
    try:
        return reply, await anext(reply, _END)
    except BaseException:
        await _aclose(reply)
        raise


def _chain(first: Any, chunks: Iterator[Any] | None) -> Iterator[Any]:
    """The chunks of an answer: ``first`` (read when it was opened), then the rest."""
    if first is not _END:
        yield first
        if chunks is not None:
            yield from chunks


async def _achain(first: Any, chunks: AsyncIterator[Any] | None) -> AsyncGenerator[Any, None]:
    """Async :func:`_chain`."""
    if first is not _END:
        yield first
        if chunks is not None:
            async for chunk in chunks:
                yield chunk


@contextlib.contextmanager
def _closed_after(chunks: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if chunks is not None:
            chunks.close()


@contextlib.asynccontextmanager
async def _aclosed_after(chunks: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if chunks is not None:
            await _aclose(chunks)


async def _aclose(chunks: Any) -> None:
    # An async generator (ollama) has aclose(); the openai SDK's AsyncStream has close().
    close = getattr(chunks, "aclose", None) or chunks.close
    await close()
