"""One remote layer for the server backends (ollama, vllm and whatever comes next).

The same fault gives the same error class on every server backend, because every failure goes
through one classification (:func:`classify`), one error table (:meth:`Remote.error`) and one
retry decision (:meth:`Remote.retry_delay`), shared by the sync and async paths:

==============================================  =====================================  =========
what happened                                   error                                  retried
==============================================  =====================================  =========
nothing listens (connection refused)            :class:`BackendUnavailableError`        never
the connection broke before an answer           :class:`BackendUnavailableError`        yes
no answer within ``timeout`` (per read)         :class:`BackendTimeoutError`            yes
HTTP 429                                        :class:`RateLimitError`                 yes [1]_
HTTP 5xx                                        :class:`ServerError`                    yes
HTTP 401 / 403                                  :class:`ConfigurationError` (the key)   never
HTTP 400 / 422                                  :class:`ConfigurationError` [2]_        never
HTTP 404                                        :class:`ModelNotFoundError` [2]_        never
an answer the protocol does not allow (HTML,    :class:`ProtocolError`                  never
truncated JSON, a missing field, a stream cut)
the server reported an error inside its answer  :class:`GenerationError`                never
(an error event or line in a stream)
==============================================  =====================================  =========

.. [1] honouring ``Retry-After`` (up to :data:`MAX_RETRY_AFTER` seconds).
.. [2] a backend may give a more precise message (the model list, the context length).

Retries use exponential backoff with jitter (:data:`BACKOFF_SECONDS` doubling, at most
:data:`MAX_BACKOFF_SECONDS`), up to ``max_retries``. A stream is retried only until its first
piece arrived; a failure after that keeps the text received so far in ``partial_text``.

``timeout`` is a *per-read* limit: the longest the client waits to connect or for the next
bytes (between two pieces of a stream), not the total duration of an answer; ``deadline``
bounds a whole call (:mod:`qwen_backends.backends.deadline`, :meth:`Remote.deadline_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from qwen_backends.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    GenerationError,
    ModelNotFoundError,
    ProtocolError,
    QwenBackendsError,
    RateLimitError,
    ServerError,
)
from qwen_backends.settings import mask_url

__all__ = [
    "BACKOFF_SECONDS",
    "MAX_BACKOFF_SECONDS",
    "MAX_RETRY_AFTER",
    "Failure",
    "Remote",
    "classify",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: First retry waits about this long; each further retry doubles it (plus up to 25 % jitter).
BACKOFF_SECONDS = 0.25
#: Longest wait between two retries chosen by backoff.
MAX_BACKOFF_SECONDS = 8.0
#: Longest ``Retry-After`` honoured; a server asking for more is given up on at once.
MAX_RETRY_AFTER = 30.0

FailureKind = Literal["refused", "broken", "timeout", "status", "protocol", "reported"]


@dataclass(frozen=True)
class Failure:
    """What went wrong talking to a server, independent of the client library.

    Attributes
    ----------
    kind
        ``refused`` (nothing listens), ``broken`` (the connection dropped), ``timeout``,
        ``status`` (an HTTP error status), ``protocol`` (an answer the protocol does not allow)
        or ``reported`` (the server reported an error inside an answer that had begun).
    detail
        The server's own message or a description of what was wrong.
    status
        The HTTP status, for ``status`` (and protocol errors inside an HTTP answer).
    retry_after
        Seconds from a ``Retry-After`` header, when the server sent one.
    """

    kind: FailureKind
    detail: str = ""
    status: int | None = None
    retry_after: float | None = None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> Failure | None:
    """The :class:`Failure` behind a client exception (httpx, ollama, openai), or ``None``.

    Walks the exception chain, so wrappers (``openai.APIConnectionError``, the builtin
    ``ConnectionError`` that the ollama client raises) are seen through. Transport errors are
    recognised by their class names in the httpx family (``httpx``, ``httpcore``, ``h11`` and
    renamed copies such as the ``httpx2`` that recent ``openai`` releases ship), not by identity,
    so every client's copy of httpx is classified the same way. An error the server reported
    inside an answer (an ``{"error": ...}`` event or line of a stream, which ``openai`` raises as
    a bare ``APIError`` and ``ollama`` as a ``ResponseError`` without a status) is ``reported``.
    """
    chain = list(_chain(exc))
    for error in chain:
        status = getattr(error, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return Failure("status", _server_message(error), status, _retry_after(chain))
    for error in chain:
        if isinstance(error, ConnectionRefusedError) or _transport(error, "ConnectError"):
            return Failure("refused", _describe(error))
    for error in chain:
        if isinstance(error, TimeoutError) or _transport(error, "TimeoutException", "ReadTimeout"):
            return Failure("timeout", _describe(error))
        if _transport(error, "RemoteProtocolError", "LocalProtocolError", "ProtocolError"):
            return Failure("protocol", f"the connection closed mid-answer ({_describe(error)})")
        if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
            return Failure("protocol", f"its answer is not valid JSON ({_describe(error)})")
    for error in chain:
        if isinstance(error, ConnectionError) or _transport(
            error, "TransportError", "NetworkError"
        ):
            return Failure("broken", _describe(error))
    for error in chain:
        if _reported(error):
            return Failure("reported", _server_message(error))
    return None


#: Client libraries whose exceptions may carry an error the server reported inside an answer.
_CLIENT_PACKAGES = ("openai", "ollama")


def _reported(error: BaseException) -> bool:
    """Whether ``error`` is a client's exception for an error body inside an answer."""
    if not type(error).__module__.startswith(_CLIENT_PACKAGES):
        return False
    return getattr(error, "body", None) is not None or bool(getattr(error, "error", None))


#: Packages whose exceptions are the HTTP transport's (with renamed copies: httpx2, httpcore2).
_TRANSPORT_PACKAGES = ("httpx", "httpcore", "h11")


def _transport(error: BaseException, *names: str) -> bool:
    """Whether ``error`` is (a subclass of) one of ``names`` from the httpx family."""
    for cls in type(error).__mro__:
        if cls.__name__ in names and cls.__module__.startswith(_TRANSPORT_PACKAGES):
            return True
    return False


class Remote:
    """The error table and retry policy of one server backend (see the module docs).

    Parameters
    ----------
    backend
        The backend's registry name (set on every error it raises).
    server
        What the messages call the server (``"Ollama"``, ``"the vLLM server"``).
    url
        Its address (credentials are masked before it is shown).
    how_to_start
        The command that starts such a server, for "not reachable".
    timeout, timeout_setting
        The per-read timeout and the setting that changes it.
    max_retries
        Retries after the first attempt.
    deadline, deadline_setting
        Seconds a whole call may take (``None``: no limit) and the setting that changes it.
    """

    def __init__(
        self,
        *,
        backend: str,
        server: str,
        url: str,
        how_to_start: str,
        timeout: float,
        timeout_setting: str,
        max_retries: int,
        deadline: float | None = None,
        deadline_setting: str = "",
    ) -> None:
        self.backend = backend
        self.server = server
        self.url = mask_url(url)
        self.how_to_start = how_to_start
        self.timeout = timeout
        self.timeout_setting = timeout_setting
        self.max_retries = max_retries
        self.deadline = deadline
        self.deadline_setting = deadline_setting
        #: First backoff delay in seconds (tests set 0 to retry at once).
        self.backoff = BACKOFF_SECONDS
        self.sleep: Callable[[float], None] = time.sleep

    # -- the table ---------------------------------------------------------------------------

    def deadline_error(self, partial_text: str) -> BackendTimeoutError:
        """The error for a call that passed :attr:`deadline`, with the text received so far."""
        kept = _kept_note(partial_text)
        return BackendTimeoutError(
            f"{self.server} at {self.url} did not finish the answer within the "
            f"{self.deadline:g} s deadline; raise {self.deadline_setting}, ask for fewer tokens "
            f"(max_new_tokens) or check the server's load{kept}",
            partial_text=partial_text,
            backend=self.backend,
        )

    def error(
        self,
        failure: Failure,
        *,
        retries: int = 0,
        partial_text: str = "",
        status_errors: Callable[[Failure], QwenBackendsError | None] | None = None,
    ) -> QwenBackendsError:
        """The library error for ``failure`` (after ``retries`` retries).

        ``status_errors`` lets a backend word a 4xx more precisely (a 404's model list); it
        cannot change the class of a 429 or 5xx.
        """
        server, url, status = self.server, self.url, failure.status
        after = f" (gave up after {retries} retries)" if retries else ""
        where = f"{server} at {url}"
        kept = _kept_note(partial_text)
        if failure.kind == "refused":
            return BackendUnavailableError(
                f"{where} is not reachable ({failure.detail}); start it with "
                f"`{self.how_to_start}`, or fix the address",
                retryable=False,
                backend=self.backend,
                status_code=status,
            )
        if failure.kind == "broken":
            return BackendUnavailableError(
                f"the connection to {where} broke ({failure.detail}){after}; check the server"
                f"{kept}",
                backend=self.backend,
                status_code=status,
            )
        if failure.kind == "timeout":
            return BackendTimeoutError(
                f"{where} sent nothing for {self.timeout:g} s{after}; raise "
                f"{self.timeout_setting} (a per-read limit) or check the server's load{kept}",
                partial_text=partial_text,
                backend=self.backend,
                status_code=status,
            )
        if failure.kind == "reported":
            return GenerationError(
                f"{where} reported an error while generating: {failure.detail}{kept}",
                partial_text=partial_text,
                backend=self.backend,
                status_code=status,
            )
        if failure.kind == "protocol":
            return ProtocolError(
                f"{where} sent an answer its protocol does not allow: {failure.detail}; check "
                f"that the address points at {server}{kept}",
                partial_text=partial_text,
                backend=self.backend,
                status_code=status,
            )
        assert status is not None
        if status == 429:
            return RateLimitError(
                f"{where} is rate limiting requests (HTTP 429: {failure.detail}){after}; send "
                f"fewer requests at once or retry later{kept}",
                partial_text=partial_text,
                backend=self.backend,
                status_code=status,
            )
        if status >= 500:
            return ServerError(
                f"{where} failed with HTTP {status} ({failure.detail}){after}; check its log{kept}",
                partial_text=partial_text,
                backend=self.backend,
                status_code=status,
            )
        specific = status_errors(failure) if status_errors is not None else None
        if specific is not None:
            specific.backend, specific.status_code = self.backend, status
            return specific
        if status in (401, 403):
            return ConfigurationError(
                f"{where} refused the request (HTTP {status}: {failure.detail}); check the API "
                "key in the settings",
                backend=self.backend,
                status_code=status,
            )
        if status == 404:
            return ModelNotFoundError(
                f"{where} answered 404 ({failure.detail}); check the model name and the address",
                backend=self.backend,
                status_code=status,
            )
        if status in (400, 422):
            return ConfigurationError(
                f"{where} rejected the request (HTTP {status}: {failure.detail}); check the "
                "model and the sampling settings",
                backend=self.backend,
                status_code=status,
            )
        return GenerationError(
            f"{where} answered HTTP {status} ({failure.detail})",
            partial_text=partial_text,
            backend=self.backend,
            status_code=status,
        )

    def protocol_error(self, detail: str, *, partial_text: str = "") -> ProtocolError:
        """A :class:`ProtocolError` for an answer that is missing something it must have."""
        error = self.error(Failure("protocol", detail), partial_text=partial_text)
        assert isinstance(error, ProtocolError)
        return error

    # -- the retry decision ------------------------------------------------------------------

    def retry_delay(self, failure: Failure, attempt: int) -> float | None:
        """Seconds to wait before retry ``attempt`` (0-based), or ``None`` to give up."""
        if attempt >= self.max_retries:
            return None
        retryable = failure.kind in ("broken", "timeout") or (
            failure.kind == "status"
            and failure.status is not None
            and (failure.status == 429 or failure.status >= 500)
        )
        if not retryable:
            return None
        backoff = min(MAX_BACKOFF_SECONDS, self.backoff * 2**attempt)
        delay = backoff * (1 + random.random() / 4)
        if failure.retry_after is not None:
            if failure.retry_after > MAX_RETRY_AFTER:
                return None
            delay = max(delay, failure.retry_after)
        logger.warning(
            "%s request failed (%s %s); retry %d of %d in %.2f s",
            self.server,
            failure.kind,
            failure.status or failure.detail,
            attempt + 1,
            self.max_retries,
            delay,
        )
        return delay

    # -- running calls -------------------------------------------------------------------------

    def translate(
        self,
        exc: BaseException,
        *,
        retries: int = 0,
        partial_text: str = "",
        status_errors: Callable[[Failure], QwenBackendsError | None] | None = None,
    ) -> BaseException:
        """The library error for a client exception (unknown exceptions are returned as is)."""
        if isinstance(exc, QwenBackendsError):
            return exc
        failure = classify(exc)
        if failure is None:
            return exc
        return self.error(
            failure, retries=retries, partial_text=partial_text, status_errors=status_errors
        )

    def call(
        self,
        request: Callable[[], T],
        status_errors: Callable[[Failure], QwenBackendsError | None] | None = None,
    ) -> T:
        """Run ``request``, retrying what may succeed on another try, translating the rest."""
        attempt = 0
        while True:
            try:
                return request()
            except Exception as exc:
                failure = None if isinstance(exc, QwenBackendsError) else classify(exc)
                delay = None if failure is None else self.retry_delay(failure, attempt)
                if delay is None:
                    raise self.translate(exc, retries=attempt, status_errors=status_errors) from exc
                attempt += 1
                self.sleep(delay)

    async def acall(
        self,
        request: Callable[[], Awaitable[T]],
        status_errors: Callable[[Failure], QwenBackendsError | None] | None = None,
    ) -> T:
        """Async :meth:`call`."""
        attempt = 0
        while True:
            try:
                return await request()
            except Exception as exc:
                failure = None if isinstance(exc, QwenBackendsError) else classify(exc)
                delay = None if failure is None else self.retry_delay(failure, attempt)
                if delay is None:
                    raise self.translate(exc, retries=attempt, status_errors=status_errors) from exc
                attempt += 1
                await asyncio.sleep(delay)


def _kept_note(partial_text: str) -> str:
    """What an error message says of the text received before it (nothing when there is none)."""
    if not partial_text:
        return ""
    return f"; the {len(partial_text)} characters received are kept in partial_text"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _server_message(exc: BaseException) -> str:
    """The server's own words: ``{"error": {"message": ...}}``, ``{"error": "..."}`` or text."""
    body = getattr(exc, "body", None)
    if body is None:
        body = getattr(exc, "error", None)
    if isinstance(body, str):
        with contextlib.suppress(ValueError):
            body = json.loads(body)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return _short(str(message))
    if isinstance(body, str) and body.strip():
        return _short(body)
    return _short(str(getattr(exc, "message", "") or exc))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(chain: list[BaseException]) -> float | None:
    for error in chain:
        response = getattr(error, "response", None)
        headers = getattr(response, "headers", None)
        if headers is None:
            continue
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: fall back to backoff
    return None
