"""Structured output and tools on the ollama backend: what is sent (against the loopback
stand-in, which records every request) and how Ollama's answers become Generation fields."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from assembled import assembled
from ollama_server import INSTRUCT_TAG, OllamaServer, TinyQwen, instruct_model

from qwen_backends import SamplingParams, create_backend
from qwen_backends.backends.ollama import OllamaBackend, chat_request, dropped_tool_fields
from qwen_backends.errors import OutputValidationError
from qwen_backends.settings import OllamaSettings
from qwen_backends.structured import ResponseFormat
from qwen_backends.tools import normalize_tools

SHORT = SamplingParams(max_new_tokens=6, seed=7)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def get_weather(city: str, days: int = 1) -> str:
    """Get the weather.

    Parameters
    ----------
    city
        The city.
    days
        Days ahead.
    """
    return "sunny"


@pytest.fixture(scope="module")
def running(tiny_model_dir: Path) -> Iterator[OllamaServer]:
    with OllamaServer(TinyQwen(tiny_model_dir)) as server:
        yield server


@pytest.fixture
def backend(running: OllamaServer) -> Iterator[OllamaBackend]:
    running.reset()
    running.models = {INSTRUCT_TAG: instruct_model()}
    built = create_backend(backend="ollama", model=INSTRUCT_TAG, ollama={"host": running.url})
    assert isinstance(built, OllamaBackend)
    with built:
        yield built


def test_the_schema_goes_as_format_and_into_the_prompt() -> None:
    fmt = ResponseFormat.of(SCHEMA)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Oslo?"}]
    body = chat_request(
        INSTRUCT_TAG, messages, SHORT, OllamaSettings(), stream=False, response_format=fmt
    )
    assert body["format"] == SCHEMA
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"] == f"Oslo?\n\n{fmt.instructions()}"
    assert messages[1]["content"] == "Oslo?", "the caller's messages are not modified"
    assert "format" not in chat_request(
        INSTRUCT_TAG, messages, SHORT, OllamaSettings(), stream=True
    )


def test_the_stand_in_receives_format_and_unvalidated_output_keeps_its_text(
    running: OllamaServer, backend: OllamaBackend
) -> None:
    # The stand-in does not enforce format (a real server does): its gibberish must fail
    # validation with the raw text attached, not be returned as parsed.
    with pytest.raises(OutputValidationError) as caught:
        backend.generate("Oslo?", SHORT, response_format=SCHEMA)
    sent = running.chats()[-1]
    assert sent["format"] == SCHEMA
    assert sent["messages"][-1]["content"].endswith(ResponseFormat.of(SCHEMA).instructions())
    assert caught.value.partial_text == running.answers[-1]["content"]
    assert caught.value.backend == "ollama"


def test_tools_go_in_the_native_field(running: OllamaServer, backend: OllamaBackend) -> None:
    result = backend.generate("Weather in Oslo?", SHORT, tools=[get_weather])
    (tool,) = running.chats()[-1]["tools"]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"]["required"] == ["city"]
    assert tool["function"]["parameters"]["properties"]["city"] == {
        "type": "string",
        "description": "The city.",
    }
    assert result.tool_calls == () and result.finish_reason in ("stop", "length")


def test_what_ollama_cannot_carry_of_a_tool_is_named_in_a_warning(
    backend: OllamaBackend, caplog: pytest.LogCaptureFixture
) -> None:
    (spec,) = normalize_tools([get_weather])
    assert dropped_tool_fields(spec) == ["properties.days.default"]
    with caplog.at_level(logging.WARNING, logger="qwen_backends.backends.ollama"):
        backend.generate("Weather?", SHORT, tools=[get_weather])
        backend.generate("Weather?", SHORT, tools=[get_weather])
    assert caplog.text.count("properties.days.default of tool 'get_weather'") == 1


def _response(
    content: str = "", calls: list[dict[str, Any]] | None = None, done: bool = True
) -> Any:
    message = ollama.Message(role="assistant", content=content, tool_calls=calls)
    return ollama.ChatResponse(
        model=INSTRUCT_TAG,
        done=done,
        done_reason="stop" if done else None,
        message=message,
        prompt_eval_count=12 if done else None,
        eval_count=9 if done else None,
    )


NATIVE = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]


def test_native_tool_calls_become_tool_calls(backend: OllamaBackend) -> None:
    _, result = assembled(backend, [_response("", NATIVE)], tools=True)
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert result.tool_calls[0].id.startswith("call_")


def test_calls_left_in_the_content_are_parsed_locally(backend: OllamaBackend) -> None:
    _, result = assembled(backend, [_response(f"Let me see.\n{CALL}")], tools=True)
    assert result.text == "Let me see."
    assert [c.arguments for c in result.tool_calls] == [{"city": "Oslo"}]
    _, untouched = assembled(backend, [_response(CALL)], tools=False)
    assert untouched.text == CALL and untouched.tool_calls == ()


def test_a_stream_hides_a_split_call_and_reports_every_call(backend: OllamaBackend) -> None:
    text = f"Let me see.\n{CALL}"
    chunks = [_response(text[i : i + 5], done=False) for i in range(0, len(text), 5)]
    chunks.append(_response("", NATIVE))
    shown, final = assembled(backend, chunks, tools=True)
    assert shown == "Let me see."
    assert final.text == "Let me see."
    assert final.finish_reason == "tool_calls"
    assert [c.arguments for c in final.tool_calls] == [{"city": "Oslo"}, {"city": "Oslo"}]
