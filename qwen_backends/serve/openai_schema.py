"""The OpenAI chat-completions wire format: requests in, answers and errors out.

:func:`parse_chat_request` turns a request body into one checked :class:`ChatCall` (messages,
:class:`~qwen_backends.sampling.SamplingParams`, ``response_format``, ``tools``). Every field is
either mapped, accepted because its value changes nothing (``n=1``), or
refused with a :class:`RequestError` naming it; nothing is dropped silently. Anything that asks
for thinking is a :class:`ThinkingRequestError`.

:func:`error_payload` is the one table from an exception to an HTTP status and OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}``. The answer objects (:func:`completion`,
:func:`chunk`, :func:`usage`, :func:`tool_call_deltas`) come from :mod:`qwen_backends.openai_wire`,
the wire format shared with the vllm backend (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwen_backends.chat import Message, validate_messages
from qwen_backends.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    OutputValidationError,
    ProtocolError,
    QwenBackendsError,
    RateLimitError,
    ServerError,
    ThinkingModeError,
    UnsupportedFeatureError,
    first_line,
)
from qwen_backends.openai_wire import (
    chat_logprobs,
    chunk,
    completion,
    new_completion_id,
    tool_call_deltas,
    usage,
)
from qwen_backends.sampling import SamplingParams
from qwen_backends.thinking import reject_thinking
from qwen_backends.tools import normalize_tools

__all__ = [
    "ChatCall",
    "ModelNotServedError",
    "RequestError",
    "ThinkingRequestError",
    "UnauthorizedError",
    "chat_logprobs",
    "chunk",
    "completion",
    "error_payload",
    "new_completion_id",
    "parse_chat_request",
    "parse_tokenize_request",
    "tool_call_deltas",
    "usage",
]

#: OpenAI field -> SamplingParams field.
SAMPLING_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "stop": "stop",
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
}
_INTEGER_FIELDS = frozenset(
    {"top_k", "seed", "max_tokens", "max_completion_tokens", "top_logprobs"}
)

#: Top-level keys that may switch thinking on in one API or another.
THINKING_FIELDS = ("reasoning_effort", "enable_thinking", "think", "thinking", "reasoning")

#: Fields accepted only with a value that changes nothing: field -> (accepted values, why not).
NO_OP_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "this server returns one choice per request; send n=1 or omit n"),
    "frequency_penalty": (
        (0, 0.0),
        "use presence_penalty (0..2) or repetition_penalty (0 < r <= 2) instead",
    ),
    "logit_bias": (({},), "logit_bias is not supported by every backend; omit it"),
    "parallel_tool_calls": ((True,), "the model may always ask for several calls; omit it"),
    "tool_choice": (
        ("auto",),
        "only 'auto' is supported; to forbid tool calls, send no tools",
    ),
    "store": ((False,), "this server stores nothing; omit store"),
    "service_tier": (("auto", "default"), "there is one service tier; omit service_tier"),
    "modalities": ((["text"],), "only text output is supported; omit modalities"),
}
#: Fields that only label the request: accepted (and ignored) when they have OpenAI's types.
LABEL_FIELDS = frozenset({"user", "metadata"})
#: Known OpenAI fields this server cannot honour at all.
REFUSED_FIELDS: dict[str, str] = {
    "functions": "the legacy functions API is not supported; send tools",
    "function_call": "the legacy functions API is not supported; send tools",
    "audio": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "suffix": "suffix is not supported",
    "echo": "echo is not supported",
    "best_of": "best_of is not supported; send n=1",
}
_HANDLED = frozenset(
    {"model", "messages", "stream", "stream_options", "response_format", "tools"}
    | {"chat_template_kwargs"}
)


class RequestError(ConfigurationError):
    """A request the server refuses (HTTP 400).

    Parameters
    ----------
    message
        One line: what was wrong and how to fix it.
    param
        The request field at fault (OpenAI's ``param``), when one is.
    code
        OpenAI's ``code``.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ThinkingRequestError(ThinkingModeError):
    """A request that asks for thinking mode, which this server never enables (HTTP 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ModelNotServedError(ConfigurationError):
    """The request names a model this server does not serve (HTTP 404)."""


class UnauthorizedError(QwenBackendsError):
    """A missing or wrong API key (HTTP 401)."""


@dataclass(frozen=True)
class ChatCall:
    """One checked chat-completions request.

    Attributes
    ----------
    model
        The model id the client asked for (one this server serves).
    messages
        The conversation, in the library's message format.
    sampling
        The settings' sampling defaults with the request's fields applied.
    response_format
        A JSON schema dict for ``backend.generate(response_format=...)``, or ``None``.
    tools
        OpenAI function specs for ``backend.generate(tools=...)``.
    stream
        Answer as server-sent events.
    include_usage
        Streaming only: end with a chunk that carries ``usage``.
    """

    model: str
    messages: list[Message]
    sampling: SamplingParams
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(
    body: Any,
    models: Sequence[str],
    defaults: SamplingParams,
    *,
    allow_control_tokens: bool = False,
) -> ChatCall:
    """Check a ``POST /v1/chat/completions`` body and map it onto the library.

    Parameters
    ----------
    body
        The decoded JSON body.
    models
        Model ids this server answers to.
    defaults
        Sampling used for every field the request leaves out (``settings.sampling``).
    allow_control_tokens
        Accept chat-template control tokens (``<|im_start|>`` ...) in message text: the
        server's ``allow_control_tokens`` setting (``QWEN_ALLOW_CONTROL_TOKENS``); refused
        (a 400 naming the message) by default.

    Raises
    ------
    RequestError
        For a malformed, unknown or unsupported field (named in ``param``).
    ThinkingRequestError
        For any field that asks for thinking.
    ModelNotServedError
        For a model this server does not serve.
    """
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    present = {key: value for key, value in body.items() if value is not None}
    _check_thinking(present)
    model = _model(present, models)
    for key, value in present.items():
        _check_field(key, value)
    stream = _bool(present, "stream")
    include_usage = _stream_options(present, stream)
    return ChatCall(
        model=model,
        messages=_messages(present.get("messages"), allow_control_tokens),
        sampling=_sampling(present, defaults),
        response_format=_response_format(present.get("response_format"), allow_control_tokens),
        tools=_tools(present.get("tools"), allow_control_tokens),
        stream=stream,
        include_usage=include_usage,
    )


def parse_tokenize_request(
    body: Any, models: Sequence[str], *, allow_control_tokens: bool = False
) -> tuple[list[Message], list[dict[str, Any]]]:
    """Check a ``POST /v1/tokenize`` body: ``{"model", "messages", "tools"?}``.

    ``allow_control_tokens`` as for :func:`parse_chat_request`.
    """
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    present = {key: value for key, value in body.items() if value is not None}
    _check_thinking(present)
    _model(present, models)
    unknown = sorted(present.keys() - {"model", "messages", "tools", "chat_template_kwargs"})
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0]!r} for /v1/tokenize; send model, messages and "
            "optionally tools",
            param=unknown[0],
        )
    return (
        _messages(present.get("messages"), allow_control_tokens),
        _tools(present.get("tools"), allow_control_tokens),
    )


# -- request parts -------------------------------------------------------------------------------


def _check_thinking(present: dict[str, Any]) -> None:
    for key in THINKING_FIELDS:
        if key not in present:
            continue
        value = present[key]
        if key == "reasoning_effort" and value == "none":
            continue
        try:
            reject_thinking({key: value}, "request")
        except ThinkingModeError as exc:
            raise ThinkingRequestError(str(exc), param=key) from None
    kwargs = present.get("chat_template_kwargs")
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping):
        raise RequestError("chat_template_kwargs must be an object", param="chat_template_kwargs")
    for key in kwargs.keys() & {"enable_thinking", "thinking", "reasoning_effort"}:
        try:
            reject_thinking({key: kwargs[key]}, "chat_template_kwargs")
        except ThinkingModeError as exc:
            raise ThinkingRequestError(str(exc), param=f"chat_template_kwargs.{key}") from None
    other = sorted(set(kwargs) - {"enable_thinking", "thinking", "reasoning_effort"})
    if other:
        raise RequestError(
            f"chat_template_kwargs.{other[0]} is not supported: the server renders Qwen3's "
            "non-thinking template itself; only enable_thinking=false is accepted",
            param=f"chat_template_kwargs.{other[0]}",
        )


def _model(present: dict[str, Any], models: Sequence[str]) -> str:
    model = present.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(
            f"model is required: send one of {', '.join(map(repr, models))} (GET /v1/models)",
            param="model",
        )
    if model not in models:
        raise ModelNotServedError(
            f"the model {model!r} is not served here; use {', '.join(map(repr, models))} "
            "(GET /v1/models lists it)"
        )
    return model


def _check_field(key: str, value: Any) -> None:
    if key in LABEL_FIELDS:
        _check_label(key, value)
        return
    if key in _HANDLED or key in SAMPLING_FIELDS or key in THINKING_FIELDS:
        return
    if key in NO_OP_FIELDS:
        accepted, why = NO_OP_FIELDS[key]
        if not any(_same(value, ok) for ok in accepted):
            raise RequestError(f"{key}={value!r} is not supported: {why}", param=key)
        return
    if key in REFUSED_FIELDS:
        raise RequestError(f"{key} is not supported: {REFUSED_FIELDS[key]}", param=key)
    raise RequestError(
        f"unknown field {key!r}; remove it (see docs/serve.md for the supported fields)",
        param=key,
    )


def _check_label(key: str, value: Any) -> None:
    """``user`` is a string; ``metadata`` an object of strings (OpenAI's types)."""
    if key == "user" and not isinstance(value, str):
        raise RequestError(f"user must be a string, got {_json_type(value)}", param="user")
    if key == "metadata":
        if not isinstance(value, Mapping):
            raise RequestError(
                f"metadata must be an object of strings, got {_json_type(value)}", param="metadata"
            )
        for name, item in value.items():
            if not isinstance(item, str):
                raise RequestError(
                    f"metadata.{name} must be a string, got {_json_type(item)}",
                    param=f"metadata.{name}",
                )


def _json_type(value: Any) -> str:
    """``value``'s JSON type, for messages ("a number", "an array", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _same(value: Any, accepted: Any) -> bool:
    """``value == accepted`` without letting ``True`` pass for ``1`` or ``0`` for ``False``."""
    if isinstance(value, bool) or isinstance(accepted, bool):
        return type(value) is type(accepted) and value == accepted
    return bool(value == accepted)


def _bool(present: dict[str, Any], key: str) -> bool:
    value = present.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false, got {value!r}", param=key)
    return value


def _stream_options(present: dict[str, Any], stream: bool) -> bool:
    options = present.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise RequestError(
            "stream_options is only allowed with stream=true", param="stream_options"
        )
    if not isinstance(options, Mapping):
        raise RequestError("stream_options must be an object", param="stream_options")
    unknown = sorted(set(options) - {"include_usage", "include_obfuscation"})
    if unknown:
        raise RequestError(
            f"stream_options.{unknown[0]} is not supported; use include_usage",
            param=f"stream_options.{unknown[0]}",
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError(
            "stream_options.include_usage must be true or false",
            param="stream_options.include_usage",
        )
    return include


def _messages(value: Any, allow_control_tokens: bool) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RequestError(
            "messages must be a non-empty list of {role, content} objects", param="messages"
        )
    converted: list[Any] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise RequestError(f"{where} must be an object with role and content", param=where)
        entry = {key: item for key, item in message.items() if item is not None}
        if entry.get("role") == "developer":
            entry["role"] = "system"
        content = entry.get("content")
        if isinstance(content, list):
            entry["content"] = _text_parts(content, where)
        elif content is None and entry.get("role") == "assistant" and entry.get("tool_calls"):
            entry["content"] = ""
        for key in ("refusal", "annotations", "audio", "function_call"):
            if key in entry and entry[key] in ([], ""):
                del entry[key]
        converted.append(entry)
    try:
        return validate_messages(converted, allow_control_tokens=allow_control_tokens)
    except ConfigurationError as exc:
        raise RequestError(str(exc), param="messages") from None


def _text_parts(parts: list[Any], where: str) -> str:
    texts = []
    for number, part in enumerate(parts):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise RequestError(
                f"{where}.content[{number}] is a {kind!r} part; only text parts are supported",
                param=f"{where}.content",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(
                f"{where}.content[{number}].text must be a string", param=f"{where}.content"
            )
        texts.append(text)
    return "".join(texts)


def _sampling(present: dict[str, Any], defaults: SamplingParams) -> SamplingParams:
    given = {key: present[key] for key in SAMPLING_FIELDS if key in present}
    for key, value in given.items():  # a wrong type is named as such, not as a mismatch
        _check_type(key, value)
    if (
        "max_tokens" in given
        and "max_completion_tokens" in given
        and given["max_tokens"] != given["max_completion_tokens"]
    ):
        raise RequestError(
            "max_tokens and max_completion_tokens differ; send only one of them",
            param="max_completion_tokens",
        )
    changes: dict[str, Any] = {}
    for key, value in given.items():
        name = SAMPLING_FIELDS[key]
        # top_logprobs is checked on its own range here; needing logprobs, just below.
        alone = {name: value, "logprobs": True} if key == "top_logprobs" else {name: value}
        try:
            defaults.replace(**alone)
        except ConfigurationError as exc:
            message = str(exc).removeprefix("invalid sampling parameters: ")
            if name != key:
                message = message.replace(name, key)
            raise RequestError(message, param=key) from None
        changes[name] = value
    if changes.get("top_logprobs") and not changes.get("logprobs", defaults.logprobs):
        raise RequestError(
            "top_logprobs needs logprobs=True; send both, or drop top_logprobs",
            param="top_logprobs",
        )
    try:
        return defaults.replace(**changes) if changes else defaults
    except ConfigurationError as exc:
        raise RequestError(str(exc)) from None


def _check_type(key: str, value: Any) -> None:
    if key == "stop":
        if isinstance(value, str):
            return
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return
        raise RequestError("stop must be a string or a list of strings", param="stop")
    if key == "logprobs":
        if not isinstance(value, bool):
            raise RequestError(f"logprobs must be true or false, got {value!r}", param=key)
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in _INTEGER_FIELDS:
        if not number or (isinstance(value, float) and not value.is_integer()):
            raise RequestError(f"{key} must be an integer, got {value!r}", param=key)
    elif not number or (isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(f"{key} must be a number, got {value!r}", param=key)


def _response_format(value: Any, allow_control_tokens: bool = False) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RequestError("response_format must be an object", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        where = "response_format.json_schema.schema"
        if not isinstance(schema, Mapping):
            raise RequestError(f"{where} must be a JSON schema object", param=where)
        from qwen_backends.structured import ResponseFormat

        try:
            ResponseFormat.of(schema, allow_control_tokens=allow_control_tokens)
        except ConfigurationError as exc:
            raise RequestError(f"{where}: {exc}", param=where) from None
        return dict(schema)
    raise RequestError(
        f"response_format.type={kind!r} is not supported; use text, json_object or json_schema",
        param="response_format.type",
    )


def _tools(value: Any, allow_control_tokens: bool = False) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError("tools must be a list of function specs", param="tools")
    for index, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not isinstance(function, Mapping)
            or not isinstance(function.get("name"), str)
        ):
            raise RequestError(
                f"tools[{index}] must be {{'type': 'function', 'function': {{'name', "
                "'parameters', ...}}}",
                param=f"tools[{index}]",
            )
        try:
            normalize_tools([tool], allow_control_tokens=allow_control_tokens)
        except ConfigurationError as exc:
            raise RequestError(f"tools[{index}]: {exc}", param=f"tools[{index}]") from None
    return [dict(tool) for tool in value]


# -- errors --------------------------------------------------------------------------------------


def error_payload(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """HTTP status, OpenAI error body and extra headers for ``exc``.

    400 for a refused request (the ConfigurationError family, unsupported features), 401 for a
    bad key, 404 for an unknown model, 422 for structured output that failed validation, 429
    when the backend's server rate-limits, 503 (with ``Retry-After``) when the backend is
    unavailable or its queue is full, 504 for a backend timeout, 502 for other failures of the
    backend's server, 500 for anything else. The message is always one line.
    """
    message = first_line(exc) if isinstance(exc, QwenBackendsError) else _internal(exc)
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None)
    headers: dict[str, str] = {}
    if isinstance(exc, UnauthorizedError):
        status, kind, code = 401, "invalid_request_error", "invalid_api_key"
    elif isinstance(exc, ModelNotServedError):
        status, kind, code, param = 404, "invalid_request_error", "model_not_found", "model"
    elif isinstance(exc, ThinkingModeError):
        status, kind, code = 400, "invalid_request_error", "thinking_not_supported"
    elif isinstance(exc, ContextLengthError):
        status, kind, code = 400, "invalid_request_error", "context_length_exceeded"
        param = param or "messages"
    elif isinstance(exc, ConfigurationError):
        status, kind = 400, "invalid_request_error"
    elif isinstance(exc, UnsupportedFeatureError):
        status, kind, code = 400, "invalid_request_error", "unsupported_feature"
        param = param or exc.option
    elif isinstance(exc, OutputValidationError):
        status, kind, code = 422, "invalid_response_error", "output_validation_failed"
    elif isinstance(exc, BackendUnavailableError):
        status, kind, code = 503, "server_error", code or "backend_unavailable"
        headers["Retry-After"] = str(getattr(exc, "retry_after", 5))
    elif isinstance(exc, RateLimitError):
        status, kind, code = 429, "rate_limit_error", "rate_limit_exceeded"
        headers["Retry-After"] = "1"
    elif isinstance(exc, BackendTimeoutError):
        status, kind, code = 504, "server_error", "backend_timeout"
    elif isinstance(exc, (ServerError, ProtocolError, GenerationError)):
        status, kind, code = 502, "server_error", "backend_error"
    elif isinstance(exc, ModelNotFoundError):
        status, kind, code = 502, "server_error", "backend_model_not_found"
    else:
        status, kind, code = 500, "server_error", "internal_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, body, headers


def _internal(exc: BaseException) -> str:
    return f"internal server error ({type(exc).__name__}: {first_line(exc)}); see the server log"
