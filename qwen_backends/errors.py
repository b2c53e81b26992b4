"""Every error qwen-backends raises, in one hierarchy.

Each error carries a message that says what went wrong *and* how to fix it, so the CLI can
print ``str(error)`` as a single line. Backends translate their SDK's exceptions into these at
one choke point (re-raising ``from`` the original), so callers only ever catch
:class:`QwenBackendsError` and its subclasses.

``retryable`` tells whether repeating the same call may succeed (a server restarting, a
timeout); user mistakes are never retryable.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ChatTemplateError",
    "ConfigurationError",
    "ContextLengthError",
    "GenerationError",
    "InvalidMessagesError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "OutputValidationError",
    "QwenBackendsError",
    "ThinkingModeError",
    "UnknownBackendError",
    "UnsupportedFeatureError",
]


class QwenBackendsError(Exception):
    """Base class of every error raised by qwen-backends.

    Parameters
    ----------
    message
        One line: what was wrong and how to fix it.
    retryable
        Whether the same call may succeed if repeated later.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if retryable is not None:
            self.retryable = retryable


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
        self.backend = backend
        self.option = option
        super().__init__(f"the {backend} backend does not support {option}: {reason}")


class BackendUnavailableError(QwenBackendsError):
    """The runtime behind a backend cannot be reached or started here."""

    retryable = True


class ModelNotFoundError(QwenBackendsError):
    """The configured model (or tokenizer) cannot be found or downloaded."""


class ChatTemplateError(QwenBackendsError):
    """A tokenizer's chat template does not render Qwen3's non-thinking prompt."""


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
        self, message: str, *, partial_text: str = "", retryable: bool | None = None
    ) -> None:
        self.partial_text = partial_text
        super().__init__(message, retryable=retryable)


class OutputValidationError(GenerationError):
    """Structured output does not parse or does not match its schema.

    The model's raw text is in ``partial_text``, so nothing is lost; the message says what was
    wrong (typically output cut off by ``max_new_tokens`` or a stop string).
    """
