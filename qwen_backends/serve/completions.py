"""The legacy ``POST /v1/completions``, for scoring raw prompts.

``/v1/completions`` (:func:`parse_completion_request`, :func:`answer_completion`) -- what
  lm-evaluation-harness's ``local-completions`` model sends for its log-likelihood tasks: a text
  or token-id ``prompt`` (or a list of them), ``echo: true``, ``logprobs: N`` and ``max_tokens``
  0 or 1. The prompt is scored as raw text, **with no chat template**
  (:meth:`~qwen_backends.backends.base.ModelBackend.score_text`); the answer is the legacy shape
  (``tokens``, ``token_logprobs`` with ``null`` for the first prompt token, ``top_logprobs``,
  ``text_offset``). One new token is the most likely next token (greedy); longer raw-text
  generation is refused (use ``/v1/chat/completions``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwen_backends.chat import find_control_token
from qwen_backends.errors import UnsupportedFeatureError
from qwen_backends.results import Score, ScoredToken
from qwen_backends.scoring import MAX_TOP_LOGPROBS
from qwen_backends.serve.openai_schema import ModelNotServedError, RequestError

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.results import TopLogprob

__all__ = ["CompletionCall", "answer_completion", "parse_completion_request"]

#: Fields of ``/v1/completions`` accepted only with a value that changes nothing here.
_NO_OP = {
    "n": (1,),
    "stream": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
}
#: Accepted and ignored: the one token is greedy, so these cannot change it.
_IGNORED = frozenset({"seed", "stop", "top_p", "top_k", "min_p", "user", "logit_bias"})


# -- /v1/completions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionCall:
    """One checked ``/v1/completions`` request.

    Attributes
    ----------
    model
        The model id asked for.
    prompts
        Each prompt: text, or token ids.
    echo
        Return the prompt (its tokens and their log-probabilities) before the new token.
    logprobs
        ``None`` for no log-probabilities, else how many alternatives per position (0-20).
    max_tokens
        0 (score only) or 1 (also the most likely next token).
    """

    model: str
    prompts: list[str | list[int]]
    echo: bool
    logprobs: int | None
    max_tokens: int


def parse_completion_request(body: Any, models: Sequence[str]) -> CompletionCall:
    """Check a ``POST /v1/completions`` body.

    Raises
    ------
    RequestError
        For a malformed, unknown or unsupported field (named in ``param``).
    ModelNotServedError
        For a model this server does not serve.
    """
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    present = {key: value for key, value in body.items() if value is not None}
    model = present.get("model")
    if not isinstance(model, str) or model not in models:
        raise ModelNotServedError(
            f"the model {model!r} is not served here; use {', '.join(map(repr, models))}"
        )
    handled = {"model", "prompt", "echo", "logprobs", "max_tokens", "temperature"}
    for key, value in present.items():
        if key in handled or key in _IGNORED:
            continue
        if key in _NO_OP:
            if value not in _NO_OP[key] or isinstance(value, bool) != isinstance(
                _NO_OP[key][0], bool
            ):
                raise RequestError(
                    f"{key}={value!r} is not supported on /v1/completions; omit it", param=key
                )
            continue
        raise RequestError(
            f"unknown field {key!r} for /v1/completions; see docs/serve.md", param=key
        )
    echo = present.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError(f"echo must be true or false, got {echo!r}", param="echo")
    logprobs = present.get("logprobs")
    if logprobs is not None and (
        isinstance(logprobs, bool)
        or not isinstance(logprobs, int)
        or not 0 <= logprobs <= MAX_TOP_LOGPROBS
    ):
        raise RequestError(
            f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {logprobs!r}",
            param="logprobs",
        )
    max_tokens = present.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise RequestError(
            f"max_tokens must be a non-negative integer, got {max_tokens!r}", param="max_tokens"
        )
    if max_tokens > 1:
        raise RequestError(
            f"max_tokens={max_tokens} is not supported on /v1/completions, which scores raw "
            "prompts and adds at most one greedy token; send 0 or 1, or generate with "
            "/v1/chat/completions",
            param="max_tokens",
        )
    temperature = present.get("temperature", 0)
    if max_tokens and temperature != 0:
        raise RequestError(
            "/v1/completions adds only the most likely next token; send temperature 0",
            param="temperature",
        )
    return CompletionCall(model, _prompts(present.get("prompt")), echo, logprobs, max_tokens)


def _prompts(value: Any) -> list[str | list[int]]:
    """One prompt or a list of them (text or token ids), never empty."""

    def is_ids(item: Any) -> bool:
        return (
            isinstance(item, list)
            and bool(item)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        )

    if isinstance(value, str) and value:
        return [value]
    if is_ids(value):
        return [list(value)]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) and item for item in value):
            return list(value)
        if all(is_ids(item) for item in value):
            return [list(item) for item in value]
    raise RequestError(
        "prompt must be non-empty text, a list of token ids, or a list of either",
        param="prompt",
    )


async def answer_completion(backend: ModelBackend, call: CompletionCall) -> dict[str, Any]:
    """Score each prompt (on a worker thread) and build the ``text_completion`` object."""
    following = max(call.logprobs or 0, 1) if call.max_tokens else 0
    top = call.logprobs or 0
    choices = []
    prompt_tokens = 0
    tokenizer = _tokenizer(backend)
    for index, prompt in enumerate(call.prompts):
        ids = _prompt_ids(backend, tokenizer, prompt)
        # The first token is given, not scored (OpenAI's null); a one-token prompt is scored
        # after the tokenizer's prefix only to get what follows it.
        score = await asyncio.to_thread(
            backend.score_text,
            ids[1:] if len(ids) > 1 else ids,
            context=ids[:1] if len(ids) > 1 else None,
            top_logprobs=top,
            following=following,
        )
        if len(ids) > 1:
            text = str(tokenizer.decode([ids[0]], skip_special_tokens=False))
            first = ScoredToken(text, ids[0], 0.0, True)
            score = Score((first, *score.tokens), score.following)
        prompt_tokens += len(ids)
        choices.append(_choice(index, score, call))
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": call.max_tokens * len(call.prompts),
            "total_tokens": prompt_tokens + call.max_tokens * len(call.prompts),
        },
    }


def _tokenizer(backend: ModelBackend) -> Any:
    """The tokenizer of a backend that scores in this process (a one-line refusal otherwise)."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not backend.capabilities.scoring:
        raise UnsupportedFeatureError(
            backend.name, "scoring", "it cannot score raw prompts; serve hf, llamacpp or mlx"
        )
    return tokenizer


def _prompt_ids(backend: ModelBackend, tokenizer: Any, prompt: str | list[int]) -> list[int]:
    """A prompt's token ids: text is tokenised as it is, with no chat template."""
    if not isinstance(prompt, str):
        return prompt
    token = None if backend.settings.allow_control_tokens else find_control_token(prompt)
    if token is not None:
        raise RequestError(
            f"the prompt contains the control token {token}; remove it, or start the server "
            "with QWEN_ALLOW_CONTROL_TOKENS=true",
            param="prompt",
        )
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _choice(index: int, score: Score, call: CompletionCall) -> dict[str, Any]:
    """One legacy choice: the echoed prompt (first token without a log-probability), then the
    greedy next token when ``max_tokens`` is 1."""
    tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if call.echo:
        for position, scored in enumerate(score.tokens):
            tokens.append(scored.token)
            logprobs.append(None if position == 0 else scored.logprob)
            tops.append(
                None if position == 0 else _top_dict(scored.top, scored.token, scored.logprob)
            )
    if call.max_tokens:
        chosen = score.following[0]
        tokens.append(chosen.token)
        logprobs.append(chosen.logprob)
        tops.append(_top_dict(score.following[: call.logprobs or 0], chosen.token, chosen.logprob))
    offsets = []
    offset = 0
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    logprobs_value = (
        None
        if call.logprobs is None
        else {
            "tokens": tokens,
            "token_logprobs": logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }
    )
    return {
        "index": index,
        "text": "".join(tokens)
        if call.echo
        else (score.following[0].token if call.max_tokens else ""),
        "logprobs": logprobs_value,
        "finish_reason": "length",
    }


def _top_dict(best: Sequence[TopLogprob], token: str, logprob: float) -> dict[str, float]:
    """The alternatives by text, plus the token itself (as OpenAI and vLLM report it)."""
    found = {alternative.token: alternative.logprob for alternative in best}
    found.setdefault(token, logprob)
    return found
