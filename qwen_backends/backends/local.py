"""What the in-process backends (hf, unsloth, llamacpp, mlx) share around a generation.

- :class:`LocalBackend` -- the prompt hooks of a backend that renders with a Hugging Face
  tokenizer it holds: the project's non-thinking renderer with the conversation's tools and the
  ``allow_control_tokens`` setting, and the closed check, written once;
- :class:`GenerationLock` -- one generation at a time per backend instance; a second generation
  started on the thread that holds an open stream is refused instead of deadlocking, and
  ``close()`` waits for other threads' generations;
- :func:`check_context` -- the prompt plus ``max_new_tokens`` must fit the context window;
- :func:`check_open` -- a closed backend refuses work with one line;
- :func:`tool_kwargs` -- the tools as chat-template keyword arguments.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.base import ModelBackend
from qwen_backends.chat import Message, render_prompt, render_prompt_ids
from qwen_backends.errors import ContextLengthError, GenerationError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["GenerationLock", "LocalBackend", "check_context", "check_open", "tool_kwargs"]


class LocalBackend(ModelBackend):
    """A backend that renders prompts in process with the Hugging Face tokenizer it holds.

    Subclasses set :attr:`tokenizer` when they load; :meth:`_prompt_ids` and :meth:`_render`
    are then the project's non-thinking renderer with the conversation's tools and the
    ``allow_control_tokens`` setting, the same on every in-process backend.
    """

    #: The Hugging Face tokenizer prompts are rendered (and answers decoded) with.
    tokenizer: PreTrainedTokenizerBase

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        self._check_open()
        allow = self.settings.allow_control_tokens
        return render_prompt_ids(
            self.tokenizer, messages, allow_control_tokens=allow, **tool_kwargs(tools)
        )

    def _render(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> str:
        self._check_open()
        allow = self.settings.allow_control_tokens
        return render_prompt(
            self.tokenizer, messages, allow_control_tokens=allow, **tool_kwargs(tools)
        )

    def _check_open(self) -> None:
        check_open(self._closed, self.name)


class GenerationLock:
    """Serialises the generations of one backend instance.

    Parameters
    ----------
    backend
        The backend's name, for the error message.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._owner: int | None = None

    @property
    def busy(self) -> bool:
        """Whether some thread is generating right now."""
        return self._lock.locked()

    @property
    def held_here(self) -> bool:
        """Whether the calling thread holds the lock (an open stream of its own)."""
        return self._owner == threading.get_ident()

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Hold the lock for one generation (other threads wait).

        Raises
        ------
        GenerationError
            When this thread already holds it (a stream it has not finished or closed).
        """
        if self.held_here:
            raise GenerationError(
                "a generation is already running on this thread (an unfinished stream?); "
                "finish or close() that stream first",
                backend=self.backend,
            )
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """For ``close()``: wait for other threads' generations; a stream still open on this
        thread keeps its own references and finishes normally."""
        with contextlib.nullcontext() if self.held_here else self._lock:
            yield


def check_context(
    prompt_tokens: int, max_new_tokens: int, window: int, *, backend: str, hint: str
) -> None:
    """Refuse a call whose prompt plus ``max_new_tokens`` exceed ``window`` tokens.

    Parameters
    ----------
    hint
        How this backend's window can grow (appended to the advice), e.g. the setting to raise.

    Raises
    ------
    ContextLengthError
        Naming both numbers and what to change.
    """
    total = prompt_tokens + max_new_tokens
    if total > window:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens:,} tokens and max_new_tokens is "
            f"{max_new_tokens:,}: {total:,} exceeds the context window of {window:,} tokens; "
            f"shorten the prompt or lower max_new_tokens{hint}",
            backend=backend,
        )


def check_open(closed: bool, backend: str) -> None:
    """Refuse work on a closed backend with one line."""
    if closed:
        raise GenerationError(
            f"this {backend} backend was closed; create a new one with create_backend()",
            backend=backend,
        )


def tool_kwargs(tools: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """``{"tools": [...]}`` for the chat template when there are tools, else nothing."""
    return {"tools": list(tools)} if tools else {}
