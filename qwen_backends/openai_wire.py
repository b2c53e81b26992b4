"""The OpenAI chat-completions wire format, written once for both of its sides.

The vllm backend is a client of an OpenAI-compatible server; ``serve`` is such a server. Both
speak through this module, so a tool call looks the same whichever way it travels:

- :func:`tool_call_object` -- the one conversion of a tool call to OpenAI's
  ``{"id", "type": "function", "function": {"name", "arguments"}}`` (arguments as JSON text, as
  the protocol wants, or as an object for a chat template); :func:`tool_call_from_openai` is
  its inverse for calls a server parsed;
- :func:`openai_message` -- a history message as the protocol wants it;
- :func:`json_schema_format` -- a ``response_format`` of type ``json_schema``;
- :func:`finish_reason` -- the protocol's finish reason as the library's;
- :func:`completion`, :func:`chunk`, :func:`usage`, :func:`tool_call_deltas` and
  :func:`new_completion_id` -- the answer objects a server sends.

Standard library only (no ``openai`` import): the client side reads the SDK's objects by
attribute.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.results import FinishReason, Generation, ToolCall

if TYPE_CHECKING:
    from qwen_backends.chat import Message
    from qwen_backends.structured import ResponseFormat

__all__ = [
    "chat_logprobs",
    "chunk",
    "completion",
    "finish_reason",
    "json_schema_format",
    "new_completion_id",
    "openai_message",
    "tool_call_deltas",
    "tool_call_from_openai",
    "tool_call_object",
    "usage",
]

#: The protocol's finish reasons that mean the model ended its turn.
_STOP_REASONS = frozenset({"stop", "tool_calls", "function_call"})


# -- tool calls ----------------------------------------------------------------------------------


def tool_call_object(
    call_id: str, name: str, arguments: Mapping[str, Any] | str, *, as_text: bool = True
) -> dict[str, Any]:
    """OpenAI's ``{"id", "type": "function", "function": {"name", "arguments"}}``.

    Parameters
    ----------
    call_id, name
        The call's id and the function's name.
    arguments
        A mapping, or JSON text (kept as it is).
    as_text
        Send a mapping as JSON text (the protocol); with ``False`` it stays an object, which
        Qwen3's chat template and Ollama take.
    """
    if isinstance(arguments, str) or not as_text:
        value: Any = arguments if isinstance(arguments, str) else dict(arguments)
    else:
        value = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": value}}


def tool_call_from_openai(call_id: str, name: Any, arguments: Any) -> ToolCall | None:
    """A call a server parsed (``arguments`` as JSON text or an object) as a :class:`ToolCall`.

    ``None`` when the name is missing or the arguments are not a JSON object (the caller keeps
    such a call as text).
    """
    try:
        decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return None
    if not isinstance(decoded, dict) or not isinstance(name, str) or not name:
        return None
    return ToolCall(id=call_id, name=name, arguments=decoded)


def openai_message(message: Message) -> Message:
    """``message`` as the protocol wants it: each tool call whole, its arguments as JSON text.

    History calls may come as OpenAI objects (arguments as text or an object) or as flat
    ``{"name", "arguments"}`` dicts; a call without an id gets ``call_<index>``.
    """
    calls = message.get("tool_calls")
    if not calls:
        return message
    converted = []
    for index, call in enumerate(calls):
        function = dict(call.get("function", call))
        converted.append(
            tool_call_object(
                call.get("id") or f"call_{index}",
                function.get("name"),  # type: ignore[arg-type]  # checked by validate_messages
                function.get("arguments") or {},
            )
        )
    return {**message, "tool_calls": converted}


# -- request and answer fields -------------------------------------------------------------------


def json_schema_format(response_format: ResponseFormat) -> dict[str, Any]:
    """``response_format`` of type ``json_schema`` (strict; the name made protocol-safe)."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": re.sub(r"[^A-Za-z0-9_-]", "_", response_format.name)[:64],
            "schema": response_format.schema,
            "strict": True,
        },
    }


def finish_reason(value: str | None) -> FinishReason | None:
    """The library's finish reason for the protocol's; ``None`` for any other reason (an abort
    or an error, which a client reports as a failure)."""
    if value == "length":
        return "length"
    if value is None or value in _STOP_REASONS:
        return "stop"
    return None


# -- answers (the server side) -------------------------------------------------------------------


def new_completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(generation: Generation) -> dict[str, Any]:
    """OpenAI's ``usage`` object from a :class:`Generation`; prompt tokens served from the
    backend's prompt cache are ``prompt_tokens_details.cached_tokens``, as OpenAI reports them."""
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": generation.cached_tokens},
    }


def _tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [tool_call_object(call.id, call.name, call.arguments) for call in calls]


def completion(completion_id: str, model: str, generation: Generation) -> dict[str, Any]:
    """The ``chat.completion`` object for a finished generation."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": generation.text if generation.text or not generation.tool_calls else None,
        "refusal": None,
    }
    if generation.tool_calls:
        message["tool_calls"] = _tool_calls(generation.tool_calls)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": generation.finish_reason,
                "logprobs": chat_logprobs(generation),
            }
        ],
        "usage": usage(generation),
        "system_fingerprint": None,
    }


def chunk(
    completion_id: str,
    model: str,
    created: int,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage_value: dict[str, int] | None = None,
    with_usage: bool = False,
    no_choices: bool = False,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``no_choices``: the final usage-only chunk)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if no_choices
        else [
            {
                "index": 0,
                "delta": delta or {},
                "finish_reason": finish_reason,
                "logprobs": logprobs,
            }
        ],
    }
    if with_usage:
        body["usage"] = usage_value
    return body


def chat_logprobs(generation: Generation | None) -> dict[str, Any] | None:
    """``choices[0].logprobs`` of a chat answer (``{"content": [{"token", "logprob", "bytes",
    "top_logprobs"}]}``), or ``None`` when logprobs were not asked for. A stream carries them
    all in its finishing chunk."""
    if generation is None or generation.logprobs is None:
        return None
    return {
        "content": [
            {
                **_logprob_entry(token.token, token.logprob),
                "top_logprobs": [_logprob_entry(best.token, best.logprob) for best in token.top],
            }
            for token in generation.logprobs
        ],
        "refusal": None,
    }


def _logprob_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def tool_call_deltas(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """``delta.tool_calls`` entries for a streamed answer (each call whole, with its index)."""
    return [{"index": i, **call} for i, call in enumerate(_tool_calls(calls))]
