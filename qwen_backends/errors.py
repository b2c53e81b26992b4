"""Every error qwen-backends raises, in one hierarchy.

Each error carries a message that says what went wrong *and* how to fix it, so the CLI can
print ``str(error)`` as a single line. Backends translate their SDK's exceptions into these at
one choke point (re-raising ``from`` the original), so callers only ever catch
:class:`QwenBackendsError` and its subclasses.

``retryable`` tells whether repeating the same call may succeed (a server restarting, a
timeout); user mistakes are never retryable.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BackendTimeoutError",
    "BackendUnavailableError",
    "ChatTemplateError",
    "ConfigurationError",
    "ContextLengthError",
    "DiskFullError",
    "ExportError",
    "GenerationError",
    "InvalidMessagesError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "OutputValidationError",
    "ProtocolError",
    "QwenBackendsError",
    "RateLimitError",
    "ServerError",
    "ThinkingModeError",
    "UnknownBackendError",
    "UnsupportedFeatureError",
    "did_you_mean",
    "first_line",
]


class QwenBackendsError(Exception):
    """Base class of every error raised by qwen-backends.

    Parameters
    ----------
    message
        One line: what was wrong and how to fix it.
    retryable
        Whether the same call may succeed if repeated later.
    backend
        The backend that raised it (``"ollama"``, ...), when one did.
    status_code
        The HTTP status the server answered, when there was one.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        backend: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(" ".join(message.split()))
        if retryable is not None:
            self.retryable = retryable
        self.backend = backend
        self.status_code = status_code


class ConfigurationError(QwenBackendsError, ValueError):
    """A setting, sampling value or argument is invalid (a user mistake)."""


class ThinkingModeError(ConfigurationError):
    """Something asked for Qwen3's thinking mode, which this library never enables."""


class InvalidMessagesError(ConfigurationError):
    """A conversation does not have the shape a chat template accepts."""


class UnknownBackendError(ConfigurationError):
    """The requested backend name is not registered."""


class ContextLengthError(ConfigurationError):
    """The prompt plus the requested new tokens do not fit the model's context window."""


class MissingDependencyError(QwenBackendsError, ImportError):
    """An optional dependency (a pip extra) is not installed."""


class UnsupportedFeatureError(QwenBackendsError):
    """The backend cannot honour an option; it refuses rather than silently dropping it."""

    def __init__(self, backend: str, option: str, reason: str) -> None:
        self.option = option
        super().__init__(
            f"the {backend} backend does not support {option}: {reason}", backend=backend
        )


class BackendUnavailableError(QwenBackendsError):
    """The runtime behind a backend cannot be reached or started here."""

    retryable = True


class ModelNotFoundError(QwenBackendsError):
    """The configured model (or tokenizer) cannot be found or downloaded."""


class ChatTemplateError(QwenBackendsError):
    """A tokenizer's chat template does not render Qwen3's non-thinking prompt."""


class ExportError(QwenBackendsError):
    """Writing a model in another format (GGUF ...) failed, or the result failed its checks."""


class GenerationError(QwenBackendsError):
    """Generation failed after it started.

    Parameters
    ----------
    message
        What failed and what to do about it.
    partial_text
        The text received before the failure, so nothing is lost.
    """

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        retryable: bool | None = None,
        backend: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.partial_text = partial_text
        super().__init__(message, retryable=retryable, backend=backend, status_code=status_code)


# -- what a remote server did wrong (the same class on every server backend) -------------------


class BackendTimeoutError(GenerationError):
    """The server did not answer (or went silent mid-stream) within the timeout, after retries."""

    retryable = True


class ServerError(GenerationError):
    """The server answered 5xx, after retries."""

    retryable = True


class RateLimitError(GenerationError):
    """The server answered 429 (too many requests), after retries honouring Retry-After."""

    retryable = True


class ProtocolError(GenerationError):
    """The server's answer is not what its protocol promises (HTML, truncated JSON, a missing
    field, a stream cut mid-way); the text received so far is in ``partial_text``."""

    retryable = True


class OutputValidationError(GenerationError):
    """Structured output that does not validate against the requested schema (for example cut
    by ``max_new_tokens``); the raw text is in ``partial_text``."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class DiskFullError(QwenBackendsError):
    """A write failed because the disk (or the user's quota) is full.

    Whatever was written before stays valid (e.g. an evaluation run stays resumable); free some
    space and run the same command again.
    """
