"""What one request may cost the server: body size, JSON nesting and read times, each at and
beyond its limit, on loopback (uvicorn in a thread, raw sockets for the slow clients)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Served

from qwen_backends.backends.base import ModelBackend
from qwen_backends.errors import ConfigurationError
from qwen_backends.serve.limits import QueryRedaction, json_depth
from qwen_backends.settings import ServeSettings, Settings

LIMITS = {"max_body_bytes": 2048, "max_json_depth": 4, "header_timeout": 0.5, "body_timeout": 0.5}
#: Upper bound for waiting on the server; the limits themselves are far shorter.
PATIENCE = 30.0


@pytest.fixture(scope="module")
def limited(hf_backend: ModelBackend) -> Iterator[Served]:
    with Served(hf_backend, **LIMITS) as served:
        yield served


def _post(served: Served, body: bytes, path: str = "/v1/tokenize", **headers: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=PATIENCE)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _tokenize_body(served: Served, size: int | None = None, **extra: Any) -> bytes:
    body = json.dumps({"model": served.model, "messages": [{"role": "user", "content": "hi"}]})
    body = body[:-1] + "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in extra.items())
    body += "}"
    return (body + " " * (size - len(body)) if size else body).encode()


def _raw(served: Served, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=PATIENCE)
    sock.sendall(data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- body size -----------------------------------------------------------------------------------


def test_a_body_at_the_limit_is_answered_and_one_byte_more_gets_413(limited: Served) -> None:
    status, answer = _post(limited, _tokenize_body(limited, size=2048))
    assert status == 200 and answer["count"] > 0
    status, answer = _post(limited, _tokenize_body(limited, size=2049))
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"
    assert "2,048 bytes (serve.max_body_bytes" in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}


def test_a_chunked_body_is_cut_off_at_the_limit(limited: Served) -> None:
    head = b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"400\r\n" + b"{" + b" " * 1023 + b"\r\n"  # 1,024 bytes a chunk, no length given
    with _raw(limited, head + chunk * 3) as sock:  # never finished: refused at 3,072 bytes
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"


# -- nesting -------------------------------------------------------------------------------------


def test_nesting_at_the_limit_is_read_and_deeper_gets_400(limited: Served) -> None:
    tool = {"type": "function", "function": {"name": "f"}}  # root, tools, tool, function: 4
    status, answer = _post(limited, _tokenize_body(limited, tools=[tool]))
    assert status == 200, answer
    deeper = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    status, answer = _post(limited, _tokenize_body(limited, tools=[deeper]))
    assert (status, answer["error"]["code"]) == (400, "json_too_deep")


def test_nesting_past_the_parsers_own_limit_is_400_not_500(
    hf_backend: ModelBackend,
) -> None:
    with Served(hf_backend, max_body_bytes=1_000_000) as served:
        status, answer = _post(served, b"[" * 200_000 + b"]" * 200_000)
    assert (status, answer["error"]["code"]) == (400, "json_too_deep")


def test_json_depth_counts_containers_without_recursion() -> None:
    assert [json_depth(v) for v in (1, "x", [], {"a": [1, {"b": {}}]})] == [0, 0, 1, 4]
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep) == 100_001
    assert json_depth(deep, stop=10) == 11


# -- slow clients --------------------------------------------------------------------------------


def test_a_body_slower_than_body_timeout_gets_408(limited: Served) -> None:
    head = (
        b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    with _raw(limited, head) as sock:
        reply = _read_all(sock)  # the server answers, then closes
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_a_head_slower_than_header_timeout_gets_408_and_an_idle_connection_is_closed(
    limited: Served,
) -> None:
    with _raw(limited, b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\n") as sock:
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"serve.header_timeout" in reply
    with _raw(limited, b"") as idle:
        assert _read_all(idle) == b""  # closed without an answer: nothing was asked


def test_a_kept_alive_connection_gets_the_head_deadline_again(limited: Served) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=PATIENCE)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})
        sock = connection.sock  # kept alive for the next request
        assert sock is not None
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next head, never finished
        assert _read_all(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        connection.close()


def test_a_client_leaving_mid_body_logs_one_line_and_no_traceback(
    limited: Served, caplog: pytest.LogCaptureFixture
) -> None:
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)  # uvicorn's loggers do not reach the root
    try:
        with caplog.at_level(logging.INFO):
            head = b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
            with _raw(limited, head):
                pass
            deadline = time.monotonic() + PATIENCE
            while "disconnected" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        uvicorn_logger.removeHandler(caplog.handler)
    gone = [r for r in caplog.records if "disconnected while sending" in r.getMessage()]
    assert [r.levelno for r in gone] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- keys ----------------------------------------------------------------------------------------


def test_query_string_values_never_reach_the_access_log() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/models?api_key=sk-secret&x=1", "1.1", 401),
        None,
    )
    assert QueryRedaction().filter(record)
    assert "sk-secret" not in record.getMessage()
    assert "/v1/models?api_key=***&x=***" in record.getMessage()


def test_the_server_config_redacts_the_access_log() -> None:
    from qwen_backends.serve.limits import uvicorn_config

    uvicorn_config(object(), ServeSettings())
    assert any(isinstance(f, QueryRedaction) for f in logging.getLogger("uvicorn.access").filters)


@pytest.mark.parametrize("key", [" ", "\t\n", " sk-1", "sk-1 "])
def test_an_api_key_no_client_can_send_is_refused(key: str) -> None:
    with pytest.raises((ConfigurationError, ValueError), match="whitespace"):
        Settings(serve={"api_key": key})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_body_bytes", 10),
        ("max_json_depth", 1),
        ("max_json_depth", 10_000),
        ("header_timeout", 0),
        ("body_timeout", -1),
    ],
)
def test_limits_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises((ConfigurationError, ValueError), match=field):
        Settings(serve={field: value})
