"""How the export checks compare a trained answer with what an exported model answers."""

from __future__ import annotations

from qwen_backends.backends.base import Generation, ToolCall
from qwen_backends.export.answers import Answer, conversation_tools
from qwen_backends.finetune.data import Chat

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
TRAINED_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>'
)


def generation(text: str, calls: tuple[ToolCall, ...] = (), reason: str = "stop") -> Generation:
    return Generation(
        text=text,
        finish_reason=reason,  # type: ignore[arg-type]
        prompt_tokens=5,
        completion_tokens=3,
        seconds=0.1,
        tool_calls=calls,
    )


def test_a_trained_tool_call_matches_the_parsed_call_whatever_the_key_order() -> None:
    expected = Answer.trained(TRAINED_CALL, tools=True)
    assert expected == Answer("", (("get_weather", '{"city": "Oslo", "unit": "C"}'),))
    call = ToolCall("call_1", "get_weather", {"unit": "C", "city": "Oslo"})
    assert Answer.of(generation("", (call,), "tool_calls")).matches(expected)
    other = ToolCall("call_1", "get_weather", {"unit": "C", "city": "Rome"})
    assert not Answer.of(generation("", (other,), "tool_calls")).matches(expected)
    # The call written as text (asked without tools) is not the trained answer.
    assert not Answer.of(generation(TRAINED_CALL)).matches(expected)


def test_text_answers_must_match_and_end_their_turn() -> None:
    expected = Answer.trained("  It is sunny.\n", tools=False)
    assert Answer.of(generation("It is sunny.")).matches(expected)
    assert not Answer.of(generation("It is sunny.", reason="length")).matches(expected)
    assert not Answer.of(generation("It is rainy.")).matches(expected)
    call = ToolCall("call_1", "get_weather", {"city": "Oslo"})
    shown = Answer.of(generation("Checking.", (call,), "tool_calls")).shown()
    assert shown == 'Checking. get_weather({"city": "Oslo"})'


def test_the_tools_of_a_fine_tuning_chat_are_found() -> None:
    assert conversation_tools(Chat([{"role": "user", "content": "hi"}], [WEATHER])) == [WEATHER]
    assert conversation_tools(Chat([{"role": "user", "content": "hi"}])) is None
    assert conversation_tools([{"role": "user", "content": "hi"}]) is None
