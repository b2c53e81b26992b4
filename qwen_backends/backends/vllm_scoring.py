"""Log-probabilities on a vLLM server: per-token entries of an answer, and scoring.

Answers: a request with ``logprobs`` also sets ``return_tokens_as_token_ids``, so every entry
names its id (``token_id:N``); :func:`chunk_steps` reads a chunk's entries as
:class:`~qwen_backends.backends.token_loop.Step` values, which the shared assembler names and
filters as the in-process backends do.

Scoring: ``prompt_logprobs`` of ``POST /v1/completions``.

The spans are planned as for the in-process backends (:func:`qwen_backends.scoring.plan_spans`:
the chat prompt from the server's own ``/tokenize``, the continuation tokenised with the served
model's tokenizer, loaded here as for ``english_only``). Each span is sent as token ids with
``max_tokens: 1`` and ``prompt_logprobs: k``: vLLM answers, for every prompt token after the
first, that token's log-probability and rank (rank 1: greedy) and the ``k`` most likely tokens
(the log-softmax of the raw logits, as everywhere here). The token after the span (``following``)
comes from ``logprobs`` of the one generated token (temperature 0). The server's window is read
from ``/v1/models`` (``max_model_len``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwen_backends.backends.server import Call, Dialogue
from qwen_backends.backends.token_loop import Step
from qwen_backends.scoring import Span, SpanScores, assemble, plan_spans

if TYPE_CHECKING:
    from qwen_backends.backends.vllm import VLLMBackend
    from qwen_backends.chat import Message
    from qwen_backends.results import Score
    from qwen_backends.scoring import ScoreRequest

__all__ = ["chunk_steps", "max_model_len", "score_on_vllm"]


class _Target:
    """What :func:`plan_spans` needs, for a vLLM backend."""

    context_hint = " (the server's --max-model-len)"

    def __init__(self, backend: VLLMBackend, tokenizer: Any, window: int) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.settings = backend.settings
        self.window = window

    @property
    def context_window(self) -> int:
        return self.window

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        return self.backend._prompt_ids(messages, tools)


def score_on_vllm(
    backend: VLLMBackend, requests: list[ScoreRequest], tokenizer: Any
) -> list[Score]:
    """Score ``requests`` on ``backend``'s server (see the module docs); ``tokenizer`` is the
    served model's."""
    target = _Target(backend, tokenizer, backend.context_window)
    planned = [plan_spans(target, request) for request in requests]
    per_span = [
        _span_scores(backend, tokenizer, backend._run(_complete(backend, span)), span)
        for spans in planned
        for span in spans
    ]
    return assemble(tokenizer, planned, per_span)


def chunk_steps(backend: VLLMBackend, logprobs: Any) -> tuple[Step, ...]:
    """The generated ids of a chunk with their log-probabilities (``logprobs.content`` of a
    request with ``return_tokens_as_token_ids``); top entries most likely first."""
    steps = []
    for entry in getattr(logprobs, "content", None) or ():
        top = sorted(
            ((_token_id(backend, item.token), item.logprob) for item in entry.top_logprobs or ()),
            key=lambda pair: -pair[1],
        )
        steps.append(Step(_token_id(backend, entry.token), entry.logprob, tuple(top)))
    return tuple(steps)


def _token_id(backend: VLLMBackend, token: str) -> int:
    """The id in vLLM's ``token_id:N`` placeholder."""
    prefix, _, number = token.partition(":")
    if prefix != "token_id" or not number.isdigit():
        raise backend.remote.protocol_error(
            f"a logprobs entry names its token {token[:40]!r}, not 'token_id:N'"
        )
    return int(number)


def max_model_len(backend: VLLMBackend) -> Dialogue[int]:
    """The served model's window (``max_model_len`` of ``/v1/models``)."""
    answer = yield Call(lambda client: client.models.list(), status_errors=backend._status_errors)
    for model in getattr(answer, "data", []):
        length = (model.model_extra or {}).get("max_model_len")
        if model.id == backend.model_name and isinstance(length, int):
            return length
    raise backend.remote.protocol_error("/v1/models does not say the model's max_model_len")


def _complete(backend: VLLMBackend, span: Span) -> Dialogue[Any]:
    """One completion over the span's ids, with the prompt's log-probabilities."""
    options: dict[str, Any] = {
        "model": backend.model_name,
        "prompt": list(span.ids),
        "max_tokens": 1,
        "temperature": 0,
        "extra_body": {"prompt_logprobs": max(span.top, 1)},
    }
    if span.following:
        options["logprobs"] = span.following
    answer = yield Call(
        lambda client: client.completions.create(**options),
        status_errors=backend._status_errors,
    )
    return answer


def _span_scores(backend: VLLMBackend, tokenizer: Any, answer: Any, span: Span) -> SpanScores:
    choice = answer.choices[0]
    entries = getattr(choice, "prompt_logprobs", None)
    if entries is None and choice.model_extra:
        entries = choice.model_extra.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(span.ids):
        raise backend.remote.protocol_error(
            "/v1/completions answered without prompt_logprobs for every prompt token"
        )
    scores = SpanScores(rows=span.rows)
    for position in range(span.start, len(span.ids)):
        found = entries[position] or {}
        token = span.ids[position]
        own = found.get(str(token))
        if not isinstance(own, dict):
            raise backend.remote.protocol_error(
                f"prompt_logprobs lacks the prompt token {token} at position {position}"
            )
        scores.logprobs.append(float(own["logprob"]))
        scores.greedy.append(int(own.get("rank", 0)) == 1)
        ranked = sorted(
            ((int(key), value) for key, value in found.items() if isinstance(value, dict)),
            key=lambda item: int(item[1].get("rank", 1 << 30)),
        )
        scores.tops.append([(key, float(value["logprob"])) for key, value in ranked][: span.top])
    if span.following:
        top = (choice.logprobs.top_logprobs or [{}])[0] if choice.logprobs else {}
        ids = {
            text: token
            for text, token in _ids_of(tokenizer, list(top)).items()
            if token is not None
        }
        best = sorted(top.items(), key=lambda item: -item[1])[: span.following]
        scores.following = [(ids[text], float(logprob)) for text, logprob in best if text in ids]
    return scores


def _ids_of(tokenizer: Any, texts: list[str]) -> dict[str, int | None]:
    """Token ids of the one-token texts vLLM's legacy ``top_logprobs`` are keyed by."""
    found: dict[str, int | None] = {}
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        found[text] = ids[0] if len(ids) == 1 else None
    return found
