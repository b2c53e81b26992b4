"""The ASGI app of ``qwen-backends serve``: the OpenAI chat API over one backend, non-thinking.

Endpoints (all under ``/v1``, JSON in and out):

- ``GET /v1/models``, ``GET /v1/models/{id}`` -- the one model served;
- ``POST /v1/chat/completions`` -- non-streamed, or server-sent events with ``stream: true``
  (``data: {chunk}`` lines, then ``data: [DONE]``; ``stream_options.include_usage`` adds a final
  chunk with ``usage``);
- ``POST /v1/completions`` -- the legacy completions API for scoring raw prompts (no chat
  template): ``echo``, ``logprobs: N``, ``max_tokens`` 0 or 1, as lm-evaluation-harness's
  ``local-completions`` sends them (see :mod:`qwen_backends.serve.completions`);
- ``POST /v1/tokenize`` -- ``{"model", "messages", "tools"?}`` to ``{"count", "tokens"}``: the
  exact token count of the rendered non-thinking prompt (``backend.prompt_ids``), or 400 where
  the backend cannot know it;
- ``GET /health`` -- ``{"status": "ok"}`` (no key needed).

Every error has OpenAI's shape (see :func:`~qwen_backends.serve.openai_schema.error_payload`).
Admission follows :mod:`qwen_backends.serve.concurrency`. A client that disconnects cancels its
request: its backend stream is closed, its queue place or slot given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from qwen_backends.errors import ConfigurationError, QwenBackendsError, first_line
from qwen_backends.serve.completions import answer_completion, parse_completion_request
from qwen_backends.serve.concurrency import AdmissionGate
from qwen_backends.serve.limits import (
    ClientDisconnected,
    RequestLimitError,
    error_body,
    read_json_body,
)
from qwen_backends.serve.openai_schema import (
    ChatCall,
    ModelNotServedError,
    UnauthorizedError,
    chat_logprobs,
    chunk,
    completion,
    error_payload,
    new_completion_id,
    parse_chat_request,
    parse_tokenize_request,
    tool_call_deltas,
    usage,
)

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.settings import ServeSettings

__all__ = ["LOOPBACK_HOSTS", "ServeState", "check_bind", "create_app"]

logger = logging.getLogger("qwen_backends.serve")

#: Seconds the app waits at shutdown for cancelled requests to hand their backend back.
CLEANUP_WAIT = 10.0


@dataclass
class ServeState:
    """What the endpoints share.

    Attributes
    ----------
    backend
        The backend every request goes to.
    gate
        Its admission policy.
    models
        Model ids the server answers to (the backend's model name first).
    api_key
        The key clients must send, or ``None`` for none.
    tasks
        Requests being answered now (awaited at shutdown before the backend closes).
    """

    backend: ModelBackend
    gate: AdmissionGate
    models: list[str]
    api_key: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def create_app(
    backend: ModelBackend,
    serve: ServeSettings | None = None,
    *,
    owns_backend: bool = True,
) -> Starlette:
    """Build the ASGI app serving ``backend``.

    Parameters
    ----------
    backend
        A started backend (``create_backend(...)``).
    serve
        The server settings (``settings.serve``); default: the backend's settings.
    owns_backend
        Close the backend when the app shuts down.
    """
    serve = serve or backend.settings.serve
    limits = serve  # narrowed to ServeSettings for the endpoints below
    key = serve.api_key.get_secret_value() if serve.api_key is not None else None
    state = ServeState(
        backend=backend,
        gate=AdmissionGate(
            concurrent=backend.capabilities.native_async,
            max_queue=serve.max_queue,
            backend=backend.name,
        ),
        models=[backend.model_name],
        api_key=key or None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logger.info(
            "serving %s (%s backend, non-thinking); admission: %s",
            backend.model_name,
            backend.name,
            state.gate.policy,
        )
        yield
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=CLEANUP_WAIT)
        if owns_backend:
            await backend.aclose()

    async def http_error(request: HTTPRequest, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            message = f"no route {request.url.path}; see docs/serve.md for the endpoints"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = first_line(exc)
        return _json(
            status,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )

    async def models(request: HTTPRequest) -> Response:
        _authorize(state, request)
        return _json(200, {"object": "list", "data": [_model(state, m) for m in state.models]})

    async def model(request: HTTPRequest) -> Response:
        _authorize(state, request)
        name = request.path_params["name"]
        if name not in state.models:
            raise ModelNotServedError(
                f"the model {name!r} is not served here; use {state.models[0]!r}"
            )
        return _json(200, _model(state, name))

    async def chat_completions(request: HTTPRequest) -> Response:
        _authorize(state, request)
        settings = state.backend.settings
        call = parse_chat_request(
            await read_json_body(request, limits),
            state.models,
            settings.sampling,
            allow_control_tokens=settings.allow_control_tokens,
        )
        return _Answer(state, call)

    async def tokenize(request: HTTPRequest) -> Response:
        _authorize(state, request)
        messages, tools = parse_tokenize_request(
            await read_json_body(request, limits),
            state.models,
            allow_control_tokens=state.backend.settings.allow_control_tokens,
        )
        ids = await asyncio.to_thread(state.backend.prompt_ids, messages, tools=tools or None)
        return _json(200, {"model": state.models[0], "count": len(ids), "tokens": ids})

    async def completions(request: HTTPRequest) -> Response:
        _authorize(state, request)
        call = parse_completion_request(await read_json_body(request, limits), state.models)
        payload = await state.gate.run(lambda: answer_completion(state.backend, call))
        return _json(200, payload)

    async def health(request: HTTPRequest) -> Response:
        return _json(200, {"status": "ok"})

    async def library_error(request: HTTPRequest, exc: Exception) -> Response:
        return _error_response(exc)

    async def limit_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, RequestLimitError)
        return Response(
            error_body(str(exc), exc.code),
            status_code=exc.status,
            media_type="application/json",
            headers={"Connection": "close"} if exc.status != 400 else None,
        )

    async def client_gone(request: HTTPRequest, exc: Exception) -> Response:
        logger.info("%s %s: %s", request.method, request.url.path, exc)
        return Response(status_code=400)  # nobody reads it: the connection is gone

    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{name:path}", model, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/tokenize", tokenize, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={
            HTTPException: http_error,
            RequestLimitError: limit_error,
            ClientDisconnected: client_gone,
            QwenBackendsError: library_error,
            Exception: library_error,
        },
        lifespan=lifespan,
    )
    app.state.serve = state
    return app


# -- helpers -----------------------------------------------------------------------------------


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _error_response(exc: BaseException) -> Response:
    status, body, headers = error_payload(exc)
    if status >= 500 and not isinstance(exc, QwenBackendsError):
        logger.error("internal error answering a request", exc_info=exc)
    return _json(status, body, headers)


def _authorize(state: ServeState, request: HTTPRequest) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not (
        scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), state.api_key.encode())
    ):
        raise UnauthorizedError(
            "missing or wrong API key; send 'Authorization: Bearer KEY' with the key the server "
            "was started with"
        )


def _model(state: ServeState, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "qwen-backends"}


def _sse(payload: Any) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


class _Answer(Response):
    """The ASGI response for one chat completion, streamed or not.

    It watches for the client's disconnect while it works and cancels itself when the client
    goes, so the backend stream is closed and the admission slot given back.
    """

    def __init__(self, state: ServeState, call: ChatCall) -> None:
        self.state = state
        self.call = call
        self.id = new_completion_id()
        self.created = int(time.time())
        self.client_gone = False
        self.finished = False
        self.started = False
        self.headers_sent = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.state.tasks.add(task)
        watcher = asyncio.ensure_future(self._watch(receive, task))
        try:
            if self.call.stream:
                await self._stream(send)
            else:
                await self._complete(send)
        except _ClientGone:
            self.client_gone = True
        except asyncio.CancelledError:
            # The client went away, or a stopping server cancelled the request after its grace
            # period: either way the answer ends here, cleanly (an unfinished stream has already
            # sent its shutdown event).
            if not self.client_gone and not self.headers_sent:
                with contextlib.suppress(Exception):
                    await self._send_json(send, 503, _shutdown_error(), {"Retry-After": "5"})
        finally:
            watcher.cancel()
            self.state.tasks.discard(task)

    async def _watch(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.client_gone = True
                    task.cancel()
                return

    async def _send(self, send: Send, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.headers_sent = True
        try:
            await send(message)
        except OSError as exc:  # ASGI 2.4 servers raise on a closed connection
            raise _ClientGone from exc

    async def _send_json(self, send: Send, status: int, payload: Any, headers: Any = ()) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        await self._send(
            send,
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *[(k.lower().encode(), v.encode()) for k, v in dict(headers).items()],
                ],
            },
        )
        self.finished = True
        await self._send(send, {"type": "http.response.body", "body": body})

    async def _send_error(self, send: Send, exc: BaseException) -> None:
        status, body, headers = error_payload(exc)
        if status >= 500 and not isinstance(exc, QwenBackendsError):
            logger.error("internal error answering a request", exc_info=exc)
        await self._send_json(send, status, body, headers)

    # -- non-streamed ------------------------------------------------------------------------

    async def _complete(self, send: Send) -> None:
        call, backend = self.call, self.state.backend
        try:
            generation = await self.state.gate.run(
                lambda: backend.agenerate(
                    call.messages,
                    call.sampling,
                    response_format=call.response_format,
                    tools=call.tools or None,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._send_error(send, exc)
            return
        await self._send_json(send, 200, completion(self.id, call.model, generation))

    # -- streamed ------------------------------------------------------------------------------

    async def _stream(self, send: Send) -> None:
        call, backend, gate = self.call, self.state.backend, self.state.gate
        try:
            await gate.acquire()
        except Exception as exc:
            await self._send_error(send, exc)
            return
        started = time.perf_counter()
        stream = None
        try:
            try:
                stream = backend.astream(
                    call.messages,
                    call.sampling,
                    response_format=call.response_format,
                    tools=call.tools or None,
                )
                # The first piece before the status line: errors that surface when generation
                # starts (context length, an unreachable server) still get their own status.
                first = await anext(stream, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._send_error(send, exc)
                return
            await self._send(
                send, {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS}
            )
            self.started = True
            await self._event(send, self._chunk(delta={"role": "assistant", "content": ""}))
            try:
                if first is not None:
                    await self._event(send, self._chunk(delta={"content": first}))
                    async for piece in stream:
                        await self._event(send, self._chunk(delta={"content": piece}))
            except (asyncio.CancelledError, _ClientGone):
                raise
            except Exception as exc:
                _, body, _ = error_payload(exc)
                if not isinstance(exc, QwenBackendsError):
                    logger.error("internal error while streaming", exc_info=exc)
                await self._event(send, body)
                await self._end(send)
                return
            await self._finish(send, stream.generation)
        except asyncio.CancelledError:
            if not self.client_gone and self.started and not self.finished:
                # Shutdown (not the client) cancelled the stream: say so before closing.
                with contextlib.suppress(Exception):
                    await self._event(send, _shutdown_error())
                    await self._end(send)
            raise
        finally:
            try:
                if stream is not None:
                    await stream.aclose()
            finally:
                gate.release(time.perf_counter() - started)

    def _chunk(self, **kwargs: Any) -> dict[str, Any]:
        return chunk(
            self.id, self.call.model, self.created, with_usage=self.call.include_usage, **kwargs
        )

    async def _event(self, send: Send, payload: Any) -> None:
        message = {"type": "http.response.body", "body": _sse(payload), "more_body": True}
        await self._send(send, message)

    async def _end(self, send: Send) -> None:
        self.finished = True
        await self._send(send, {"type": "http.response.body", "body": _sse("[DONE]")})

    async def _finish(self, send: Send, generation: Any) -> None:
        if generation is not None and generation.tool_calls:
            await self._event(
                send, self._chunk(delta={"tool_calls": tool_call_deltas(generation.tool_calls)})
            )
        reason = generation.finish_reason if generation is not None else "stop"
        await self._event(
            send, self._chunk(finish_reason=reason, logprobs=chat_logprobs(generation))
        )
        if self.call.include_usage:
            await self._event(
                send,
                self._chunk(no_choices=True, usage_value=usage(generation) if generation else None),
            )
        await self._end(send)


def _shutdown_error() -> dict[str, Any]:
    return {
        "error": {
            "message": "the server is shutting down and cancelled this stream; retry on a "
            "running server",
            "type": "server_error",
            "param": None,
            "code": "server_shutdown",
        }
    }


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond loopback without an API key.

    Raises
    ------
    ConfigurationError
        For a non-loopback ``host`` and no key.
    """
    if host in LOOPBACK_HOSTS or api_key:
        return
    raise ConfigurationError(
        f"binding to {host} exposes the model to the network; set an API key with --api-key or "
        "QWEN_SERVE__API_KEY (or bind to 127.0.0.1)"
    )


#: Hosts that only this machine can reach.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
