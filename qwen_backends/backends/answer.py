"""One answer of a server backend, assembled from its chunks: :class:`Assembler`.

A backend's chunk parser turns each chunk of the server's answer (a whole non-streamed answer
is one chunk) into a :class:`Piece`; the assembler does the rest the same way for every server
backend: the visible text (thinking removed by
:class:`~qwen_backends.thinking.ThinkingStreamFilter`, ``<tool_call>`` blocks taken out by
:class:`~qwen_backends.tools.ToolCallFilter` when the request has tools), the server's own tool
calls (whole, or streamed as :class:`CallPart` fragments), the token counts and the finish
reason, the per-token log-probabilities when asked (:class:`~qwen_backends.backends.token_loop.Step`
entries, named and filtered of thinking as the in-process backends do), and at the end the one
:class:`~qwen_backends.results.Generation`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from qwen_backends.backends.token_loop import Step, steps_logprobs
from qwen_backends.errors import GenerationError
from qwen_backends.openai_wire import tool_call_from_openai
from qwen_backends.results import Generation, TokenLogprob, ToolCall
from qwen_backends.thinking import ThinkingStreamFilter
from qwen_backends.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolCallFilter, new_call_id

if TYPE_CHECKING:
    from qwen_backends.backends.remote import Remote
    from qwen_backends.results import FinishReason

__all__ = ["Assembler", "CallPart", "Piece", "Source"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallPart:
    """A fragment of a tool call the server parsed and streams in pieces (OpenAI's deltas).

    Fragments with the same ``index`` make one call: the first id and name given, the
    ``arguments`` text joined.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Piece:
    """What one chunk of an answer holds, as a backend's chunk parser reads it.

    Attributes
    ----------
    text
        The content (may hold ``<think>`` or ``<tool_call>`` blocks; the assembler removes them).
    thinking
        The server reported thinking in a field of its own (dropped; a warning is logged).
    calls
        Whole tool calls the server parsed.
    call_parts
        Fragments of tool calls the server parsed.
    final
        The chunk ends the answer (it carries the finish reason).
    finish_reason
        The server's own finish reason (read when ``final``).
    prompt_tokens, completion_tokens
        The token counts, on the chunk that carries them.
    steps
        The chunk's generated ids with their log-probabilities (when the request asked).
    """

    text: str = ""
    thinking: bool = False
    calls: tuple[ToolCall, ...] = ()
    call_parts: tuple[CallPart, ...] = ()
    final: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    steps: tuple[Step, ...] = ()


class Source(Protocol):
    """What the assembler needs of a server backend
    (:class:`~qwen_backends.backends.server.ServerBackend` provides it)."""

    remote: Remote

    @property
    def logprobs_cover_every_token(self) -> bool: ...

    @property
    def thinking_field(self) -> str: ...

    def _parse(self, chunk: Any) -> Piece: ...

    def _finish_reason(self, value: str | None) -> FinishReason | None: ...

    def _warn_thinking(self, where: str) -> None: ...

    def _logprob_tokenizer(self) -> Any: ...


class Assembler:
    """Turns the chunks of one answer into visible text pieces and the final
    :class:`~qwen_backends.results.Generation`.

    Parameters
    ----------
    backend
        The server backend (its chunk parser, finish reasons, remote layer, thinking warning).
    tools
        The request has tools: tool calls are taken out of the text and reported.
    top_logprobs
        ``None``, or the request asked for per-token log-probabilities with this many
        alternatives each (the pieces carry steps; servers may send more alternatives).

    Attributes
    ----------
    text
        Everything handed out so far (kept in ``partial_text`` when the answer breaks).
    """

    def __init__(
        self, backend: Source, *, tools: bool = False, top_logprobs: int | None = None
    ) -> None:
        self.backend = backend
        self._steps: list[Step] | None = [] if top_logprobs is not None else None
        self._top = top_logprobs or 0
        self.text = ""
        self._thinking = ThinkingStreamFilter()
        self._content_calls = ToolCallFilter() if tools else None
        self._calls: list[ToolCall] = []
        # index -> [id, name, argument text]
        self._parts: dict[int, list[str | None]] = {}
        self._final = False
        self._reason: str | None = None
        self._counts: tuple[int | None, int | None] = (None, None)
        self._warned = False

    def feed(self, chunk: object) -> str:
        """The text that can be handed out after ``chunk`` (often the chunk's own content)."""
        piece = self.backend._parse(chunk)
        if piece.thinking:
            self._warn(self.backend.thinking_field)
        if piece.final:
            self._final, self._reason = True, piece.finish_reason
        if piece.prompt_tokens is not None or piece.completion_tokens is not None:
            self._counts = (piece.prompt_tokens, piece.completion_tokens)
        if self._steps is not None:
            self._steps += piece.steps
        if self._content_calls is not None:
            self._calls += piece.calls
            for part in piece.call_parts:
                entry = self._parts.setdefault(part.index, [None, None, ""])
                entry[0] = entry[0] or part.id
                entry[1] = entry[1] or part.name
                entry[2] = f"{entry[2]}{part.arguments}"
        return self._emit(self._visible(self._thinking.feed(piece.text)))

    def finish(self, seconds: float) -> Iterator[str | Generation]:
        """What is left of the text, then the :class:`~qwen_backends.results.Generation`.

        Raises
        ------
        ProtocolError
            If the answer ended without its final chunk or without token counts.
        GenerationError
            If the server ended the answer for another reason than a stop or the length limit.
        """
        rest = self._visible(self._thinking.flush())
        calls = list(self._calls)
        if self._content_calls is not None:
            rest += self._content_calls.flush()
            for index in sorted(self._parts):
                call_id, name, arguments = self._parts[index]
                call = tool_call_from_openai(call_id or new_call_id(), name, arguments)
                if call is None:
                    rest += self._as_text(name, arguments)
                else:
                    calls.append(call)
            calls += self._content_calls.calls
        self._warn_removed()
        text = self.text + rest
        remote = self.backend.remote
        if not self._final:
            raise remote.protocol_error(
                "the answer ended before its final chunk", partial_text=text
            )
        reason = self.backend._finish_reason(self._reason)
        if reason is None:
            raise GenerationError(
                f"{remote.server} at {remote.url} ended the generation with {self._reason!r}; "
                "check its log",
                partial_text=text,
                backend=remote.backend,
            )
        prompt_tokens, completion_tokens = self._counts
        if prompt_tokens is None or completion_tokens is None:
            raise remote.protocol_error("the answer carries no token counts", partial_text=text)
        piece = self._emit(rest)
        if piece:
            yield piece
        yield Generation(
            text=text,
            finish_reason="tool_calls" if calls else reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            seconds=seconds,
            tool_calls=tuple(calls),
            logprobs=self._logprobs(completion_tokens, text),
        )

    def _logprobs(self, completion_tokens: int, text: str) -> tuple[TokenLogprob, ...] | None:
        """The answer's per-token log-probabilities, one per generated token, or ``None`` when
        the request did not ask for them."""
        if self._steps is None:
            return None
        every = self.backend.logprobs_cover_every_token
        if len(self._steps) > completion_tokens or (every and len(self._steps) < completion_tokens):
            raise self.backend.remote.protocol_error(
                f"the answer reports log-probabilities for {len(self._steps)} of its "
                f"{completion_tokens} tokens",
                partial_text=text,
            )
        from qwen_backends.backends.local import qwen_end_ids

        tokenizer = self.backend._logprob_tokenizer()
        end_ids = qwen_end_ids(tokenizer, self.backend.remote.server)
        steps = [step._replace(top=step.top[: self._top]) for step in self._steps]
        return steps_logprobs(tokenizer, steps, end_ids)

    def _visible(self, text: str) -> str:
        return self._content_calls.feed(text) if self._content_calls is not None else text

    def _emit(self, piece: str) -> str:
        self._warn_removed()
        self.text += piece
        return piece

    def _warn_removed(self) -> None:
        if self._thinking.removed:
            self._warn("a <think> block in the content")

    def _warn(self, where: str) -> None:
        if not self._warned:
            self._warned = True
            self.backend._warn_thinking(where)

    def _as_text(self, name: str | None, arguments: str | None) -> str:
        """A server-parsed call whose arguments are not a JSON object, as the ``<tool_call>``
        block the model wrote (kept in the text, with a warning)."""
        raw = json.dumps({"name": name, "arguments": arguments})
        logger.warning(
            "%s parsed a tool call whose arguments are not a JSON object; kept as text: %.80r",
            self.backend.remote.server,
            raw,
        )
        return f"{TOOL_CALL_OPEN}\n{raw}\n{TOOL_CALL_CLOSE}"
