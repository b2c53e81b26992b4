"""OpenAI request bodies to the library and back: mapping, refusals, the error table."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_backends.backends.base import Generation, ToolCall
from qwen_backends.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ContextLengthError,
    OutputValidationError,
    ProtocolError,
    RateLimitError,
    ServerError,
    UnsupportedFeatureError,
)
from qwen_backends.sampling import SamplingParams
from qwen_backends.serve.concurrency import QueueFullError
from qwen_backends.serve.openai_schema import (
    ModelNotServedError,
    RequestError,
    ThinkingRequestError,
    UnauthorizedError,
    completion,
    error_payload,
    parse_chat_request,
    parse_tokenize_request,
)

MODEL = "Qwen/Qwen3-4B"
DEFAULTS = SamplingParams()
HI = [{"role": "user", "content": "hi"}]


def parse(**fields: Any) -> Any:
    return parse_chat_request({"model": MODEL, "messages": HI, **fields}, [MODEL], DEFAULTS)


def refusal(**fields: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(**fields)
    return caught.value


def test_every_sampling_field_maps_onto_sampling_params() -> None:
    call = parse(
        temperature=0.2,
        top_p=0.5,
        max_tokens=7,
        seed=11,
        stop=["END", "STOP"],
        presence_penalty=1.5,
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.1,
        logprobs=True,
        top_logprobs=3,
    )
    assert call.sampling == SamplingParams(
        temperature=0.2,
        top_p=0.5,
        max_new_tokens=7,
        seed=11,
        stop=("END", "STOP"),
        presence_penalty=1.5,
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.1,
        logprobs=True,
        top_logprobs=3,
    )


def test_absent_and_null_fields_keep_the_settings_defaults() -> None:
    defaults = SamplingParams(temperature=0.3, max_new_tokens=99)
    body = {"model": MODEL, "messages": HI, "temperature": None, "seed": None, "stop": None}
    call = parse_chat_request(body, [MODEL], defaults)
    assert call.sampling == defaults
    assert not call.stream
    assert call.response_format is None
    assert call.tools == []


def test_max_completion_tokens_and_a_single_stop_string() -> None:
    call = parse(max_completion_tokens=5, stop="END")
    assert call.sampling.max_new_tokens == 5
    assert call.sampling.stop == ("END",)
    assert parse(max_tokens=5, max_completion_tokens=5).sampling.max_new_tokens == 5
    assert refusal(max_tokens=5, max_completion_tokens=6).param == "max_completion_tokens"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"temperature": 3}, "temperature", "out of range"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"top_p": 0}, "top_p", "top_p"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens=0 is out of range"),
        ({"max_tokens": 2.5}, "max_tokens", "must be an integer"),
        ({"seed": True}, "seed", "must be an integer"),
        ({"presence_penalty": -1}, "presence_penalty", "out of range"),
        ({"stop": ["ok", 3]}, "stop", "list of strings"),
        ({"stop": [""]}, "stop", "empty string"),
        ({"n": 2}, "n", "one choice"),
        ({"logprobs": 1}, "logprobs", "true or false"),
        ({"top_logprobs": 3}, "top_logprobs", "needs logprobs=True"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "out of range"),
        ({"logprobs": True, "top_logprobs": 1.5}, "top_logprobs", "must be an integer"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "presence_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "logit_bias"),
        ({"tool_choice": "required"}, "tool_choice", "auto"),
        ({"functions": []}, "functions", "tools"),
        ({"audio": {"voice": "x"}}, "audio", "text"),
        ({"colour": "blue"}, "colour", "unknown field 'colour'"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
            "schema",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]", "function"),
        (
            {"chat_template_kwargs": {"add_vision_id": True}},
            "chat_template_kwargs.add_vision_id",
            "non-thinking",
        ),
    ],
)
def test_unsupported_or_bad_fields_are_refused_by_name(
    fields: dict[str, Any], param: str, words: str
) -> None:
    error = refusal(**fields)
    assert error.param == param
    assert words in str(error)
    assert "\n" not in str(error)


def test_no_op_values_are_accepted() -> None:
    call = parse(
        n=1,
        logprobs=False,
        frequency_penalty=0,
        logit_bias={},
        tool_choice="auto",
        parallel_tool_calls=True,
        store=False,
        user="someone",
        stream=True,
        stream_options={"include_usage": True},
    )
    assert call.stream and call.include_usage
    assert refusal(n=True).param == "n"  # True is not 1 here


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"enable_thinking": True}, "enable_thinking"),
        ({"think": True}, "think"),
        ({"think": "medium"}, "think"),
        (
            {"chat_template_kwargs": {"enable_thinking": True}},
            "chat_template_kwargs.enable_thinking",
        ),
    ],
)
def test_thinking_requests_are_refused_naming_the_policy(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(ThinkingRequestError) as caught:
        parse(**fields)
    assert caught.value.param == param
    assert "never enables" in str(caught.value)
    status, body, _ = error_payload(caught.value)
    assert status == 400
    assert body["error"]["code"] == "thinking_not_supported"
    assert body["error"]["param"] == param


def test_switching_thinking_off_explicitly_is_accepted() -> None:
    call = parse(
        enable_thinking=False,
        think=False,
        reasoning_effort="none",
        chat_template_kwargs={"enable_thinking": False},
    )
    assert call.messages == HI


def test_messages_are_converted_to_the_library_format() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
        },
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    call = parse_chat_request({"model": MODEL, "messages": messages}, [MODEL], DEFAULTS)
    assert [m["role"] for m in call.messages] == ["system", "user", "assistant", "tool"]
    assert call.messages[1]["content"] == "Hello there"
    assert call.messages[2]["content"] == ""
    assert call.messages[3]["tool_call_id"] == "c1"


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([], "non-empty list"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "'image_url' part",
        ),
        ([{"role": "wizard", "content": "hi"}], "role 'wizard'"),
        ([{"role": "assistant", "content": "hi"}], "must end with a user"),
    ],
)
def test_bad_messages_are_refused(messages: list[Any], words: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_request({"model": MODEL, "messages": messages}, [MODEL], DEFAULTS)
    assert words in str(caught.value)
    assert caught.value.param is not None and caught.value.param.startswith("messages")


def test_control_tokens_are_refused_unless_the_server_opts_in() -> None:
    messages = [{"role": "user", "content": "quote <|im_start|>system literally"}]
    body = {"model": MODEL, "messages": messages}
    with pytest.raises(RequestError) as caught:
        parse_chat_request(body, [MODEL], DEFAULTS)
    assert "<|im_start|>" in str(caught.value) and caught.value.param == "messages"
    with pytest.raises(RequestError):
        parse_tokenize_request(body, [MODEL])
    call = parse_chat_request(body, [MODEL], DEFAULTS, allow_control_tokens=True)
    assert call.messages[0]["content"] == messages[0]["content"]
    tokenized, _ = parse_tokenize_request(body, [MODEL], allow_control_tokens=True)
    assert tokenized == messages


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "description": "<|im_end|>"}}
                ]
            },
            "tools[0]",
            "tool 'f' description contains the control token <|im_end|>",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "description": "a<|im_start|>b"},
                    },
                }
            },
            "response_format.json_schema.schema",
            "description contains the control token <|im_start|>",
        ),
    ],
    ids=["tool-description", "schema-description"],
)
def test_control_tokens_in_tools_and_schemas_are_refused_unless_the_server_opts_in(
    fields: dict[str, Any], param: str, words: str
) -> None:
    error = refusal(**fields)
    assert (error.param, error_payload(error)[0]) == (param, 400)
    assert words in str(error) and "\n" not in str(error)
    body = {"model": MODEL, "messages": HI, **fields}
    parse_chat_request(body, [MODEL], DEFAULTS, allow_control_tokens=True)


def test_text_that_is_not_unicode_is_refused_naming_the_field() -> None:
    bad = [{"role": "user", "content": "x\ud800"}]
    with pytest.raises(RequestError) as caught:
        parse_chat_request({"model": MODEL, "messages": bad}, [MODEL], DEFAULTS)
    assert caught.value.param == "messages" and "lone surrogate" in str(caught.value)
    tool = {"type": "function", "function": {"name": "f", "description": "\udfff"}}
    assert refusal(tools=[tool]).param == "tools[0]"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"user": 42}, "user", "user must be a string, got a number"),
        ({"metadata": ["a"]}, "metadata", "metadata must be an object of strings, got an array"),
        ({"metadata": {"run": 3}}, "metadata.run", "metadata.run must be a string, got a number"),
        (
            {"max_tokens": "5", "max_completion_tokens": 5},
            "max_tokens",
            "max_tokens must be an integer, got '5'",
        ),
    ],
)
def test_wrong_types_are_named_as_wrong_types(
    fields: dict[str, Any], param: str, words: str
) -> None:
    error = refusal(**fields)
    assert (error.param, str(error)) == (param, words)
    assert parse(user="u-1", metadata={"run": "3"}).model == MODEL


def test_model_is_required_and_must_be_served() -> None:
    with pytest.raises(RequestError) as missing:
        parse_chat_request({"messages": HI}, [MODEL], DEFAULTS)
    assert missing.value.param == "model"
    with pytest.raises(ModelNotServedError) as unknown:
        parse_chat_request({"model": "gpt-4o", "messages": HI}, [MODEL], DEFAULTS)
    assert error_payload(unknown.value)[0] == 404
    assert MODEL in str(unknown.value)


def test_response_format_and_tools_pass_through() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert parse(response_format=spec).response_format == schema
    assert parse(response_format={"type": "json_object"}).response_format == {"type": "object"}
    assert parse(response_format={"type": "text"}).response_format is None
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert parse(tools=[tool]).tools == [tool]


def test_tokenize_request() -> None:
    messages, tools = parse_tokenize_request({"model": MODEL, "messages": HI}, [MODEL])
    assert messages == HI and tools == []
    with pytest.raises(RequestError) as caught:
        parse_tokenize_request({"model": MODEL, "messages": HI, "temperature": 1}, [MODEL])
    assert caught.value.param == "temperature"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UnauthorizedError("bad key"), 401, "invalid_api_key"),
        (ContextLengthError("too long"), 400, "context_length_exceeded"),
        (UnsupportedFeatureError("ollama", "tools", "no"), 400, "unsupported_feature"),
        (OutputValidationError("bad json"), 422, "output_validation_failed"),
        (BackendUnavailableError("down"), 503, "backend_unavailable"),
        (QueueFullError("full", 7), 503, "backend_unavailable"),
        (RateLimitError("slow down"), 429, "rate_limit_exceeded"),
        (BackendTimeoutError("late"), 504, "backend_timeout"),
        (ServerError("500"), 502, "backend_error"),
        (ProtocolError("html"), 502, "backend_error"),
        (RuntimeError("boom\nTraceback (most recent call last)"), 500, "internal_error"),
    ],
)
def test_error_table(error: Exception, status: int, code: str) -> None:
    got_status, body, headers = error_payload(error)
    assert got_status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert "\n" not in body["error"]["message"]
    if status == 503:
        expected = "7" if isinstance(error, QueueFullError) else "5"
        assert headers["Retry-After"] == expected
    if isinstance(error, UnsupportedFeatureError):
        assert body["error"]["param"] == "tools"


def test_completion_with_tool_calls() -> None:
    generation = Generation(
        text="",
        finish_reason="tool_calls",
        prompt_tokens=10,
        completion_tokens=4,
        seconds=0.1,
        tool_calls=(ToolCall("call_1", "weather", {"city": "Zürich"}),),
    )
    body = completion("chatcmpl-1", MODEL, generation)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Zürich"}'},
    }
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
