"""What a generation call is and what it returns, shared by every backend and by ``serve``.

- :class:`Request` -- one checked call, as a backend's hooks receive it;
- :class:`Generation` -- the result, filled by the same definitions on every backend;
- :class:`ToolCall` -- one function call the model asked for;
- :data:`FinishReason` -- why an answer ended.

This module imports nothing heavy and nothing else of the package's backends, so the tools,
the OpenAI wire format and the backends can all depend on it without import circles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qwen_backends.chat import Message
    from qwen_backends.sampling import SamplingParams

__all__ = [
    "FinishReason",
    "Generation",
    "Request",
    "Score",
    "ScoredToken",
    "TokenLogprob",
    "ToolCall",
    "TopLogprob",
]

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for.

    Attributes
    ----------
    id
        An id unique within the answer (send it back as ``tool_call_id`` with the result).
    name
        The function's name.
    arguments
        The arguments, parsed from the model's JSON.
    """

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class TopLogprob:
    """One likely token at a step: its text, id and log-probability."""

    token: str
    id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and how likely the model found it.

    Every backend reports the same number: the log-softmax of the model's raw logits at that
    step (before temperature, penalties, top-k/top-p/min-p, the grammar and the English mask),
    which is what vLLM reports by default. Tokens of removed thinking are not reported.

    Attributes
    ----------
    token
        The token's text (bytes that do not form whole characters are shown as U+FFFD).
    id
        The token id.
    logprob
        Natural-log probability.
    top
        The ``top_logprobs`` most likely tokens at that step, most likely first.
    """

    token: str
    id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ScoredToken:
    """One given token and how likely the model found it there (see :class:`Score`).

    Attributes
    ----------
    token
        The token's text (bytes that do not form whole characters are shown as U+FFFD).
    id
        The token id.
    logprob
        Natural-log probability: the log-softmax of the model's raw logits at that position
        (the same number :class:`TokenLogprob` reports for a generated token).
    greedy
        Whether it is the most likely token there (greedy decoding would have chosen it).
    top
        The ``top_logprobs`` most likely tokens there, most likely first (when asked for).
    """

    token: str
    id: int
    logprob: float
    greedy: bool
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Score:
    """The log-likelihood of given text: what ``backend.score()`` and ``score_text()`` return.

    Attributes
    ----------
    tokens
        One :class:`ScoredToken` per scored token, in order.
    following
        The most likely tokens *after* the scored text, most likely first (only when asked for,
        e.g. by ``serve``'s ``/v1/completions`` with ``max_tokens: 1``).
    """

    tokens: tuple[ScoredToken, ...]
    following: tuple[TopLogprob, ...] = ()

    @property
    def logprob(self) -> float:
        """The log-likelihood: the sum of the tokens' log-probabilities."""
        return float(sum(token.logprob for token in self.tokens))

    @property
    def greedy(self) -> bool:
        """Whether greedy decoding would have produced every token (lm-eval's ``is_greedy``)."""
        return all(token.greedy for token in self.tokens)

    @property
    def num_tokens(self) -> int:
        """How many tokens were scored."""
        return len(self.tokens)

    @property
    def perplexity(self) -> float:
        """``exp(-logprob / num_tokens)``: the per-token perplexity."""
        import math

        return math.exp(-self.logprob / self.num_tokens) if self.tokens else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output (with the sum, greedy flag and perplexity)."""
        data = asdict(self)
        data.update(
            logprob=self.logprob,
            greedy=self.greedy,
            num_tokens=self.num_tokens,
            perplexity=self.perplexity,
        )
        return data


@dataclass(frozen=True)
class Generation:
    """The result of one generation; every backend fills it by the same definitions.

    Attributes
    ----------
    text
        The answer, with any thinking removed and stop strings cut (tool-call blocks removed).
    finish_reason
        ``"stop"`` (end of turn or a stop string), ``"length"`` (``max_new_tokens`` reached) or
        ``"tool_calls"`` (the answer asks for tool calls, see :attr:`tool_calls`).
    prompt_tokens
        Tokens of the rendered non-thinking prompt.
    completion_tokens
        Every token the model generated, **including** the end-of-turn token that ended the
        answer (as transformers, vLLM and OpenAI count); for a stop string, up to the token that
        completed it. A ``"length"`` answer has exactly ``max_new_tokens``.
    seconds
        Wall-clock time of the call.
    tool_calls
        Function calls the model asked for (only when tools were given).
    parsed
        The validated object for a ``response_format`` call (a pydantic instance or a dict).
    logprobs
        With ``sampling.logprobs``: one :class:`TokenLogprob` per generated token (the
        end-of-turn token included, as in ``completion_tokens``); ``None`` otherwise.
    cached_tokens
        Prompt tokens served from the backend's prompt cache instead of being computed (part
        of ``prompt_tokens``; OpenAI's ``prompt_tokens_details.cached_tokens``).
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    cached_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of wall-clock time (0 when no time was measured)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output (``parsed`` as plain data too)."""
        data = asdict(self)
        dump = getattr(self.parsed, "model_dump", None)
        data["parsed"] = dump(mode="json") if callable(dump) else self.parsed
        return data


@dataclass(frozen=True)
class Request:
    """One checked call, as the hooks receive it.

    Attributes
    ----------
    messages
        The validated conversation.
    sampling
        Checked sampling parameters the backend can honour.
    response_format
        The output schema (a :class:`qwen_backends.structured.ResponseFormat`), or ``None``.
    tools
        OpenAI-style function specs (``{"type": "function", "function": {...}}``).
    """

    messages: list[Message]
    sampling: SamplingParams
    response_format: Any = None
    tools: tuple[dict[str, Any], ...] = field(default=())
