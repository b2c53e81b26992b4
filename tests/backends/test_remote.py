"""The remote layer of the server backends: one classification, one error table, one retry policy.

Unit tests on real client exceptions (httpx, the httpx2 copy inside openai, ollama's wrappers);
the same faults injected over real sockets are in tests/conformance (test_conformance.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from qwen_backends.backends.remote import (
    BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    MAX_RETRY_AFTER,
    Failure,
    Remote,
    classify,
)
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


def make_remote(max_retries: int = 3) -> Remote:
    return Remote(
        backend="demo",
        server="the demo server",
        url="http://user:secret@127.0.0.1:9/v1",
        how_to_start="demo serve",
        timeout=2.5,
        timeout_setting="QWEN_DEMO__TIMEOUT",
        max_retries=max_retries,
    )


def status_error(status: int, body: Any, headers: dict[str, str] | None = None) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx.Response(
        status, request=request, headers=headers or {}, content=json.dumps(body).encode()
    )
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        exc.status_code = status  # type: ignore[attr-defined]  # as the SDK errors carry it
        exc.body = body  # type: ignore[attr-defined]
        return exc
    raise AssertionError("raise_for_status did not raise")


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised ``from inner`` (as SDKs wrap transport errors)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


# -- classification -------------------------------------------------------------------------------


def _transport_errors() -> list[tuple[BaseException, str]]:
    import httpx2  # the copy of httpx that openai>=3 ships

    errors: list[tuple[BaseException, str]] = []
    for module in (httpx, httpx2):
        errors += [
            (module.ConnectError("[Errno 111] Connection refused"), "refused"),
            (module.ReadTimeout("timed out"), "timeout"),
            (module.ConnectTimeout("timed out"), "timeout"),
            (module.RemoteProtocolError("peer closed connection"), "protocol"),
            (module.ReadError("connection reset"), "broken"),
        ]
    return errors


@pytest.mark.parametrize(("error", "kind"), _transport_errors())
def test_transport_errors_of_every_httpx_copy_are_classified_alike(
    error: BaseException, kind: str
) -> None:
    assert classify(error) == Failure(kind, classify(error).detail)  # type: ignore[union-attr]
    # Seen through the wrappers SDKs put around them.
    assert classify(wrapped(error, RuntimeError("Connection error."))).kind == kind  # type: ignore[union-attr]


def test_builtin_and_decoding_errors() -> None:
    assert classify(ConnectionRefusedError(111, "refused")).kind == "refused"  # type: ignore[union-attr]
    assert classify(ConnectionResetError(104, "reset")).kind == "broken"  # type: ignore[union-attr]
    assert classify(TimeoutError("timed out")).kind == "timeout"  # type: ignore[union-attr]
    decoding = wrapped(json.JSONDecodeError("Expecting value", "<html>", 0), ValueError("bad"))
    assert classify(decoding).kind == "protocol"  # type: ignore[union-attr]
    assert classify(KeyError("choices")) is None  # not a transport failure: left alone


def test_status_errors_keep_the_servers_message_and_retry_after() -> None:
    failure = classify(status_error(429, {"error": {"message": "slow down"}}, {"Retry-After": "2"}))
    assert failure == Failure("status", "slow down", 429, 2.0)
    failure = classify(status_error(503, {"error": "overloaded"}))
    assert failure == Failure("status", "overloaded", 503, None)
    # An HTTP-date Retry-After falls back to backoff.
    dated = status_error(429, {}, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
    assert classify(dated).retry_after is None  # type: ignore[union-attr]


def test_ollama_client_errors_are_classified() -> None:
    import ollama

    # ollama raises ResponseError(status) "from None" inside an except block: the httpx error
    # with the headers stays reachable as __context__.
    http_error = status_error(429, {"error": "busy"}, {"Retry-After": "1"})
    try:
        try:
            raise http_error
        except Exception:
            raise ollama.ResponseError("busy", 429) from None
    except ollama.ResponseError as exc:
        failure = classify(exc)
    assert failure == Failure("status", "busy", 429, 1.0)
    refused = wrapped(httpx.ConnectError("refused"), ConnectionError("Failed to connect"))
    assert classify(refused).kind == "refused"  # type: ignore[union-attr]


def test_an_error_the_server_reported_inside_an_answer_is_classified() -> None:
    import ollama
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    # What the openai SDK raises for an {"error": ...} event in a stream; ollama for a line.
    event = openai.APIError("engine died", request, body={"message": "engine died", "code": 500})
    line = ollama.ResponseError("model runner stopped")
    assert classify(event) == Failure("reported", "engine died")
    assert classify(line) == Failure("reported", "model runner stopped")
    # Without an error body (or with an HTTP status) it is something else.
    assert classify(openai.APIConnectionError(request=request)) is None
    assert classify(ollama.ResponseError("gone", 404)) == Failure("status", "gone", 404)


# -- the error table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "error", "words"),
    [
        (Failure("refused", "Connection refused"), BackendUnavailableError, "start it with"),
        (Failure("broken", "reset"), BackendUnavailableError, "broke"),
        (Failure("timeout", "timed out"), BackendTimeoutError, "QWEN_DEMO__TIMEOUT"),
        (Failure("protocol", "not JSON"), ProtocolError, "not JSON"),
        (Failure("reported", "engine died"), GenerationError, "reported an error"),
        (Failure("status", "slow down", 429), RateLimitError, "HTTP 429"),
        (Failure("status", "boom", 500), ServerError, "HTTP 500"),
        (Failure("status", "bad gateway", 502), ServerError, "HTTP 502"),
        (Failure("status", "no key", 401), ConfigurationError, "API key"),
        (Failure("status", "forbidden", 403), ConfigurationError, "API key"),
        (Failure("status", "no such model", 404), ModelNotFoundError, "model name"),
        (Failure("status", "bad value", 400), ConfigurationError, "bad value"),
        (Failure("status", "unprocessable", 422), ConfigurationError, "unprocessable"),
        (Failure("status", "teapot", 418), GenerationError, "HTTP 418"),
    ],
)
def test_each_failure_has_one_error_class_and_a_one_line_message(
    failure: Failure, error: type[QwenBackendsError], words: str
) -> None:
    produced = make_remote().error(failure, retries=2)
    assert type(produced) is error
    message = str(produced)
    assert words in message and "\n" not in message
    assert "secret" not in message and "127.0.0.1:9" in message  # credentials masked
    assert produced.backend == "demo"
    assert produced.status_code == failure.status
    if failure.kind in ("broken", "timeout") or failure.status in (429, 500, 502):
        assert "gave up after 2 retries" in message


def test_partial_text_is_kept_and_said() -> None:
    produced = make_remote().error(Failure("protocol", "cut"), partial_text="Hello")
    assert isinstance(produced, ProtocolError) and produced.partial_text == "Hello"
    assert "5 characters received are kept in partial_text" in str(produced)
    reported = make_remote().error(Failure("reported", "engine died"), partial_text="Hi")
    assert type(reported) is GenerationError and reported.partial_text == "Hi"
    assert "engine died" in str(reported) and "kept in partial_text" in str(reported)


def test_a_backend_may_word_a_4xx_but_not_reclassify_429_or_5xx() -> None:
    remote = make_remote()

    def precise(failure: Failure) -> QwenBackendsError | None:
        return ModelNotFoundError("pull it first")

    for status, expected in ((404, ModelNotFoundError), (429, RateLimitError), (503, ServerError)):
        produced = remote.error(Failure("status", "x", status), status_errors=precise)
        assert type(produced) is expected
        assert produced.backend == "demo" and produced.status_code == status


# -- the retry decision ---------------------------------------------------------------------------


def test_what_is_retried() -> None:
    remote = make_remote()
    for failure in (
        Failure("broken"),
        Failure("timeout"),
        Failure("status", status=429),
        Failure("status", status=500),
        Failure("status", status=503),
    ):
        assert remote.retry_delay(failure, 0) is not None, failure
    for failure in (
        Failure("refused"),
        Failure("protocol"),
        Failure("reported"),
        Failure("status", status=400),
        Failure("status", status=401),
        Failure("status", status=404),
        Failure("status", status=422),
    ):
        assert remote.retry_delay(failure, 0) is None, failure
    assert remote.retry_delay(Failure("status", status=503), 3) is None  # max_retries reached


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    remote = make_remote(max_retries=20)
    for attempt in range(10):
        base = min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2**attempt)
        delays = {remote.retry_delay(Failure("timeout"), attempt) for _ in range(20)}
        assert all(d is not None and base <= d <= base * 1.25 for d in delays), attempt
        assert len(delays) > 1  # jittered


def test_retry_after_is_honoured_up_to_a_limit() -> None:
    remote = make_remote()
    assert remote.retry_delay(Failure("status", status=429, retry_after=3.0), 0) == 3.0
    too_long = Failure("status", status=429, retry_after=MAX_RETRY_AFTER + 1)
    assert remote.retry_delay(too_long, 0) is None


# -- running calls ------------------------------------------------------------------------------


def test_call_retries_then_raises_the_table_error() -> None:
    remote = make_remote(max_retries=2)
    slept: list[float] = []
    remote.sleep = slept.append
    attempts: list[int] = []

    def failing() -> str:
        attempts.append(1)
        raise status_error(503, {"error": "busy"})

    with pytest.raises(ServerError, match="gave up after 2 retries") as caught:
        remote.call(failing)
    assert len(attempts) == 3 and len(slept) == 2
    assert slept[1] > slept[0]
    assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)


def test_call_succeeds_after_a_transient_failure_and_never_retries_refusals() -> None:
    remote = make_remote()
    remote.sleep = lambda seconds: None
    results = iter([httpx.ReadTimeout("slow"), "ok"])

    def flaky() -> str:
        item = next(results)
        if isinstance(item, BaseException):
            raise item
        return item

    assert remote.call(flaky) == "ok"
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise httpx.ConnectError("refused")

    with pytest.raises(BackendUnavailableError, match="not reachable"):
        remote.call(refused)
    assert calls == [1]


def test_unknown_exceptions_pass_through_unchanged() -> None:
    remote = make_remote()
    with pytest.raises(KeyError):
        remote.call(lambda: {}["missing"])


def test_acall_follows_the_same_policy() -> None:
    remote = make_remote(max_retries=1)
    remote.backoff = 0.0
    attempts: list[int] = []

    async def failing() -> None:
        attempts.append(1)
        raise status_error(429, {"error": "slow down"}, {"Retry-After": "0"})

    with pytest.raises(RateLimitError, match="gave up after 1 retries"):
        asyncio.run(remote.acall(failing))
    assert len(attempts) == 2
