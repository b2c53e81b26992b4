"""The chat request a vLLM server receives: :func:`build_request`.

Every request carries ``chat_template_kwargs={"enable_thinking": False}`` and every sampling
value explicitly (vLLM would otherwise fall back to the model's thinking-mode
``generation_config``); options vLLM takes outside the OpenAI schema (``top_k``, ``min_p``,
``repetition_penalty``, ``allowed_token_ids``, ``return_tokens_as_token_ids``) go in
``extra_body``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.openai_wire import json_schema_format, openai_message

if TYPE_CHECKING:
    from qwen_backends.chat import Message
    from qwen_backends.sampling import SamplingParams
    from qwen_backends.structured import ResponseFormat

__all__ = ["MAX_TOP_LOGPROBS", "TOP_K_OFF", "build_request"]

#: vLLM's value for "no top-k": 0 in current releases, but -1 is accepted by old and new alike
#: (releases before 0.8 rejected 0), so deployments on any version understand it.
TOP_K_OFF = -1
#: vLLM's default ``--max-logprobs``.
MAX_TOP_LOGPROBS = 20


def build_request(
    messages: list[Message],
    sampling: SamplingParams,
    *,
    model: str,
    allowed_token_ids: Sequence[int] | None = None,
    stream: bool = False,
    response_format: ResponseFormat | None = None,
    tools: Sequence[dict[str, Any]] = (),
    tool_choice: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``client.chat.completions.create`` (sync and async alike).

    Parameters
    ----------
    messages
        A validated conversation (see :func:`qwen_backends.chat.validate_messages`).
    sampling
        Every field is sent explicitly; ``top_k=0`` (off) becomes vLLM's :data:`TOP_K_OFF`.
    model
        The name the server serves the model under.
    allowed_token_ids
        Restrict sampling to these ids (``english_only``); ``None`` allows the whole vocabulary.
    stream
        Ask for a stream of chunks, the last one carrying the token usage.
    response_format
        Output schema, sent as ``response_format`` of type ``json_schema``.
    tools
        OpenAI-style function specs, sent as ``tools``.
    tool_choice
        Sent with ``tools`` when given; ``None`` leaves the server's default (``auto``).
    """
    extra_body: dict[str, Any] = {
        "chat_template_kwargs": {"enable_thinking": False},
        "top_k": sampling.top_k if sampling.top_k > 0 else TOP_K_OFF,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
    }
    if allowed_token_ids is not None:
        extra_body["allowed_token_ids"] = list(allowed_token_ids)
    request: dict[str, Any] = {
        "model": model,
        "messages": [openai_message(message) for message in messages],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_completion_tokens": sampling.max_new_tokens,
        "presence_penalty": sampling.presence_penalty,
        "stop": list(sampling.stop),
        "extra_body": extra_body,
    }
    if sampling.seed is not None:
        request["seed"] = sampling.seed
    if sampling.logprobs:
        request["logprobs"] = True
        if sampling.top_logprobs:
            # vLLM lists the sampled token first, then the best: one more keeps the top N whole.
            request["top_logprobs"] = min(sampling.top_logprobs + 1, MAX_TOP_LOGPROBS)
        extra_body["return_tokens_as_token_ids"] = True
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    if response_format is not None:
        request["response_format"] = json_schema_format(response_format)
    if tools:
        request["tools"] = list(tools)
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    return request
