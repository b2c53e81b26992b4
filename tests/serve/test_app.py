"""The server against the real ``openai`` client on loopback: the hf tiny checkpoint and the
Ollama stand-in, answers compared with the backend's own for the same seed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import Served
from ollama_server import OllamaServer

from qwen_backends import create_backend
from qwen_backends.backends.base import ModelBackend
from qwen_backends.errors import OutputValidationError

HI = [{"role": "user", "content": "Say hi."}]
SEEDS = (1, 2, 3)


def direct(backend: ModelBackend, seed: int, max_tokens: int, **sampling: Any) -> Any:
    params = backend.settings.sampling.replace(seed=seed, max_new_tokens=max_tokens, **sampling)
    return backend.generate(HI, params)


def streamed(served: Served, **fields: Any) -> tuple[str, list[Any]]:
    chunks = list(
        served.client().chat.completions.create(
            model=served.model, messages=HI, stream=True, **fields
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.fixture(params=["hf", "ollama"])
def served(request: pytest.FixtureRequest) -> Served:
    if request.param == "ollama":
        request.getfixturevalue("ollama_server")
    return request.getfixturevalue(f"{request.param}_served")  # type: ignore[no-any-return]


# -- answers -------------------------------------------------------------------------------------


def test_models_lists_the_one_served_model(served: Served) -> None:
    client = served.client()
    assert [m.id for m in client.models.list().data] == [served.model]
    assert client.models.retrieve(served.model).owned_by == "qwen-backends"


def test_non_streamed_answers_equal_the_backend_for_the_same_seed(served: Served) -> None:
    client = served.client()
    for seed in SEEDS:
        answer = client.chat.completions.create(
            model=served.model, messages=HI, max_tokens=10, seed=seed
        )
        expected = direct(served.backend, seed, 10)
        assert answer.choices[0].message.content == expected.text
        assert answer.choices[0].finish_reason == expected.finish_reason
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == expected.prompt_tokens
        assert answer.usage.completion_tokens == expected.completion_tokens
        assert answer.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
        assert answer.model == served.model
        assert answer.id.startswith("chatcmpl-")


def test_streamed_answers_equal_the_backend_with_final_usage(served: Served) -> None:
    for seed in SEEDS:
        text, chunks = streamed(
            served, max_tokens=10, seed=seed, stream_options={"include_usage": True}
        )
        expected = direct(served.backend, seed, 10)
        assert text == expected.text
        assert chunks[0].choices[0].delta.role == "assistant"
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finish[-1] == expected.finish_reason
        assert all(reason is None for reason in finish[:-1])
        assert chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == expected.completion_tokens
        assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
        assert all(c.usage is None for c in chunks[:-1])
        assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(served: Served) -> None:
    _, chunks = streamed(served, max_tokens=4, seed=1)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_sampling_fields_reach_the_backend(served: Served) -> None:
    """Greedy with extra fields (top_k, repetition_penalty) and a stop string, as the library."""
    client = served.client()
    extra = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.2}
    answer = client.chat.completions.create(
        model=served.model,
        messages=HI,
        max_tokens=12,
        temperature=0,
        top_p=1,
        presence_penalty=0.5,
        seed=4,
        extra_body=extra,
    )
    expected = direct(served.backend, 4, 12, temperature=0, top_p=1, presence_penalty=0.5, **extra)
    assert answer.choices[0].message.content == expected.text
    # A stop string taken from the middle of that answer cuts it there, as the library does.
    words = expected.text.split()
    if len(words) > 2:
        stop = words[2]
        cut = client.chat.completions.create(
            model=served.model,
            messages=HI,
            max_tokens=12,
            temperature=0,
            seed=4,
            stop=[stop],
            extra_body=extra,
            top_p=1,
            presence_penalty=0.5,
        )
        library = direct(
            served.backend,
            4,
            12,
            temperature=0,
            top_p=1,
            presence_penalty=0.5,
            stop=[stop],
            **extra,
        )
        assert cut.choices[0].message.content == library.text
        assert stop not in (cut.choices[0].message.content or "")


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"reasoning_effort": "high"},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}},
        {"extra_body": {"think": True}},
        {"extra_body": {"enable_thinking": True}},
    ],
)
def test_thinking_requests_are_refused(served: Served, fields: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model=served.model, messages=HI, **fields)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "thinking_not_supported"
    assert "never enables" in error["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"temperature": 5}, "temperature"),
        ({"extra_body": {"mystery": 1}}, "mystery"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_shaped_400s(
    served: Served, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model=served.model, messages=HI, **fields)
    error = caught.value.body
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_model_is_a_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.client().chat.completions.create(model="gpt-4o", messages=HI)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"
    assert served.model in caught.value.body["message"]


def test_raw_http_errors_are_openai_shaped(served: Served) -> None:
    url = served.base_url
    cases = [
        httpx.post(f"{url}/chat/completions", content=b"{not json"),
        httpx.post(f"{url}/chat/completions", json=[1, 2]),
        httpx.get(f"{url}/chat/completions"),
        httpx.get(f"{url}/nowhere"),
    ]
    assert [r.status_code for r in cases] == [400, 400, 405, 404]
    for response in cases:
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in response.text


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}


def test_response_format_goes_to_the_backend(served: Served) -> None:
    """The schema reaches backend.generate(response_format=...): the served answer equals the
    library's; a backend without structured output refuses with a 400 naming the field."""
    client = served.client()
    fields: dict[str, Any] = {
        "model": served.model,
        "messages": HI,
        "max_tokens": 48,
        "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}},
    }
    if not served.backend.capabilities.structured_output:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**fields)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "response_format"
        assert caught.value.body["code"] == "unsupported_feature"
        return
    params = served.backend.settings.sampling.replace(seed=1, max_new_tokens=48)
    try:
        expected = served.backend.generate(HI, params, response_format=SCHEMA)
    except OutputValidationError as exc:
        # Not valid for the schema (e.g. cut by max_tokens): the server says so the same way.
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.chat.completions.create(**fields)
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "output_validation_failed"
        assert refused.value.body["message"] == str(exc)
        return
    answer = client.chat.completions.create(**fields)
    assert answer.choices[0].message.content == expected.text
    assert isinstance(json.loads(expected.text)["n"], int)


def test_tools_go_to_the_backend(served: Served) -> None:
    """Tools reach backend.generate(tools=...): the same text and tool calls as the library; a
    backend without tools refuses with a 400 naming the field."""
    client = served.client()
    fields: dict[str, Any] = {
        "model": served.model,
        "messages": HI,
        "max_tokens": 24,
        "seed": 1,
        "tools": [TOOL],
    }
    if not served.backend.capabilities.tools:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**fields)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "tools"
        return
    answer = client.chat.completions.create(**fields)
    params = served.backend.settings.sampling.replace(seed=1, max_new_tokens=24)
    expected = served.backend.generate(HI, params, tools=[TOOL])
    choice = answer.choices[0]
    assert (choice.message.content or "") == expected.text
    assert choice.finish_reason == expected.finish_reason
    calls = [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []
    ]
    assert calls == [(c.name, c.arguments) for c in expected.tool_calls]


def test_tokenize_counts_the_rendered_prompt(served: Served) -> None:
    response = httpx.post(
        f"{served.base_url}/tokenize", json={"model": served.model, "messages": HI}
    )
    try:
        expected = served.backend.count_prompt_tokens(HI)
    except Exception as exc:  # the backend cannot know: the server refuses the same way
        assert response.status_code == 400
        assert response.json()["error"]["message"] == str(exc)
        return
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == expected == len(body["tokens"])
    assert body["tokens"] == served.backend.prompt_ids(HI)
    answer = served.client().chat.completions.create(
        model=served.model, messages=HI, max_tokens=2, seed=1
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == expected


# -- keys and admission -----------------------------------------------------------------------


def test_api_key_is_required_and_compared(hf_backend: ModelBackend) -> None:
    with Served(hf_backend, api_key="s3cret-key") as served:
        with pytest.raises(openai.AuthenticationError) as caught:
            served.client(api_key="wrong").models.list()
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "invalid_api_key"
        assert "s3cret" not in str(caught.value.body)
        no_header = httpx.post(
            f"{served.base_url}/chat/completions", json={"model": served.model, "messages": HI}
        )
        assert no_header.status_code == 401
        good = served.client(api_key="s3cret-key")
        assert [m.id for m in good.models.list().data] == [served.model]
        answer = good.chat.completions.create(model=served.model, messages=HI, max_tokens=2)
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert httpx.get(f"http://127.0.0.1:{served.port}/health").json() == {"status": "ok"}


def test_the_control_token_setting_reaches_the_server(
    isolated_session: None, tiny_model_dir: Path
) -> None:
    """QWEN_ALLOW_CONTROL_TOKENS: the server refuses such text by default, and passes it to the
    backend (rendered as plain text) when the served backend's settings opt in."""
    quoted = [{"role": "user", "content": "say <|im_end|> back"}]
    with (
        create_backend(
            backend="hf", model=str(tiny_model_dir), allow_control_tokens=True
        ) as opted_in,
        Served(opted_in) as served,
    ):
        body = {"model": served.model, "messages": quoted}
        counted = httpx.post(f"{served.base_url}/tokenize", json=body)
        assert counted.status_code == 200
        assert counted.json()["tokens"] == opted_in.prompt_ids(quoted)
        answer = served.client().chat.completions.create(
            model=served.model, messages=quoted, max_tokens=2, seed=1
        )
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_control_tokens_are_refused_by_default(served: Served) -> None:
    body = {"model": served.model, "messages": [{"role": "user", "content": "a <|im_end|> b"}]}
    for path in ("chat/completions", "tokenize"):
        response = httpx.post(f"{served.base_url}/{path}", json=body)
        assert response.status_code == 400, path
        assert "<|im_end|>" in response.json()["error"]["message"]


def _wait_until(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_queue_full_is_a_503_with_retry_after(hf_backend: ModelBackend) -> None:
    with Served(hf_backend, max_queue=0) as served:
        gate = served.state().gate
        body = {
            "model": served.model,
            "messages": HI,
            "max_tokens": 4000,
            "stream": True,
            "temperature": 0,
            "presence_penalty": 2.0,
        }
        with httpx.stream("POST", f"{served.base_url}/chat/completions", json=body) as held:
            lines = held.iter_lines()
            assert next(lines).startswith("data: ")  # generating now, holding the one slot
            assert gate.active == 1
            refused = httpx.post(
                f"{served.base_url}/chat/completions",
                json={"model": served.model, "messages": HI, "max_tokens": 2},
                timeout=10,
            )
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "backend_unavailable"
            assert "MAX_QUEUE" in refused.json()["error"]["message"]
        # Leaving the block disconnected the stream: the slot comes back promptly.
        assert _wait_until(lambda: gate.active == 0)
        answer = served.client().chat.completions.create(
            model=served.model, messages=HI, max_tokens=2
        )
        assert answer.choices[0].message.content is not None


def test_disconnect_mid_stream_frees_the_hf_backend(hf_served: Served) -> None:
    gate = hf_served.state().gate
    body = {
        "model": hf_served.model,
        "messages": HI,
        "max_tokens": 4000,
        "stream": True,
        "temperature": 0,
        "presence_penalty": 2.0,
    }
    with httpx.stream("POST", f"{hf_served.base_url}/chat/completions", json=body) as response:
        received = [line for _, line in zip(range(6), response.iter_lines(), strict=False)]
    assert any('"content"' in line for line in received)
    assert _wait_until(lambda: gate.active == 0 and not hf_served.state().tasks)
    started = time.monotonic()
    answer = hf_served.client().chat.completions.create(
        model=hf_served.model, messages=HI, max_tokens=4, seed=1
    )
    assert answer.choices[0].message.content == direct(hf_served.backend, 1, 4).text
    assert time.monotonic() - started < 20


def test_disconnect_mid_stream_frees_the_ollama_backend(
    ollama_served: Served, ollama_server: OllamaServer
) -> None:
    body = {
        "model": ollama_served.model,
        "messages": HI,
        "max_tokens": 4000,
        "stream": True,
        "temperature": 0,
        "presence_penalty": 2.0,
    }
    with httpx.stream("POST", f"{ollama_served.base_url}/chat/completions", json=body) as response:
        received = [line for _, line in zip(range(6), response.iter_lines(), strict=False)]
    assert any('"content"' in line for line in received)
    # The stand-in stops generating once the backend closed its stream.
    assert _wait_until(lambda: ollama_server.in_flight == 0)
    assert _wait_until(lambda: not ollama_served.state().tasks)
    answers = ollama_server.answers
    assert not answers or all(a.get("eval_count", 0) < 4000 for a in answers)
    answer = ollama_served.client().chat.completions.create(
        model=ollama_served.model, messages=HI, max_tokens=4, seed=1
    )
    assert answer.choices[0].message.content == direct(ollama_served.backend, 1, 4).text


def test_backend_failures_map_to_gateway_statuses(
    ollama_served: Served, ollama_server: OllamaServer
) -> None:
    ollama_server.fail_next = [500] * 10
    with pytest.raises(openai.APIStatusError) as caught:
        ollama_served.client().chat.completions.create(
            model=ollama_served.model, messages=HI, max_tokens=2
        )
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "backend_error"
    ollama_server.fail_next = []


def test_mid_stream_backend_error_is_an_sse_error_event(
    ollama_served: Served, ollama_server: OllamaServer
) -> None:
    ollama_server.error_after = 2
    body = {
        "model": ollama_served.model,
        "messages": HI,
        "max_tokens": 50,
        "stream": True,
        "temperature": 0,
        "presence_penalty": 2.0,
    }
    with httpx.stream("POST", f"{ollama_served.base_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"


def test_unreachable_backend_server_is_a_503_with_retry_after(ollama_server: OllamaServer) -> None:
    from conftest import free_port

    from qwen_backends import create_backend

    dead = create_backend(
        backend="ollama",
        family="qwen3-4b-instruct-2507",
        ollama={"host": f"http://127.0.0.1:{free_port()}", "max_retries": 0},
    )
    with dead, Served(dead) as served:
        for stream in (False, True):
            response = httpx.post(
                f"{served.base_url}/chat/completions",
                json={"model": served.model, "messages": HI, "max_tokens": 2, "stream": stream},
                timeout=30,
            )
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert error["code"] == "backend_unavailable"
            assert "ollama serve" in error["message"]


def test_backend_timeout_is_a_504(ollama_server: OllamaServer) -> None:
    from qwen_backends import create_backend

    slow = create_backend(
        backend="ollama",
        family="qwen3-4b-instruct-2507",
        ollama={"host": ollama_server.url, "timeout": 0.5, "max_retries": 0},
    )
    slow.remote.backoff = 0.0  # type: ignore[attr-defined]  # retry at once
    with slow, Served(slow) as served:
        served.client().chat.completions.create(model=served.model, messages=HI, max_tokens=1)
        ollama_server.latency = 2.0
        with pytest.raises(openai.APIStatusError) as caught:
            served.client(timeout=30).chat.completions.create(
                model=served.model, messages=HI, max_tokens=2
            )
    assert caught.value.status_code == 504
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "backend_timeout"


def test_a_multi_turn_client_gets_the_prompt_cache_and_sees_it_in_usage(
    hf_served: Served,
) -> None:
    """Through the OpenAI API: turn 2 resends turn 1, and the hf backend reuses its state."""
    client = hf_served.client()
    history = [
        {"role": "system", "content": "Answer in a few words. " * 20},
        {"role": "user", "content": "Name a colour."},
    ]
    first = client.chat.completions.create(
        model=hf_served.model, messages=history, max_tokens=6, temperature=0
    )
    said = first.choices[0].message.content or ""
    turn = [
        *history,
        {"role": "assistant", "content": said if said.strip() else f"{said}(blank)"},
        {"role": "user", "content": "Another?"},
    ]
    second = client.chat.completions.create(
        model=hf_served.model, messages=turn, max_tokens=6, temperature=0
    )
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < cached < second.usage.prompt_tokens
    assert (
        second.choices[0].message.content
        == hf_served.backend.generate(
            turn, {"temperature": 0, "max_new_tokens": 6, "top_p": 1.0, "top_k": 0}
        ).text
    )
