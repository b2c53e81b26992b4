"""A fault-injecting loopback proxy for the server backends' tests (no network beyond 127.0.0.1).

:class:`FaultProxy` listens on 127.0.0.1 and sits between a backend and its server (the Ollama
stand-in or a real vLLM server). Requests to a generation endpoint (``/api/chat``,
``/v1/chat/completions``) get the fault of :attr:`FaultProxy.mode`; everything else (version
checks, model listings) is relayed unchanged, so a backend's first-use checks pass and the fault
hits the generation itself. Modes:

``refused``    nothing listens at :attr:`FaultProxy.url` (a closed port)
``503``        ``503 Service Unavailable`` with a JSON error body
``429``        ``429 Too Many Requests`` with ``Retry-After: <retry_after>``
``hang``       nothing is sent for :attr:`FaultProxy.hang` seconds, then the connection closes
``html``       status 200 with an HTML page (a captive portal or a wrong address)
``truncated``  the upstream's answer with the JSON body cut in half (Content-Length matching)
``cut``        the first :attr:`FaultProxy.cut_after` bytes of the upstream's answer (a stream
               or not), then the connection closes without ending the body
``think``      the upstream's answer with a thinking block put before its text, the tags split
               across stream chunks (``<thi`` | ``nk>...</th`` | ``ink>``): a runtime that leaks
               thinking despite the non-thinking switch
``tool_call``  the upstream's answer with a ``<tool_call>`` block for :data:`INJECTED_CALL` put
               before its text, split across stream chunks like ``think``: a model calling a
               tool (a runtime without a tool parser leaves the block in the content)
``error``      the upstream's stream up to its :attr:`FaultProxy.error_after`-th piece of
               text, then the server's own error in the protocol's form (an ``{"error": ...}``
               line or event carrying :data:`INJECTED_ERROR`): a runtime that fails mid-answer
``drip``       the upstream's answer :attr:`FaultProxy.drip_bytes` bytes at a time, one piece
               every :attr:`FaultProxy.drip` seconds: a server that never goes silent for a
               whole per-read timeout but takes far longer than the call may
``pass``       relay everything (a control)

``inject`` merges fields into every relayed generation request body (``logit_bias`` ...).

Every request to a generation endpoint is counted in :attr:`FaultProxy.hits`, so tests can
assert how often a backend retried. Everything is bounded: a hang lasts at most
:data:`MAX_HANG` seconds, upstream reads time out after ``upstream_timeout``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "GENERATION_PATHS",
    "INJECTED_CALL",
    "INJECTED_ERROR",
    "LEAKED_THINKING",
    "MAX_HANG",
    "MODES",
    "FaultProxy",
    "closed_port",
    "wait_until",
]

MODES = (
    "refused", "503", "429", "hang", "html", "truncated", "cut", "think", "tool_call", "error",
    "drip", "pass",
)  # fmt: skip
#: The server's message in an ``error`` proxy's error line or event.
INJECTED_ERROR = "injected: the engine failed mid-answer"
#: The thinking a ``think`` proxy adds; it must never reach a caller.
LEAKED_THINKING = "secret plan"
_THINK_PIECES = ("<thi", f"nk>\n{LEAKED_THINKING}\n</th", "ink>\n\n")
#: The call a ``tool_call`` proxy adds: ``(name, arguments)``.
INJECTED_CALL = ("get_weather", {"city": "Oslo"})
_CALL_PIECES = (
    "<tool_",
    f'call>\n{{"name": "{INJECTED_CALL[0]}", "argu',
    f'ments": {json.dumps(INJECTED_CALL[1])}}}\n</tool',
    "_call>\n",
)
#: Paths whose requests get the fault (anything ending with one of these).
GENERATION_PATHS = ("/api/chat", "/chat/completions")
#: Longest a ``hang`` keeps a connection silent.
MAX_HANG = 10.0

_HTML = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
    b"<body><h1>Welcome to the guest network</h1></body></html>"
)
#: Headers not relayed as they are (the proxy sets its own framing).
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class FaultProxy:
    """A loopback HTTP proxy that injects one kind of fault into generation requests.

    Parameters
    ----------
    upstream
        Root of the real server (``http://127.0.0.1:PORT``, no path); requests keep their path.
        ``None`` is allowed for modes that never relay (``503``, ``429``, ``hang``, ``html``
        when only generation endpoints are asked).
    mode
        One of :data:`MODES`; may be changed between requests.
    retry_after
        The ``Retry-After`` header of a ``429`` (seconds).
    hang
        Seconds a ``hang`` stays silent (capped at :data:`MAX_HANG`).
    cut_after
        Bytes of the answer body a ``cut`` forwards before closing.
    upstream_timeout
        Seconds the proxy waits for the upstream.
    inject
        Fields merged into every relayed generation request (a JSON body).
    error_after
        Pieces of text an ``error`` proxy relays before the server's error.
    drip, drip_bytes
        A ``drip`` proxy's pause between pieces (seconds) and its piece size.

    Attributes
    ----------
    hits
        Requests to a generation endpoint received so far.
    """

    def __init__(
        self,
        upstream: str | None,
        mode: str = "pass",
        *,
        retry_after: float = 0.0,
        hang: float = 3.0,
        cut_after: int = 120,
        upstream_timeout: float = 120.0,
        inject: dict[str, Any] | None = None,
        error_after: int = 3,
        drip: float = 0.1,
        drip_bytes: int = 32,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; choose one of {', '.join(MODES)}")
        self.upstream = upstream.rstrip("/") if upstream else None
        self.mode = mode
        self.retry_after = retry_after
        self.hang = min(hang, MAX_HANG)
        self.cut_after = cut_after
        self.upstream_timeout = upstream_timeout
        self.inject = inject or {}
        self.error_after = error_after
        self.drip = drip
        self.drip_bytes = drip_bytes
        self.hits = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._port = closed_port() if mode == "refused" else 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (append ``/v1`` for an OpenAI-compatible client)."""
        port = self._port if self._httpd is None else self._httpd.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> FaultProxy:
        """Listen in a background thread (a ``refused`` proxy never listens)."""
        if self.mode == "refused":
            return self
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and end hanging connections."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler --------------------------------------------------------------------

    def _count(self) -> None:
        with self._lock:
            self.hits += 1

    def _relay(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        if self.upstream is None:
            raise RuntimeError(f"fault mode {self.mode!r} needs an upstream for {path}")
        parts = urllib.parse.urlsplit(self.upstream)
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.upstream_timeout
        )
        connection.request(method, path, body=body, headers=headers)
        return connection, connection.getresponse()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out close the socket mid-answer; that is the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET", None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle("POST", self.rfile.read(length) if length else b"")

    def do_DELETE(self) -> None:
        self._handle("DELETE", None)

    def _handle(self, method: str, body: bytes | None) -> None:
        owner = self.owner
        path = urllib.parse.urlsplit(self.path).path
        faulty = path.endswith(GENERATION_PATHS)
        mode = owner.mode if faulty else "pass"
        if faulty:
            owner._count()
            if owner.inject and body:
                body = json.dumps({**json.loads(body), **owner.inject}).encode()
        if mode == "503":
            self._json(503, {"error": {"message": "injected: the server is overloaded"}})
        elif mode == "429":
            error = {"error": {"message": "injected: too many requests"}}
            self._json(429, error, {"Retry-After": f"{owner.retry_after:g}"})
        elif mode == "hang":
            owner._stop.wait(owner.hang)
            self.close_connection = True
        elif mode == "html":
            self._send(200, _HTML, {"Content-Type": "text/html; charset=utf-8"})
        else:
            self._forward(method, body, mode)

    def _forward(self, method: str, body: bytes | None, mode: str) -> None:
        headers = {
            key: value for key, value in self.headers.items() if key.lower() not in _HOP | {"host"}
        }
        connection, response = self.owner._relay(method, self.path, body, headers)
        try:
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP}
            chunked = response.getheader("Transfer-Encoding", "").lower() == "chunked"
            if mode == "pass":
                self._pass(response, kept, chunked)
            elif mode == "truncated":
                data = response.read()
                self._send(response.status, data[: max(1, len(data) // 2)], kept)
            elif mode in ("think", "tool_call"):
                data = response.read()
                if response.status == 200:  # an error answer (a 400) goes back unchanged
                    pieces = _THINK_PIECES if mode == "think" else _CALL_PIECES
                    data = _with_thinking(data, pieces)
                self._send(response.status, data, kept)
            elif mode == "error":
                data = response.read()
                if response.status == 200:
                    data = _with_error(data, self.owner.error_after)
                self._send(response.status, data, kept)
            elif mode == "drip":
                self._drip(response.status, response.read(), kept)
            else:  # cut
                self._cut(response, kept, chunked)
        finally:
            connection.close()

    def _pass(self, response: Any, headers: dict[str, str], chunked: bool) -> None:
        if not chunked:
            self._send(response.status, response.read(), headers)
            return
        self._start_chunked(response.status, headers)
        while piece := response.read1(65536):
            self._chunk(piece)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self, response: Any, headers: dict[str, str], chunked: bool) -> None:
        budget = self.owner.cut_after
        if chunked:
            self._start_chunked(response.status, headers)
            while budget > 0 and (piece := response.read1(min(budget, 65536))):
                self._chunk(piece)
                budget -= len(piece)
        else:
            data = response.read()
            self.send_response(response.status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))  # promises more than it sends
            self.end_headers()
            self.wfile.write(data[: min(budget, len(data) // 2)])
            self.wfile.flush()
        # End the connection without the body's end: a server that died mid-answer.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _drip(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        owner = self.owner
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        with contextlib.suppress(OSError):  # the client gave up: the point of the test
            for start in range(0, len(data), owner.drip_bytes):
                if owner._stop.wait(owner.drip):
                    break
                self.wfile.write(data[start : start + owner.drip_bytes])
                self.wfile.flush()
        self.close_connection = True

    # -- writing -----------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        self._send(status, json.dumps(payload).encode(), headers)

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_chunked(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _with_thinking(data: bytes, pieces: tuple[str, ...] = _THINK_PIECES) -> bytes:
    """``data`` (one JSON answer, NDJSON or server-sent events) with ``pieces`` (a thinking
    block by default) first."""
    text = data.decode()
    if text.lstrip().startswith("{") and "\n{" not in text.strip():
        answer = json.loads(text)
        message = answer["choices"][0]["message"] if "choices" in answer else answer["message"]
        message["content"] = "".join(pieces) + (message.get("content") or "")
        return json.dumps(answer).encode()
    sse = text.lstrip().startswith("data:")
    separator = "\n\n" if sse else "\n"
    events = [event for event in text.split(separator) if event.strip()]
    out: list[str] = []
    done = False
    for event in events:
        payload = event.removeprefix("data:").strip() if sse else event
        if not done and payload.startswith("{"):
            parsed = json.loads(payload)
            holder = _content_holder(parsed)
            if holder is not None and holder.get("content"):
                for piece in pieces:
                    holder_copy = dict(holder, content=piece)
                    _set_holder(parsed, holder_copy)
                    copy = json.dumps(parsed)
                    out.append(f"data: {copy}" if sse else copy)
                _set_holder(parsed, holder)
                done = True
        out.append(event)
    return (separator.join(out) + separator).encode()


def _with_error(data: bytes, after: int) -> bytes:
    """``data`` (a stream: NDJSON or server-sent events) cut after its ``after``-th piece of
    text and ended by the server's error, as Ollama (a line) or vLLM (an event) sends it."""
    text = data.decode()
    sse = text.lstrip().startswith("data:")
    separator = "\n\n" if sse else "\n"
    out: list[str] = []
    for event in (event for event in text.split(separator) if event.strip()):
        if after <= 0:
            break
        out.append(event)
        payload = event.removeprefix("data:").strip() if sse else event
        if payload.startswith("{"):
            holder = _content_holder(json.loads(payload))
            if holder is not None and holder.get("content"):
                after -= 1
    if sse:
        error = {"error": {"message": INJECTED_ERROR, "type": "InternalServerError", "code": 500}}
        out.append(f"data: {json.dumps(error)}")
    else:
        out.append(json.dumps({"error": INJECTED_ERROR}))
    return (separator.join(out) + separator).encode()


def _content_holder(chunk: dict[str, Any]) -> dict[str, Any] | None:
    if chunk.get("choices"):
        delta: dict[str, Any] | None = chunk["choices"][0].get("delta")
        return delta
    message: dict[str, Any] | None = chunk.get("message")
    return message


def _set_holder(chunk: dict[str, Any], holder: dict[str, Any]) -> None:
    if chunk.get("choices"):
        chunk["choices"][0]["delta"] = holder
    else:
        chunk["message"] = holder


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
