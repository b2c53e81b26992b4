"""The interface every backend implements: :class:`ModelBackend`.

Public methods live here once and do the shared work (validate messages, resolve and check
sampling, time the call); a backend implements three hooks:

- :meth:`ModelBackend._generate` -- one conversation to one :class:`Generation`;
- :meth:`ModelBackend._stream` -- one conversation to text pieces as they are produced;
- optionally :meth:`ModelBackend._generate_batch` -- several at once (default: a loop).

Async callers get :meth:`ModelBackend.agenerate` / :meth:`ModelBackend.astream`; the defaults
run the sync path on a worker thread, and network backends override them with native clients.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from qwen_backends.chat import Conversation, Message, validate_messages
from qwen_backends.errors import UnsupportedFeatureError
from qwen_backends.sampling import SamplingParams

if TYPE_CHECKING:
    from qwen_backends.settings import Settings

__all__ = ["Capabilities", "FinishReason", "Generation", "ModelBackend", "SamplingLike"]

FinishReason = Literal["stop", "length"]
SamplingLike = SamplingParams | Mapping[str, Any] | str | None


@dataclass(frozen=True)
class Generation:
    """The result of one generation.

    Attributes
    ----------
    text
        The answer, with any thinking removed.
    finish_reason
        ``"stop"`` (end of turn or a stop string) or ``"length"`` (``max_new_tokens`` reached).
    prompt_tokens, completion_tokens
        Exact token counts of the rendered prompt and of the generated tokens.
    seconds
        Wall-clock time of the call.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of wall-clock time (0 when no time was measured)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        return asdict(self)


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
    """

    english_only: bool = False
    native_batching: bool = False
    native_async: bool = False
    renders_locally: bool = False


class ModelBackend(ABC):
    """Qwen3-4B behind one interface, always in non-thinking mode.

    Construct through :func:`qwen_backends.create_backend`. Use as a context manager (or call
    :meth:`close`) to release the model or connection.

    Parameters
    ----------
    settings
        The resolved settings; the backend reads its own section and ``settings.sampling``.
    """

    #: Registry name (``QWEN_BACKEND``).
    name: ClassVar[str]
    #: Importable modules the backend needs; the factory checks them before constructing.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The pip extra that installs :attr:`requires`.
    extra: ClassVar[str]
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

    def generate(self, messages: Conversation, sampling: SamplingLike = None) -> Generation:
        """Answer one conversation.

        Parameters
        ----------
        messages
            A list of ``{"role", "content"}`` dicts ending with a user (or tool) turn, or a
            string (one user turn).
        sampling
            A :class:`SamplingParams`, a mapping of its fields, a preset name (``"greedy"``),
            or ``None`` for ``settings.sampling``.
        """
        return self._generate(self._validate(messages), self.resolve_sampling(sampling))

    def stream(self, messages: Conversation, sampling: SamplingLike = None) -> Iterator[str]:
        """Yield the answer's text as it is produced; ``"".join`` equals ``generate().text``.

        Stopping the iteration early (``break`` or ``close()``) stops the generation.
        """
        return self._stream(self._validate(messages), self.resolve_sampling(sampling))

    def generate_batch(
        self, conversations: Sequence[Conversation], sampling: SamplingLike = None
    ) -> list[Generation]:
        """Answer several conversations with the same sampling, results in input order."""
        clean = [self._validate(messages) for messages in conversations]
        if not clean:
            return []
        return self._generate_batch(clean, self.resolve_sampling(sampling))

    async def agenerate(self, messages: Conversation, sampling: SamplingLike = None) -> Generation:
        """Async :meth:`generate`; runs on a worker thread unless the backend is natively async."""
        return await asyncio.to_thread(self.generate, messages, sampling)

    async def astream(
        self, messages: Conversation, sampling: SamplingLike = None
    ) -> AsyncIterator[str]:
        """Async :meth:`stream`; iterates the sync stream on a worker thread by default."""
        iterator = self.stream(messages, sampling)
        done = object()
        try:
            while True:
                piece = await asyncio.to_thread(next, iterator, done)
                if piece is done:
                    return
                yield piece  # type: ignore[misc]
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _validate(self, messages: Conversation) -> list[Message]:
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
        if resolved.english_only and not self.capabilities.english_only:
            raise UnsupportedFeatureError(
                self.name,
                "english_only",
                "it cannot restrict the vocabulary; use the hf, unsloth or vllm backend",
            )
        return resolved

    def close(self) -> None:
        """Release the model or connection. Safe to call twice."""
        self._closed = True

    def __enter__(self) -> ModelBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name!r})"

    # -- hooks for implementations ------------------------------------------------------------

    @abstractmethod
    def _generate(self, messages: list[Message], sampling: SamplingParams) -> Generation:
        """Generate for validated ``messages`` with checked ``sampling``."""

    @abstractmethod
    def _stream(self, messages: list[Message], sampling: SamplingParams) -> Iterator[str]:
        """Stream for validated ``messages`` with checked ``sampling``."""

    def _generate_batch(
        self, conversations: list[list[Message]], sampling: SamplingParams
    ) -> list[Generation]:
        """Batch hook; the default answers one conversation after another."""
        return [self._generate(messages, sampling) for messages in conversations]
