"""What one request may cost ``qwen-backends serve``: body size, JSON nesting, read time.

The limits are :class:`~qwen_backends.settings.ServeSettings` fields:

- ``max_body_bytes`` -- a larger body gets 413 before it is read (a declared ``Content-Length``)
  or as soon as the running count passes the limit (a chunked body), so memory stays bounded;
- ``max_json_depth`` -- deeper nesting of objects/arrays gets 400 (the JSON parser's own
  recursion limit is also answered 400, never 500);
- ``header_timeout`` -- a connection that has not sent a complete request head this long after
  it opened (or after its previous answer) gets 408 and is closed: enforced by the HTTP
  protocol class (:func:`uvicorn_config`), since the app never sees an unfinished head;
- ``body_timeout`` -- a body not received this long after its head gets 408.

Refusals have OpenAI's error shape. A client that disconnects while sending its body is logged
on one INFO line, without a traceback. :class:`QueryRedaction` keeps query-string values (an
API key put in the URL) out of the access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import QwenBackendsError

if TYPE_CHECKING:
    from starlette.requests import Request as HTTPRequest

    from qwen_backends.settings import ServeSettings

__all__ = [
    "ClientDisconnected",
    "QueryRedaction",
    "RequestLimitError",
    "error_body",
    "json_depth",
    "read_json_body",
    "uvicorn_config",
]

logger = logging.getLogger("qwen_backends.serve")


class RequestLimitError(QwenBackendsError):
    """A request refused by a serve limit or because its body is not usable JSON.

    Attributes
    ----------
    status
        The HTTP status (400, 408 or 413).
    code
        OpenAI-style error code.
    """

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ClientDisconnected(QwenBackendsError):
    """The client went away before its request body was complete (nothing can be answered)."""


def error_body(message: str, code: str | None, kind: str = "invalid_request_error") -> bytes:
    """OpenAI's error object as JSON bytes."""
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(payload, ensure_ascii=False).encode()


async def read_json_body(request: HTTPRequest, serve: ServeSettings) -> Any:
    """The request's JSON body, within ``serve``'s size, time and depth limits.

    Raises
    ------
    RequestLimitError
        413 for a body over ``max_body_bytes``, 408 for one slower than ``body_timeout``, 400
        for invalid JSON or nesting deeper than ``max_json_depth``.
    ClientDisconnected
        When the client disconnects before the body is complete.
    """
    from starlette.requests import ClientDisconnect

    limit = serve.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"{int(declared):,} bytes", limit)

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large("more", limit)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(read(), serve.body_timeout)
    except asyncio.TimeoutError:
        raise RequestLimitError(
            f"the request body did not arrive within {serve.body_timeout:g} s (serve."
            "body_timeout); send it at once",
            408,
            "request_timeout",
        ) from None
    except ClientDisconnect:
        raise ClientDisconnected("the client disconnected while sending the request") from None
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep(serve.max_json_depth) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestLimitError(
            f"the request body is not valid JSON ({exc})", 400, "invalid_json"
        ) from None
    if json_depth(body, serve.max_json_depth) > serve.max_json_depth:
        raise _too_deep(serve.max_json_depth)
    return body


def _too_large(size: str, limit: int) -> RequestLimitError:
    return RequestLimitError(
        f"the request body ({size}) is larger than {limit:,} bytes (serve.max_body_bytes, "
        "QWEN_SERVE__MAX_BODY_BYTES); send a shorter conversation",
        413,
        "request_too_large",
    )


def _too_deep(limit: int) -> RequestLimitError:
    return RequestLimitError(
        f"the request body nests objects/arrays deeper than {limit} levels (serve."
        "max_json_depth, QWEN_SERVE__MAX_JSON_DEPTH); flatten it",
        400,
        "json_too_deep",
    )


def json_depth(value: Any, stop: int | None = None) -> int:
    """How deeply objects/arrays nest in ``value`` (a scalar is 0, ``[]`` is 1).

    Iterative (no recursion limit); stops counting past ``stop`` when given.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if stop is not None and deepest > stop:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


class QueryRedaction(logging.Filter):
    """Hide query-string values in uvicorn's access log (``/v1/models?api_key=***``).

    The API takes no query parameters, so a value there is at best noise and at worst a key a
    client put in the URL; the key names stay, for debugging.
    """

    _VALUE = re.compile(r"=[^&#]*")

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the path argument of an access-log record; never drops a record."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, mark, query = args[2].partition("?")
            if mark:
                record.args = (*args[:2], f"{path}?{self._VALUE.sub('=***', query)}", *args[3:])
        return True


def install_query_redaction() -> None:
    """Add :class:`QueryRedaction` to the ``uvicorn.access`` logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(item, QueryRedaction) for item in access.filters):
        access.addFilter(QueryRedaction())


def uvicorn_config(app: Any, serve: ServeSettings, **options: Any) -> Any:
    """A ``uvicorn.Config`` serving ``app`` under ``serve``'s limits.

    The HTTP protocol is uvicorn's own (httptools or h11) with a request-head deadline
    (``serve.header_timeout``), and the access log hides query-string values. ``options`` go to
    ``uvicorn.Config`` (``log_level``, ``timeout_graceful_shutdown``...).
    """
    import uvicorn

    install_query_redaction()
    options.setdefault("host", serve.host)
    options.setdefault("port", serve.port)
    return uvicorn.Config(app, http=_head_timed_protocol(serve.header_timeout), **options)


def _head_timed_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing a connection whose request head is late with a 408."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol
    body = error_body(
        f"the request head did not arrive within {seconds:g} s (serve.header_timeout); send "
        "the whole request at once",
        "request_timeout",
    )
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    class HeadTimedProtocol(base):
        """Arms a timer when the connection opens and after each answer; a new request cycle
        (a complete head) disarms it, else the timer answers 408 and closes."""

        _head_timer: asyncio.TimerHandle | None = None
        _waiting_for: object = None
        _bytes_since_armed = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._bytes_since_armed = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            # Armed first: a pipelined request that super() starts now disarms it.
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_for = self.cycle
            self._bytes_since_armed = False
            self._head_timer = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._waiting_for:
                return  # closed already, or a request head arrived in time
            if self._bytes_since_armed:  # a head was started but not finished
                logger.info("closed a connection whose request head was still incomplete")
                self.transport.write(answer)
            self.transport.close()

    return HeadTimedProtocol
