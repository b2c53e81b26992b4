"""The interface every backend implements: :class:`ModelBackend`.

Public methods live here once and do the shared work (validate the messages, resolve and check
the sampling, check that the backend can honour what is asked); a backend implements hooks that
take one checked :class:`Request`:

- :meth:`ModelBackend._generate` -- one request to one :class:`Generation`;
- :meth:`ModelBackend._stream` -- one request to visible text pieces, optionally ending with the
  final :class:`Generation` (counts, finish reason, tool calls);
- optionally :meth:`ModelBackend._score` (``score()`` and its forms; the default refuses),
  :meth:`ModelBackend._generate_batch` (default: one after another),
  :meth:`ModelBackend._agenerate` / :meth:`ModelBackend._astream` (default: the sync hook on a
  worker thread; server backends use native async clients), :meth:`ModelBackend._prompt_ids`
  and :meth:`ModelBackend._render` (the exact prompt, where the backend can know it).

Text a hook returns has thinking removed and stop strings cut (see
:mod:`qwen_backends.thinking`). Counting is the same everywhere (see :class:`Generation`).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from qwen_backends.backends.streams import AsyncTextStream, TextStream, on_worker_thread
from qwen_backends.chat import Conversation, Message, validate_messages
from qwen_backends.errors import (
    ConfigurationError,
    GenerationError,
    QwenBackendsError,
    UnsupportedFeatureError,
)
from qwen_backends.results import FinishReason, Generation, Request, Score, ToolCall
from qwen_backends.sampling import SamplingParams

if TYPE_CHECKING:
    from typing_extensions import Self

    from qwen_backends.scoring import Continuation, ScoreRequest
    from qwen_backends.settings import Settings
    from qwen_backends.thinking import TemplateMode

__all__ = [
    "AsyncTextStream",
    "Capabilities",
    "FinishReason",
    "Generation",
    "ModelBackend",
    "Request",
    "SamplingLike",
    "TextStream",
    "ToolCall",
    "check_open",
]

#: What the public methods accept as ``sampling``: the object, a mapping of its fields, a preset
#: name (``"greedy"``), or ``None`` for ``settings.sampling``.
SamplingLike = SamplingParams | Mapping[str, Any] | str | None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; :class:`ModelBackend` refuses what is marked ``False``.

    Attributes
    ----------
    english_only
        Can restrict sampling to the English vocabulary tier.
    native_batching
        ``generate_batch`` runs conversations together, not one by one.
    native_async
        ``agenerate``/``astream`` use a native async client (real concurrency).
    renders_locally
        The prompt is rendered by this process's tokenizer (so it can be compared exactly).
    structured_output
        Can constrain the answer to a JSON schema (``response_format``).
    tools
        Can pass tools to the model and parse its tool calls.
    seeded
        The same seed gives the same answer.
    logprobs
        Reports per-token log-probabilities (``sampling.logprobs``).
    scoring
        Scores given text (:meth:`ModelBackend.score`): needs the prompt's log-probabilities.
    prompt_cache
        Reuses the work done for a prompt prefix it has seen (a next turn computes only its new
        tokens; ``Generation.cached_tokens`` counts them); sized by its ``prompt_cache_mb``
        setting. Server backends report ``False``: their servers cache on their own.
    """

    english_only: bool = False
    native_batching: bool = False
    native_async: bool = False
    renders_locally: bool = False
    structured_output: bool = False
    tools: bool = False
    seeded: bool = True
    logprobs: bool = False
    scoring: bool = False
    prompt_cache: bool = False


class ModelBackend(ABC):
    """Qwen3-4B behind one interface, always in non-thinking mode.

    Construct through :func:`qwen_backends.create_backend`. Use as a context manager
    (``with`` or ``async with``), or call :meth:`close` / :meth:`aclose`, to release the model or
    connection.

    Parameters
    ----------
    settings
        The resolved settings; the backend reads its own section and ``settings.sampling``.
    """

    #: Registry name (``QWEN_BACKEND``); set from :mod:`qwen_backends.registry`.
    name: ClassVar[str]
    #: What this backend can do.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The model this backend serves."""
        return self.settings.model_name

    def template_mode(self) -> TemplateMode | None:
        """The chat-template mode of the model served (hybrid or non-thinking), if known yet.

        In-process backends know it once loaded; server backends once their first-use check
        has run (before the first answer). ``None`` means not known (yet).
        """
        return None

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """A short verdict for ``qwen-backends info`` on whether this backend can start here.

        Called only when the backend's modules are installed; the default says ``"ready"``.
        """
        return "ready"

    def generate(
        self,
        messages: Conversation,
        sampling: SamplingLike = None,
        *,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
    ) -> Generation:
        """Answer one conversation.

        Parameters
        ----------
        messages
            A list of ``{"role", "content"}`` dicts ending with a user (or tool) turn, or a
            string (one user turn).
        sampling
            A :class:`SamplingParams`, a mapping of its fields, a preset name (``"greedy"``), or
            ``None`` for ``settings.sampling``.
        response_format
            A pydantic model class or a JSON schema dict: the answer is constrained to it and
            :attr:`Generation.parsed` holds the validated object.
        tools
            Functions the model may call: JSON-schema function specs or Python callables.
        """
        with self._attributed():
            request = self._request(messages, sampling, response_format, tools)
            return self._validate_output(request, self._generate(request))

    def stream(
        self,
        messages: Conversation,
        sampling: SamplingLike = None,
        *,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
    ) -> TextStream:
        """Yield the answer's text as it is produced (see :class:`TextStream`).

        Everything is checked before this returns; stopping the iteration early (``break`` and
        ``close()``) stops the generation.
        """
        with self._attributed():
            request = self._request(messages, sampling, response_format, tools)
            return TextStream(self._finish_stream(request, self._stream(request)))

    def generate_batch(
        self,
        conversations: Sequence[Conversation],
        sampling: SamplingLike = None,
        *,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
    ) -> list[Generation]:
        """Answer several conversations with the same sampling, results in input order."""
        if isinstance(conversations, str):
            raise ConfigurationError(
                "generate_batch takes a list of conversations; for one prompt use generate()"
            )
        with self._attributed():
            check_open(self._closed, self.name)
            params = self.resolve_sampling(sampling)
            requests = [
                self._request(messages, params, response_format, tools)
                for messages in conversations
            ]
            if not requests:
                return []
            results = self._generate_batch(requests)
            return [self._validate_output(r, g) for r, g in zip(requests, results, strict=True)]

    async def agenerate(
        self,
        messages: Conversation,
        sampling: SamplingLike = None,
        *,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
    ) -> Generation:
        """Async :meth:`generate` (native on server backends, a worker thread otherwise)."""
        with self._attributed():
            request = self._request(messages, sampling, response_format, tools)
            return self._validate_output(request, await self._agenerate(request))

    def astream(
        self,
        messages: Conversation,
        sampling: SamplingLike = None,
        *,
        response_format: Any = None,
        tools: Sequence[Any] | None = None,
    ) -> AsyncTextStream:
        """Async :meth:`stream`: ``async for piece in backend.astream(...)``."""
        with self._attributed():
            request = self._request(messages, sampling, response_format, tools)
            return AsyncTextStream(self._afinish_stream(request, self._astream(request)))

    def prompt_ids(
        self, messages: Conversation, *, tools: Sequence[Any] | None = None
    ) -> list[int]:
        """Token ids of the non-thinking prompt this backend sends for ``messages``.

        Raises
        ------
        UnsupportedFeatureError
            Where the backend cannot know them exactly.
        """
        with self._attributed():
            return self._prompt_ids(self._validate(messages), self._tools(tools))

    def count_prompt_tokens(
        self, messages: Conversation, *, tools: Sequence[Any] | None = None
    ) -> int:
        """Exact token count of the rendered non-thinking prompt (see :meth:`prompt_ids`)."""
        return len(self.prompt_ids(messages, tools=tools))

    def rendered_prompt(self, messages: Conversation, *, tools: Sequence[Any] | None = None) -> str:
        """The non-thinking prompt text this backend renders for ``messages``.

        Raises
        ------
        UnsupportedFeatureError
            For backends whose server renders the prompt.
        """
        with self._attributed():
            return self._render(self._validate(messages), self._tools(tools))

    # -- scoring (see qwen_backends.scoring) ---------------------------------------------------

    def score(
        self, messages: Conversation, continuation: Continuation, *, top_logprobs: int = 0
    ) -> Score:
        """The log-likelihood of ``continuation`` as the assistant's answer to ``messages``.

        The continuation follows the non-thinking prompt (as :meth:`generate` would answer);
        nothing is generated.

        Parameters
        ----------
        messages
            The conversation, ending with a user (or tool) turn.
        continuation
            The answer to score: text or token ids.
        top_logprobs
            Also report the n most likely tokens at each scored position (0-20).

        Raises
        ------
        UnsupportedFeatureError
            Where the backend cannot score (``capabilities.scoring`` is ``False``).
        ConfigurationError
            For an empty continuation; :class:`~qwen_backends.errors.ContextLengthError` when
            prompt and continuation do not fit the context window.
        """
        return self.score_batch([(messages, continuation)], top_logprobs=top_logprobs)[0]

    def score_batch(
        self,
        items: Sequence[tuple[Conversation, Continuation]],
        *,
        top_logprobs: int = 0,
    ) -> list[Score]:
        """:meth:`score` for several ``(messages, continuation)`` pairs, results in order.

        Backends with native batching score them together; pairs that share a prompt (the
        choices of one question) run that prompt once.
        """
        from qwen_backends.scoring import ScoreRequest, check_top

        with self._attributed():
            top = check_top(top_logprobs)
            self._check_scoring()
            requests = [
                ScoreRequest(continuation, messages=self._validate(messages), top=top)
                for messages, continuation in items
            ]
            return self._score(requests) if requests else []

    def score_text(
        self,
        text: Continuation,
        *,
        context: str | Sequence[int] | None = None,
        top_logprobs: int = 0,
        window: int | None = None,
        following: int = 0,
    ) -> Score:
        """The log-likelihood of raw ``text`` (no chat template): a document, or a continuation.

        Without ``context`` the whole document is scored after the tokenizer's BOS (EOS for
        Qwen3, which has none), in windows of ``window`` tokens when it is longer (lm-eval's
        rolling log-likelihood); :attr:`Score.perplexity` is its perplexity. With ``context``
        (text or token ids), only ``text`` is scored, after it.

        Parameters
        ----------
        following
            Also report the n most likely tokens after ``text`` (:attr:`Score.following`).
        """
        from qwen_backends.scoring import ScoreRequest, check_top

        with self._attributed():
            request = ScoreRequest(
                text,
                context=context,
                top=check_top(top_logprobs),
                following=check_top(following, "following"),
                window=window,
            )
            self._check_scoring()
            return self._score([request])[0]

    def _check_scoring(self) -> None:
        check_open(self._closed, self.name)
        if not self.capabilities.scoring:
            raise UnsupportedFeatureError(
                self.name,
                "scoring",
                "it cannot give the log-probabilities of given text; use hf, unsloth, "
                "llamacpp or mlx",
            )

    def _validate(self, messages: Conversation) -> list[Message]:
        check_open(self._closed, self.name)
        # Control-token text is refused unless the settings opt in (allow_control_tokens).
        return validate_messages(messages, allow_control_tokens=self.settings.allow_control_tokens)

    def resolve_sampling(self, sampling: SamplingLike) -> SamplingParams:
        """Turn ``sampling`` into validated :class:`SamplingParams` this backend can honour.

        Raises
        ------
        UnsupportedFeatureError
            If it asks for something this backend cannot do (nothing is dropped silently).
        """
        resolved = SamplingParams.coerce(sampling, default=self.settings.sampling)
        if resolved.logprobs and not self.capabilities.logprobs:
            raise UnsupportedFeatureError(
                self.name, "logprobs", "it cannot report token log-probabilities"
            )
        if resolved.english_only and not self.capabilities.english_only:
            raise UnsupportedFeatureError(
                self.name,
                "english_only",
                "it cannot restrict the vocabulary; use an in-process backend (hf, unsloth, "
                "llama.cpp, MLX) or vllm",
            )
        return resolved

    def wait_idle(self) -> None:  # noqa: B027 - a server backend does nothing between calls
        """Return once work the backend does between calls has finished (the in-process
        backends prepare a conversation's next turn ahead, see
        :mod:`~qwen_backends.backends.next_turn`); server backends do none."""

    def close(self) -> None:
        """Release the model or connection. Safe to call twice."""
        self._closed = True

    async def aclose(self) -> None:
        """Async :meth:`close`; server backends also close the running loop's connections."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name!r})"

    # -- hooks for implementations ------------------------------------------------------------

    @abstractmethod
    def _generate(self, request: Request) -> Generation:
        """Generate for one checked request."""

    @abstractmethod
    def _stream(self, request: Request) -> Iterator[str | Generation]:
        """Yield visible text pieces, then optionally the final :class:`Generation`."""

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        """Batch hook; the default answers one request after another."""
        return [self._generate(request) for request in requests]

    async def _agenerate(self, request: Request) -> Generation:
        """Async hook; the default runs :meth:`_generate` on a worker thread."""
        return await asyncio.to_thread(self._generate, request)

    def _astream(self, request: Request) -> AsyncIterator[str | Generation]:
        """Async stream hook; the default iterates :meth:`_stream` on a worker thread.

        Closing the async stream early closes the sync one (which stops the generation).
        """
        return on_worker_thread(lambda: self._stream(request))

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        """The exact prompt ids; the default refuses."""
        raise UnsupportedFeatureError(
            self.name, "prompt token counting", "its server does not report the prompt ids"
        )

    def _render(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> str:
        """The exact prompt text; the default refuses."""
        raise UnsupportedFeatureError(
            self.name, "prompt rendering", "the prompt is rendered by its server"
        )

    def _score(self, requests: list[ScoreRequest]) -> list[Score]:
        """Score checked requests (see :mod:`qwen_backends.scoring`); the default refuses.

        Reached only when ``capabilities.scoring`` is ``True``.
        """
        raise UnsupportedFeatureError(self.name, "scoring", "it implements no scoring hook")

    # -- shared work ----------------------------------------------------------------------------

    def _request(
        self,
        messages: Conversation,
        sampling: SamplingLike | SamplingParams,
        response_format: Any,
        tools: Sequence[Any] | None,
    ) -> Request:
        """Validate everything once, before any hook runs."""
        clean = self._validate(messages)
        params = self.resolve_sampling(sampling)
        schema = None
        if response_format is not None:
            if not self.capabilities.structured_output:
                raise UnsupportedFeatureError(
                    self.name, "response_format", "it cannot constrain output to a schema"
                )
            from qwen_backends.structured import ResponseFormat

            schema = ResponseFormat.of(
                response_format, allow_control_tokens=self.settings.allow_control_tokens
            )
        return Request(clean, params, schema, self._tools(tools))

    def _tools(self, tools: Sequence[Any] | None) -> tuple[dict[str, Any], ...]:
        if not tools:
            return ()
        if not self.capabilities.tools:
            raise UnsupportedFeatureError(self.name, "tools", "it cannot pass tools to the model")
        from qwen_backends.tools import normalize_tools

        return normalize_tools(tools, allow_control_tokens=self.settings.allow_control_tokens)

    def _validate_output(self, request: Request, generation: Generation) -> Generation:
        """Validate structured output once, for every backend."""
        if request.response_format is None or generation.parsed is not None:
            return generation
        from dataclasses import replace

        parsed = request.response_format.validate(
            generation.text, backend=self.name, finish_reason=generation.finish_reason
        )
        return replace(generation, parsed=parsed)

    @contextlib.contextmanager
    def _attributed(self) -> Iterator[None]:
        """Errors raised inside name this backend (``error.backend``) unless they already do:
        the one place a backend's name reaches its errors."""
        try:
            yield
        except QwenBackendsError as exc:
            if exc.backend is None:
                exc.backend = self.name
            raise

    def _finish_stream(
        self, request: Request, pieces: Iterator[str | Generation]
    ) -> Iterator[str | Generation]:
        with self._attributed():
            for item in pieces:
                yield self._validate_output(request, item) if isinstance(item, Generation) else item

    async def _afinish_stream(
        self, request: Request, pieces: AsyncIterator[str | Generation]
    ) -> AsyncIterator[str | Generation]:
        try:
            with self._attributed():
                async for item in pieces:
                    yield (
                        self._validate_output(request, item)
                        if isinstance(item, Generation)
                        else item
                    )
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()


def check_open(closed: bool, backend: str) -> None:
    """Refuse work on a closed backend with one line (the same on every backend)."""
    if closed:
        raise GenerationError(
            f"this {backend} backend was closed; create a new one with create_backend()",
            backend=backend,
        )
