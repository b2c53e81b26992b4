"""Structured output and tools on the vllm backend: the request fields, and tool calls read the
same way whether the server parsed them (``message.tool_calls``) or left them in the content.

The last test talks to a real vLLM server on CPU (marked ``vllm``; skipped without the vLLM
environment, see tests/backends/test_vllm.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from assembled import assembled

from qwen_backends.backends.vllm import VLLMBackend, build_request
from qwen_backends.chat import validate_messages
from qwen_backends.factory import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.structured import ResponseFormat
from qwen_backends.tools import normalize_tools

SCHEMA = {
    "title": "City weather!",
    "type": "object",
    "properties": {"sky": {"enum": ["sunny", "rain"]}, "celsius": {"type": "integer"}},
    "required": ["sky", "celsius"],
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return "sunny"


@pytest.fixture
def backend() -> Iterator[VLLMBackend]:
    built = create_backend(backend="vllm", model="served")
    assert isinstance(built, VLLMBackend)
    with built:
        yield built


def test_the_request_carries_the_schema_and_the_tools() -> None:
    tools = normalize_tools([get_weather])
    body = build_request(
        validate_messages("Oslo?"),
        SamplingParams(),
        model="m",
        response_format=ResponseFormat.of(SCHEMA),
        tools=tools,
    )
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "City_weather_", "schema": SCHEMA, "strict": True},
    }
    assert body["tools"] == list(tools)
    assert "tool_choice" not in body, "the server's default (auto) works with or without parser"
    plain = build_request(validate_messages("Oslo?"), SamplingParams(), model="m")
    assert "response_format" not in plain and "tools" not in plain


def test_history_tool_calls_carry_their_arguments_as_json_text() -> None:
    history = [
        {"role": "user", "content": "Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]
    body = build_request(
        validate_messages(history), SamplingParams(), model="m", tools=(), tool_choice="none"
    )
    assert body["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert body["messages"][0] is not None and body["messages"][2]["tool_call_id"] == "c1"
    assert "tool_choice" not in body, "tool_choice goes only with tools"


def _completion(content: str, tool_calls: list[dict[str, Any]] | None = None) -> Any:
    from openai.types.chat import ChatCompletion

    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                    "message": message,
                }
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60},
        }
    )


SERVER_CALL = {
    "id": "chatcmpl-tool-1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}


def test_calls_parsed_by_the_server_and_calls_left_in_the_content_look_the_same(
    backend: VLLMBackend,
) -> None:
    _, by_server = assembled(backend, [_completion("", [SERVER_CALL])], tools=True)
    _, by_us = assembled(backend, [_completion(f"Checking.\n{CALL}")], tools=True)
    for result in (by_server, by_us):
        assert result.finish_reason == "tool_calls"
        assert [(c.name, c.arguments) for c in result.tool_calls] == [
            ("get_weather", {"city": "Oslo"})
        ]
    assert by_server.tool_calls[0].id == "chatcmpl-tool-1"
    assert (by_server.text, by_us.text) == ("", "Checking.")
    _, without_tools = assembled(backend, [_completion(CALL)])
    assert without_tools.text == CALL and without_tools.finish_reason == "stop"


def test_server_arguments_that_are_not_json_are_kept_as_text(
    backend: VLLMBackend, caplog: pytest.LogCaptureFixture
) -> None:
    broken = {**SERVER_CALL, "function": {"name": "get_weather", "arguments": "{city: Oslo"}}
    with caplog.at_level(logging.WARNING, logger="qwen_backends.backends.vllm"):
        _, result = assembled(backend, [_completion("", [broken])], tools=True)
    assert result.tool_calls == () and result.finish_reason == "stop"
    assert "{city: Oslo" in result.text and result.text.startswith("<tool_call>")
    assert "kept as text" in caplog.text


def _chunk(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    usage: bool = False,
) -> Any:
    from openai.types.chat import ChatCompletionChunk

    delta: dict[str, Any] = {"content": content}
    if tool_calls:
        delta["tool_calls"] = tool_calls
    data: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        data["usage"] = {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}
    return ChatCompletionChunk.model_validate(data)


def test_a_stream_assembles_server_deltas_and_hides_calls_in_the_content(
    backend: VLLMBackend,
) -> None:
    arguments = '{"city": "Bergen"}'
    deltas = [
        _chunk(
            tool_calls=[
                {
                    "index": 0,
                    "id": "t0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        ),
        *(
            _chunk(tool_calls=[{"index": 0, "function": {"arguments": arguments[i : i + 4]}}])
            for i in range(0, len(arguments), 4)
        ),
    ]
    text = f"Checking.\n{CALL}"
    content = [_chunk(text[i : i + 3]) for i in range(0, len(text), 3)]
    end = [_chunk(finish="tool_calls"), _chunk(usage=True)]
    end[1].choices = []
    shown, final = assembled(backend, [*content, *deltas, *end], tools=True)
    assert shown == final.text == "Checking."
    assert final.finish_reason == "tool_calls"
    server_call, content_call = final.tool_calls
    assert (server_call.id, server_call.arguments) == ("t0", {"city": "Bergen"})
    assert content_call.arguments == {"city": "Oslo"}


# -- a real vLLM server -----------------------------------------------------------------------


@pytest.mark.vllm
def test_a_real_server_enforces_the_schema_and_renders_the_tools(
    vllm_served: tuple[str, str],
) -> None:
    base_url, model = vllm_served
    built = create_backend(backend="vllm", model=model, vllm={"base_url": base_url})
    with built:
        for seed in range(6):
            result = built.generate(
                "Weather?", {"max_new_tokens": 60, "seed": seed}, response_format=SCHEMA
            )
            assert result.parsed == json.loads(result.text)
            assert result.parsed["sky"] in ("sunny", "rain")
        plain = built.generate("Weather?", {"max_new_tokens": 1})
        with_tools = built.generate("Weather?", {"max_new_tokens": 1}, tools=[get_weather])
        # The server's template rendered the <tools> block into the prompt.
        assert with_tools.prompt_tokens > plain.prompt_tokens + 40
