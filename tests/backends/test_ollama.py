"""The ollama backend against a loopback Ollama stand-in (real sockets, the real client).

The stand-in (``ollama_server.py``) answers with tokens from the tiny random-weight Qwen3
checkpoint, so token counts, seeds and streaming are real; it records every request, so these
tests assert exactly what the backend sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ollama_server import (
    HYBRID_TAG,
    INSTRUCT_TAG,
    THINKING_TAG,
    OllamaServer,
    ServedModel,
    TinyQwen,
    hybrid_model,
    instruct_model,
    thinking_model,
)

from qwen_backends import SamplingParams, create_backend
from qwen_backends.backends.ollama import (
    OllamaBackend,
    chat_request,
    ollama_template_mode,
    parse_version,
    sampling_options,
    thinking_only_reason,
)
from qwen_backends.backends.ollama_logprobs import UNKNOWN_ID, chunk_steps
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    GenerationError,
    ModelNotFoundError,
    ServerError,
    ThinkingModeError,
    UnsupportedFeatureError,
)
from qwen_backends.family import FAMILIES
from qwen_backends.finetune.ollama import (
    INSTRUCT_TEMPLATE,
    NON_THINKING_TEMPLATE,
    modelfile_parameters,
)
from qwen_backends.settings import OllamaSettings
from qwen_backends.thinking import TemplateMode

# Read before the autouse fixture in conftest.py clears OLLAMA_HOST.
REAL_OLLAMA_HOST = os.environ.get("OLLAMA_HOST")

SHORT = SamplingParams(max_new_tokens=6, seed=7)
HI = [{"role": "user", "content": "Say hi."}]
LOGGER = "qwen_backends.backends.ollama"
PULLABLE = "qwen3:4b-instruct"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TinyQwen:
    return TinyQwen(tiny_model_dir)


@pytest.fixture(scope="module")
def running(engine: TinyQwen) -> Iterator[OllamaServer]:
    with OllamaServer(engine) as server:
        yield server


@pytest.fixture
def server(running: OllamaServer) -> OllamaServer:
    running.reset()
    running.models = {m.name: m for m in (instruct_model(), thinking_model(), hybrid_model())}
    running.pullable = {PULLABLE: instruct_model(PULLABLE)}
    return running


def make_backend(server: OllamaServer, model: str = INSTRUCT_TAG, **ollama: Any) -> OllamaBackend:
    backend = create_backend(backend="ollama", model=model, ollama={"host": server.url, **ollama})
    assert isinstance(backend, OllamaBackend)
    backend.remote.backoff = 0.0
    return backend


@pytest.fixture
def backend(server: OllamaServer) -> Iterator[OllamaBackend]:
    with make_backend(server) as built:
        yield built


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def collect(stream: Any) -> list[str]:
    return [piece async for piece in stream]


# -- what is sent ----------------------------------------------------------------------------


def test_every_chat_request_says_think_false(server: OllamaServer, backend: OllamaBackend) -> None:
    backend.generate(HI, SHORT)
    list(backend.stream(HI, SHORT))
    backend.generate_batch([HI, "Another question."], SHORT)
    asyncio.run(backend.agenerate(HI, SHORT))
    asyncio.run(collect(backend.astream(HI, SHORT)))
    chats = server.chats()
    assert len(chats) == 6
    assert all(body["think"] is False for body in chats)
    assert [body["stream"] for body in chats] == [False, True, False, False, False, True]


def test_first_use_checks_version_and_model_once(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    backend.generate(HI, SHORT)
    backend.generate(HI, SHORT)
    assert server.paths() == ["/api/version", "/api/show", "/api/chat", "/api/chat"]
    assert server.requests[1].body == {"model": INSTRUCT_TAG}


def test_request_carries_every_sampling_value_as_a_plain_dict(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    sampling = SamplingParams(
        temperature=0.3,
        top_p=0.9,
        top_k=7,
        min_p=0.05,
        max_new_tokens=5,
        presence_penalty=1.5,
        repetition_penalty=1.1,
        seed=42,
        stop=["\x00never"],
    )
    backend.generate([{"role": "system", "content": "Be brief."}, *HI], sampling)
    assert server.chats()[-1] == {
        "model": INSTRUCT_TAG,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
        ],
        "tools": [],  # added by the client
        "think": False,
        "options": {
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 7,
            "min_p": 0.05,
            "num_predict": 5,
            "presence_penalty": 1.5,
            "repeat_penalty": 1.1,
            "seed": 42,
            "stop": ["\x00never"],
            "num_ctx": 8192,
        },
        "keep_alive": "5m",
        "stream": False,
    }


def test_defaults_are_qwen3_non_thinking_values_and_settings_reach_the_request(
    server: OllamaServer,
) -> None:
    with make_backend(server, num_ctx=4096, keep_alive="-1") as backend:
        backend.generate(HI, {"max_new_tokens": 3})
    body = server.chats()[-1]
    assert body["options"] == {
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "min_p": 0.0,
        "num_predict": 3,
        "presence_penalty": 0.0,
        "repeat_penalty": 1.0,
        "num_ctx": 4096,
    }
    assert body["keep_alive"] == -1.0  # a bare number must not go as a Go duration string


def test_sync_and_async_build_the_same_request(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    backend.generate(HI, SHORT)
    asyncio.run(backend.agenerate(HI, SHORT))
    first, second = server.chats()
    assert first == second
    expected = chat_request(INSTRUCT_TAG, HI, SHORT, OllamaSettings(), stream=False)
    assert first == {**expected, "tools": []}


def test_tool_messages_are_converted_to_ollama_fields(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    call = {"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    messages = [
        {"role": "user", "content": "Add 1 and 2."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "add", "content": "3"},
    ]
    backend.generate(messages, SHORT)
    sent = server.chats()[-1]["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]
    assert sent[2] == {"role": "tool", "content": "3", "tool_name": "add"}


def test_english_only_is_refused_before_anything_is_sent(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    with pytest.raises(UnsupportedFeatureError, match="ollama backend does not support english"):
        backend.generate(HI, {"english_only": True})
    assert server.requests == []


# -- what comes back ----------------------------------------------------------------------------


def test_generation_reports_the_servers_text_and_real_token_counts(
    server: OllamaServer, backend: OllamaBackend, engine: TinyQwen
) -> None:
    result = backend.generate(HI, SHORT)
    answer = server.answers[-1]
    assert result.text == answer["content"] and result.text
    assert result.completion_tokens == answer["eval_count"] == 6
    # the instruct tag renders with Instruct-2507's template: no empty think block (4 tokens)
    assert result.prompt_tokens == len(engine.prompt_ids(HI, "instruct-2507"))
    assert result.prompt_tokens == len(render_prompt_ids(engine.tokenizer, HI)) - 4
    assert result.finish_reason == "length"
    assert result.seconds > 0


def test_seed_makes_answers_reproducible(backend: OllamaBackend) -> None:
    first = backend.generate(HI, SHORT.replace(max_new_tokens=12))
    again = backend.generate(HI, SHORT.replace(max_new_tokens=12))
    other = backend.generate(HI, SHORT.replace(max_new_tokens=12, seed=8))
    assert first.text == again.text
    assert other.text != first.text


def test_stop_strings_end_the_answer(backend: OllamaBackend) -> None:
    greedy = SamplingParams.preset("greedy", max_new_tokens=12)
    full = backend.generate(HI, greedy).text
    stop = full[len(full) // 2 :][:2]
    cut = backend.generate(HI, greedy.replace(stop=[stop]))
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_stream_yields_pieces_that_join_to_the_generated_text(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    sampling = SHORT.replace(max_new_tokens=10)
    pieces = list(backend.stream(HI, sampling))
    assert len(pieces) > 1
    assert "".join(pieces) == server.answers[-1]["content"]
    assert "".join(pieces) == backend.generate(HI, sampling).text


def test_stopping_a_stream_early_closes_the_request(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    stream = backend.stream(HI, SHORT.replace(max_new_tokens=4000))
    next(stream)
    stream.close()
    deadline = time.monotonic() + 20  # 4000 tokens would take far longer than this
    while not server.answers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.answers and server.answers[0].get("cancelled")  # the server saw it go
    backend.generate(HI, SHORT)  # the pool is usable again
    assert len(server.chats()) == 2


def test_batch_answers_in_input_order_and_runs_concurrently(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    conversations = ["One.", "Two, please.", [{"role": "user", "content": "Three?"}]]
    singles = [backend.generate(c, SHORT).text for c in conversations]
    server.gate = threading.Barrier(3, timeout=10)  # only passes with 3 requests in flight
    batch = backend.generate_batch(conversations, SHORT)
    assert [g.text for g in batch] == singles
    assert server.max_in_flight == 3


def test_agenerate_runs_requests_concurrently(server: OllamaServer, backend: OllamaBackend) -> None:
    server.gate = threading.Barrier(4, timeout=10)

    async def main() -> list[Any]:
        return await asyncio.gather(*(backend.agenerate(HI, SHORT) for _ in range(4)))

    results = asyncio.run(main())
    assert server.max_in_flight == 4
    assert len({g.text for g in results}) == 1  # same seed, same prompt
    assert all(g.completion_tokens == 6 for g in results)


def test_astream_matches_agenerate(server: OllamaServer, backend: OllamaBackend) -> None:
    pieces = asyncio.run(collect(backend.astream(HI, SHORT)))
    assert len(pieces) > 1
    assert "".join(pieces) == asyncio.run(backend.agenerate(HI, SHORT)).text


# -- thinking ------------------------------------------------------------------------------


def test_thinking_only_model_is_refused_with_working_tags(server: OllamaServer) -> None:
    with (
        make_backend(server, model=THINKING_TAG) as backend,
        pytest.raises(ThinkingModeError) as caught,
    ):
        backend.generate(HI, SHORT)
    message = str(caught.value)
    assert "qwen3:4b is a thinking-only build" in message
    assert "qwen3:4b-instruct-2507-q4_K_M" in message and "qwen3:4b-instruct" in message
    assert "/api/chat" not in server.paths()


def test_hybrid_model_answers_without_thinking(
    server: OllamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    with make_backend(server, model=HYBRID_TAG) as backend:
        result = backend.generate(HI, SHORT)
    assert server.answers[-1]["thinking"] == ""
    assert result.text == server.answers[-1]["content"]
    assert not caplog.records


@pytest.mark.parametrize("leak", ["field", "tags"])
def test_leaked_thinking_is_removed_and_logged(
    server: OllamaServer, caplog: pytest.LogCaptureFixture, leak: str
) -> None:
    server.models[INSTRUCT_TAG] = replace(instruct_model(), leak=leak)
    sampling = SHORT.replace(max_new_tokens=12)
    with make_backend(server) as backend, caplog.at_level(logging.WARNING, LOGGER):
        result = backend.generate(HI, sampling)
        answer = server.answers[-1]
        pieces = list(backend.stream(HI, sampling))
    assert answer["thinking"] and answer["content"]
    assert result.text == answer["content"]
    assert "".join(pieces) == answer["content"]
    assert answer["thinking"] not in result.text and "<think>" not in result.text
    assert result.completion_tokens == 12  # thinking tokens still count as generated
    warnings = [r for r in caplog.records if "despite think=false" in r.getMessage()]
    assert len(warnings) == 2


# -- server version ------------------------------------------------------------------------


def test_servers_older_than_0_9_are_refused(server: OllamaServer, backend: OllamaBackend) -> None:
    server.version = "0.8.0"
    with pytest.raises(BackendUnavailableError, match=r"Ollama 0\.8\.0 .* older than 0\.9\.0"):
        backend.generate(HI, SHORT)
    assert "/api/chat" not in server.paths()


def test_unknown_server_version_only_warns(
    server: OllamaServer, backend: OllamaBackend, caplog: pytest.LogCaptureFixture
) -> None:
    server.version = "0.0.0"
    with caplog.at_level(logging.WARNING, LOGGER):
        assert backend.generate(HI, SHORT).text
    assert "could not read the Ollama server version" in caplog.text


# -- errors --------------------------------------------------------------------------------


def test_unreachable_server_is_one_clear_error_for_every_call() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    with create_backend(backend="ollama", ollama={"host": host}) as backend:
        calls = [
            lambda: backend.generate(HI),
            lambda: list(backend.stream(HI)),
            lambda: asyncio.run(backend.agenerate(HI)),
            lambda: asyncio.run(collect(backend.astream(HI))),
            backend.list_models,
            backend.ensure_model,
        ]
        for call in calls:
            with pytest.raises(BackendUnavailableError) as caught:
                call()
            message = str(caught.value)
            assert message.startswith(f"Ollama at {host} is not reachable (")
            assert message.endswith("start it with `ollama serve`, or fix the address")
            assert "\n" not in message and caught.value.backend == "ollama"


def test_streaming_connect_error_after_checks_is_translated(engine: TinyQwen) -> None:
    # With stream=True the client raises a raw httpx.ConnectError on the first next().
    with OllamaServer(engine) as server:
        backend = make_backend(server)
        backend.generate(HI, SHORT)
    for call in (
        lambda: list(backend.stream(HI)),
        lambda: asyncio.run(collect(backend.astream(HI))),
    ):
        with pytest.raises(BackendUnavailableError, match="not reachable"):
            call()
    backend.close()


def test_missing_model_names_the_pull_command(server: OllamaServer) -> None:
    with (
        make_backend(server, model="qwen3:0.6b") as backend,
        pytest.raises(ModelNotFoundError) as caught,
    ):
        backend.generate(HI, SHORT)
    assert str(caught.value) == (
        f"model qwen3:0.6b not found on the Ollama server at {server.url}; "
        "run `ollama pull qwen3:0.6b`"
    )


def test_model_removed_after_the_check_gives_the_same_error(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    backend.generate(HI, SHORT)
    del server.models[INSTRUCT_TAG]
    with pytest.raises(ModelNotFoundError, match="ollama pull qwen3:4b-instruct-2507-q4_K_M"):
        backend.generate(HI, SHORT)
    with pytest.raises(ModelNotFoundError):
        asyncio.run(backend.agenerate(HI, SHORT))


def test_server_errors_are_retried_then_succeed(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    backend.generate(HI, SHORT)
    server.fail_next = [500, 503]
    assert backend.generate(HI, SHORT).text == server.answers[-1]["content"]
    assert len(server.chats()) == 4
    server.fail_next = [502]
    assert asyncio.run(backend.agenerate(HI, SHORT)).text
    assert len(server.chats()) == 6


def test_retries_are_bounded(server: OllamaServer) -> None:
    with make_backend(server, max_retries=2) as backend:
        backend.generate(HI, SHORT)
        server.fail_next = [500] * 10
        with pytest.raises(ServerError, match=r"HTTP 500.*gave up after 2 retries"):
            backend.generate(HI, SHORT)
    assert len(server.chats()) == 1 + 3


def test_stream_opening_is_retried_too(server: OllamaServer, backend: OllamaBackend) -> None:
    backend.generate(HI, SHORT)
    server.fail_next = [503]
    assert "".join(backend.stream(HI, SHORT)) == server.answers[-1]["content"]
    assert len(server.chats()) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, ConfigurationError), (401, ConfigurationError), (403, ConfigurationError)],
)
def test_client_errors_are_never_retried(
    server: OllamaServer, backend: OllamaBackend, status: int, error: type[Exception]
) -> None:
    backend.generate(HI, SHORT)
    server.fail_next = [status, status]
    with pytest.raises(error, match=f"HTTP {status}") as caught:
        backend.generate(HI, SHORT)
    assert caught.value.status_code == status
    assert len(server.chats()) == 2


def test_rate_limiting_is_retried(server: OllamaServer, backend: OllamaBackend) -> None:
    backend.generate(HI, SHORT)
    server.fail_next = [429]
    assert backend.generate(HI, SHORT).text == server.answers[-1]["content"]
    assert len(server.chats()) == 3


def test_timeouts_are_retried_and_then_reported(server: OllamaServer) -> None:
    with make_backend(server, timeout=0.2, max_retries=1) as backend:
        backend.generate(HI, SHORT)
        server.latency = 0.6
        with pytest.raises(BackendTimeoutError, match=r"sent nothing for 0\.2 s"):
            backend.generate(HI, SHORT)
    assert len(server.chats()) == 1 + 2


def test_mid_stream_error_keeps_the_text_received(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    server.error_after = 2
    received: list[str] = []
    with pytest.raises(GenerationError) as caught:
        for piece in backend.stream(HI, SHORT.replace(max_new_tokens=12)):
            received.append(piece)
    assert len(received) == 2
    assert caught.value.partial_text == "".join(received) == server.answers[-1]["content"]
    assert "an error was encountered while running the model" in str(caught.value)
    assert len(server.chats()) == 1  # an error line after streaming began is not retried


def test_async_mid_stream_error_keeps_the_text_received(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    server.error_after = 1
    with pytest.raises(GenerationError) as caught:
        asyncio.run(collect(backend.astream(HI, SHORT.replace(max_new_tokens=12))))
    assert caught.value.partial_text
    assert caught.value.partial_text == server.answers[-1]["content"]


# -- models --------------------------------------------------------------------------------


def test_list_models(server: OllamaServer, backend: OllamaBackend) -> None:
    assert backend.list_models() == [INSTRUCT_TAG, THINKING_TAG, HYBRID_TAG]


def test_ensure_model_pulls_a_missing_model_with_progress(
    server: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with make_backend(server, model=PULLABLE) as backend:
        assert backend.ensure_model() is True
        assert PULLABLE in backend.list_models()
        assert backend.ensure_model() is False
        assert backend.generate(HI, SHORT).text
    pulls = [r.body for r in server.requests if r.path == "/api/pull"]
    assert pulls == [{"model": PULLABLE, "insecure": False, "stream": True}]
    assert "pulling qwen3:4b-instruct" in capsys.readouterr().err


def test_ensure_model_without_pull_or_with_an_unknown_tag(server: OllamaServer) -> None:
    missing = make_backend(server, model=PULLABLE)
    with missing, pytest.raises(ModelNotFoundError, match="ollama pull qwen3:4b-instruct"):
        missing.ensure_model(pull=False)
    unknown = make_backend(server, model="qwen3:4b-nonsense")
    with unknown, pytest.raises(ModelNotFoundError, match="could not pull qwen3:4b-nonsense"):
        unknown.ensure_model(progress=False)


def test_importing_the_module_does_not_import_the_client() -> None:
    code = "import sys, qwen_backends.backends.ollama; print('ollama' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("0.12.4", (0, 12, 4)), ("0.9.0-rc1", (0, 9, 0)), ("v0.8", (0, 8, 0)), ("0.0.0", None)],
)
def test_parse_version(text: str, parsed: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == parsed


def test_thinking_only_detection() -> None:
    hybrid = {"capabilities": ["completion", "thinking"], "template": "<|im_start|>{{ .Think }}"}
    bare = {"capabilities": ["completion", "thinking"], "template": "<|im_start|>{{ .Prompt }}"}
    renderer = {"capabilities": ["completion", "thinking"], "template": "{{ .Prompt }}"}
    assert thinking_only_reason("qwen3:4b-q4_K_M", hybrid) is None
    assert thinking_only_reason("qwen3:4b", {"capabilities": ["completion"]}) is None
    assert "no switch" in (thinking_only_reason("qwen3:4b", bare) or "")
    history = {**bare, "template": "<|im_start|>{{ if .Thinking }}{{ .Thinking }}{{ end }}"}
    assert thinking_only_reason("qwen3:4b", history)
    assert thinking_only_reason("qwen3:4b", renderer) is None
    assert "Thinking" in (
        thinking_only_reason("x", {**renderer, "model_info": {"general.finetune": "Thinking-2507"}})
        or ""
    )
    assert thinking_only_reason("qwen3:4b-thinking-2507-q4_K_M", renderer)


def test_template_modes_of_the_three_releases_and_of_our_own_modelfiles() -> None:
    def show(model: ServedModel) -> dict[str, Any]:
        return {
            "capabilities": model.capabilities,
            "template": model.template,
            "model_info": model.model_info,
        }

    instruct = ollama_template_mode(INSTRUCT_TAG, show(instruct_model()))
    assert instruct[0] is TemplateMode.NON_THINKING
    assert ollama_template_mode(HYBRID_TAG, show(hybrid_model()))[0] is TemplateMode.HYBRID
    mode, reason = ollama_template_mode("x", show(thinking_model()))
    assert mode is TemplateMode.THINKING_ONLY and "opens <think>" in reason
    # without the capability or a telling name, the opened think block alone gives it away
    opened = {"capabilities": ["completion"], "template": thinking_model().template}
    assert ollama_template_mode("mine", opened)[0] is TemplateMode.THINKING_ONLY
    # the Modelfiles of qwen_backends.finetune.ollama: hybrid pre-filled, Instruct-2507 bare
    for template, expected in (
        (NON_THINKING_TEMPLATE, TemplateMode.HYBRID),
        (INSTRUCT_TEMPLATE, TemplateMode.NON_THINKING),
    ):
        created = {"capabilities": ["completion"], "template": template}
        assert ollama_template_mode("mine", created)[0] is expected


def test_options_leave_out_an_unset_seed_and_empty_stop() -> None:
    options = sampling_options(SamplingParams(), 2048)
    assert "seed" not in options and "stop" not in options
    assert options["num_ctx"] == 2048


# -- a real server -------------------------------------------------------------------------


def _real_server() -> str | None:
    host = REAL_OLLAMA_HOST or "http://127.0.0.1:11434"
    url = host if "://" in host else f"http://{host}"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/version", timeout=1.0):
            return host
    except (OSError, ValueError):
        return None


@pytest.mark.ollama
def test_real_ollama_server_answers_without_thinking() -> None:
    host = _real_server()
    if host is None:
        pytest.skip("no Ollama server answers at OLLAMA_HOST (start one with `ollama serve`)")
    with create_backend(backend="ollama", ollama={"host": host}) as backend:
        assert isinstance(backend, OllamaBackend)
        if backend.model_name not in backend.list_models():
            pytest.skip(f"the server has no {backend.model_name}; `ollama pull` it first")
        result = backend.generate("What is 2+2? Answer with one number.", {"max_new_tokens": 32})
        streamed = "".join(backend.stream("Name one colour.", {"max_new_tokens": 16}))
    assert result.text.strip() and "<think>" not in result.text
    assert result.completion_tokens > 0 and result.prompt_tokens > 0
    assert streamed.strip() and "<think>" not in streamed


# -- the model family -------------------------------------------------------------------------

HI_IDS = {
    "hybrid": [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271],
    "instruct-2507": [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198],
}


def test_the_instruct_family_runs_the_instruct_tag(server: OllamaServer) -> None:
    with create_backend(
        backend="ollama", family="qwen3-4b-instruct-2507", ollama={"host": server.url}
    ) as backend:
        assert backend.model_name == INSTRUCT_TAG
        assert backend.template_mode() is None  # not checked yet
        result = backend.generate("hi", SHORT)
        assert backend.template_mode() is TemplateMode.NON_THINKING
    assert result.prompt_tokens == len(HI_IDS["instruct-2507"])
    assert server.chats()[-1]["model"] == INSTRUCT_TAG


def test_the_hybrid_answers_with_the_hybrid_prompt(server: OllamaServer) -> None:
    with make_backend(server, model=HYBRID_TAG) as backend:
        result = backend.generate("hi", SHORT)
        assert backend.template_mode() is TemplateMode.HYBRID
    assert result.prompt_tokens == len(HI_IDS["hybrid"])
    assert server.answers[-1]["thinking"] == ""


def test_ensure_model_builds_the_hybrid_from_a_hub_gguf(server: OllamaServer) -> None:
    family = FAMILIES["qwen3-4b"]
    assert family.ollama_source is not None
    server.pullable = {family.ollama_source: hybrid_model(family.ollama_source)}
    with create_backend(backend="ollama", ollama={"host": server.url}) as backend:
        assert isinstance(backend, OllamaBackend)
        assert backend.model_name == family.ollama  # the default family: the hybrid
        with pytest.raises(ModelNotFoundError, match="ensure_model"):
            backend.generate("hi", SHORT)
        assert backend.ensure_model(progress=False) is True
        assert backend.ensure_model(progress=False) is False
        result = backend.generate("hi", SHORT)
        assert backend.template_mode() is TemplateMode.HYBRID
    pulls = [r.body["model"] for r in server.requests if r.path == "/api/pull"]
    assert pulls == [family.ollama_source]
    (create,) = [r.body for r in server.requests if r.path == "/api/create"]
    assert create["model"] == family.ollama and create["from"] == family.ollama_source
    assert create["template"] == NON_THINKING_TEMPLATE
    assert create["parameters"] == modelfile_parameters()
    assert create["parameters"]["temperature"] == 0.7 and create["parameters"]["top_p"] == 0.8
    # the built model has no thinking capability; its TEMPLATE pre-fills the empty think block
    built = server.models[family.ollama]
    assert "thinking" not in built.capabilities
    assert result.prompt_tokens == len(HI_IDS["hybrid"])
    assert server.answers[-1]["thinking"] == ""
    assert server.chats()[-1]["think"] is False


def test_a_hub_gguf_that_is_missing_is_one_clear_error(server: OllamaServer) -> None:
    server.pullable = {}
    with (
        create_backend(backend="ollama", ollama={"host": server.url}) as backend,
        pytest.raises(ModelNotFoundError, match=r"could not pull hf\.co/") as caught,
    ):
        assert isinstance(backend, OllamaBackend)
        backend.ensure_model(progress=False)
    assert "hub repository" in str(caught.value) and "\n" not in str(caught.value)
    assert "/api/create" not in server.paths()


# -- per-token log-probabilities ------------------------------------------------------------------


def test_logprobs_are_asked_of_the_server_and_named_by_id(
    server: OllamaServer, backend: OllamaBackend, engine: TinyQwen
) -> None:
    sampling = SamplingParams.preset("greedy", max_new_tokens=8, logprobs=True, top_logprobs=3)
    result = backend.generate(HI, sampling)
    assert (server.chats()[-1]["logprobs"], server.chats()[-1]["top_logprobs"]) == (True, 3)
    assert result.logprobs is not None
    # The end of turn gets no entry from Ollama; every generated text token does.
    ended = result.finish_reason == "stop"
    assert len(result.logprobs) == result.completion_tokens - (1 if ended else 0)
    assert "".join(entry.token for entry in result.logprobs) == result.text
    for entry in result.logprobs:
        whole = "\ufffd" not in entry.token
        assert (entry.id != UNKNOWN_ID) == whole
        if whole:
            assert engine.decode([entry.id]) == entry.token
        assert len(entry.top) == 3 and entry.top[0].logprob >= entry.top[-1].logprob
        assert entry.top[0].id == entry.id  # greedy: the drawn token is the most likely
    # The same entries through a stream (they ride on the lines that carry their text).
    stream = backend.stream(HI, sampling)
    assert "".join(stream) == result.text and stream.generation is not None
    assert stream.generation.logprobs == result.logprobs
    plain = backend.generate(HI, SamplingParams.preset("greedy", max_new_tokens=8))
    assert plain.logprobs is None and "logprobs" not in server.chats()[-1]


def test_logprob_token_texts_map_to_qwen3_ids(offline_tokenizer: Any) -> None:
    from types import SimpleNamespace

    text = " world"
    entries = [
        SimpleNamespace(token=text, logprob=-0.5, top_logprobs=None),
        SimpleNamespace(token="<|im_end|>", logprob=-1.0, top_logprobs=None),
        SimpleNamespace(
            token="\ufffd",
            logprob=-2.0,
            top_logprobs=[SimpleNamespace(token="é", logprob=-0.25)],
        ),
    ]
    steps = chunk_steps(entries)
    expected_world = offline_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(expected_world) == 1
    assert [step.id for step in steps] == [
        expected_world[0],
        offline_tokenizer.convert_tokens_to_ids("<|im_end|>"),
        UNKNOWN_ID,
    ]
    assert steps[2].top == ((offline_tokenizer.convert_tokens_to_ids("Ã©"), -0.25),)


def test_logprobs_on_a_server_before_0_12_11_are_refused_before_sending(
    server: OllamaServer, backend: OllamaBackend
) -> None:
    server.version = "0.12.10"
    sampling = SamplingParams(logprobs=True, max_new_tokens=4)
    for call in (
        lambda: backend.generate(HI, sampling),
        lambda: "".join(backend.stream(HI, sampling)),
        lambda: asyncio.run(backend.agenerate(HI, sampling)),
    ):
        with pytest.raises(UnsupportedFeatureError, match=r"Ollama 0\.12\.10 .*0\.12\.11") as err:
            call()
        assert "\n" not in str(err.value) and err.value.backend == "ollama"
    assert "/api/chat" not in server.paths()
    assert backend.generate(HI, SamplingParams(max_new_tokens=2)).logprobs is None
