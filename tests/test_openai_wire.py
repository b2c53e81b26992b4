"""The OpenAI wire format shared by the vllm backend (a client) and ``serve`` (a server)."""

from __future__ import annotations

import json

from qwen_backends.openai_wire import (
    completion,
    finish_reason,
    openai_message,
    tool_call_from_openai,
    tool_call_object,
)
from qwen_backends.results import Generation, ToolCall
from qwen_backends.tools import assistant_message

CALL = ToolCall(id="call_1", name="get_weather", arguments={"city": "Zürich"})


def test_one_tool_call_conversion_serves_the_protocol_and_the_template() -> None:
    sent = tool_call_object(CALL.id, CALL.name, CALL.arguments)
    assert sent == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
    }
    history = assistant_message("", [CALL])["tool_calls"][0]
    assert history == {**sent, "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
    # The history call goes back on the wire exactly as serve answered it.
    assert openai_message({"role": "assistant", "content": "", "tool_calls": [history]}) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [sent],
    }
    answered = completion(
        "chatcmpl-1", "m", Generation("", "tool_calls", 3, 4, 0.1, tool_calls=(CALL,))
    )
    assert answered["choices"][0]["message"]["tool_calls"] == [sent]


def test_a_history_call_without_an_id_or_with_text_arguments() -> None:
    flat = {"name": "f", "arguments": '{"a": 1}'}
    converted = openai_message({"role": "assistant", "content": "", "tool_calls": [flat]})
    assert converted["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]


def test_calls_a_server_parsed_are_read_back_or_refused() -> None:
    assert tool_call_from_openai("c", "f", '{"a": 1}') == ToolCall("c", "f", {"a": 1})
    assert tool_call_from_openai("c", "f", {"a": 1}) == ToolCall("c", "f", {"a": 1})
    for name, arguments in (("f", "{a: 1"), ("f", "[1]"), ("", "{}"), (None, "{}")):
        assert tool_call_from_openai("c", name, arguments) is None, (name, arguments)
    assert json.loads(tool_call_object("c", "f", {"a": [1]})["function"]["arguments"]) == {"a": [1]}


def test_finish_reasons() -> None:
    assert [finish_reason(v) for v in ("stop", "tool_calls", "function_call", None)] == ["stop"] * 4
    assert finish_reason("length") == "length"
    assert finish_reason("abort") is None and finish_reason("error") is None
