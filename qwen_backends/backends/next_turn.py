"""Work done ahead for a conversation's next turn: the answer, as the history will hold it.

Qwen3's chat template renders a past answer differently from the way the answer was generated.
The hybrid Qwen3-4B's non-thinking generation prompt ends with an empty think block
(``<think>\\n\\n</think>\\n\\n``) that the history leaves out, so after an answer the prompt
cache holds the answer *behind* a block that the next prompt does not have: it matches the next
prompt only up to the answer's header, and the next turn computes the whole answer again before
its own message. For an agent's tool call or a chat answer of a few hundred tokens that is most
of the next turn's cost.

So after each answer, once the backend has been idle for :data:`WAIT_S` seconds,
:class:`AheadWorker` computes the conversation as every next prompt will begin --
:func:`~qwen_backends.chat.render_history` of the history with the answer
(:func:`~qwen_backends.tools.assistant_message`) -- into the prompt cache, reusing what the cache
holds. The next turn then computes only its new message. Nothing is guessed: the state is keyed
by the ids it holds, so a next prompt that differs (a caller that edits the answer, sends its
tool calls another way, or starts another conversation) reuses only what is equal, as before.

The work gives way to callers: it starts only when no generation has asked for the backend in
the meantime, and a caller arriving later waits at most for the one forward pass it is in (the
same work the next turn would otherwise do itself). Answers shorter than :data:`MIN_AHEAD`
tokens to compute, or a template that renders history as it generates (Qwen3-4B-Instruct-2507
has no think block), leave nothing to do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from qwen_backends.backends.prompt_cache import common_prefix
from qwen_backends.errors import QwenBackendsError, first_line
from qwen_backends.memory import release_free_heap

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.backends.local import GenerationLock
    from qwen_backends.results import Generation, Request

__all__ = ["MIN_AHEAD", "WAIT_S", "AheadWorker", "next_turn_ids"]

logger = logging.getLogger(__name__)

#: Idle seconds after an answer before its next turn is prepared: a program's next call comes
#: sooner (and is not kept waiting), a person's reply or a tool's result later.
WAIT_S = 0.05
#: Fewer tokens than this left to compute are cheaper done by the next turn itself.
MIN_AHEAD = 16


class AheadWorker:
    """Runs one piece of work ahead of time for a backend, on its own thread, under the
    backend's :class:`~qwen_backends.backends.local.GenerationLock`.

    Parameters
    ----------
    guard
        The backend's lock: the work holds it, and gives way to any generation that asks for
        it first.
    name
        The backend's name (the thread's name).
    """

    def __init__(self, guard: GenerationLock, name: str) -> None:
        self.guard = guard
        self.name = name
        self._thread: threading.Thread | None = None

    def submit(self, work: Callable[[], None], seen: int) -> None:
        """Run ``work`` once the backend is idle, unless a generation arrives after the
        ``seen``-th (:attr:`GenerationLock.arrivals`) first."""
        self.wait()  # the previous piece gave way or finished: this call held the lock
        thread = threading.Thread(
            target=self._run, args=(work, seen), name=f"qwen-{self.name}-ahead", daemon=True
        )
        self._thread = thread
        thread.start()

    def wait(self) -> None:
        """Return once the submitted work has run or given way."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def stop(self) -> None:
        """Make waiting work give way, then :meth:`wait` (for ``close()``)."""
        self.guard.interrupt()
        self.wait()

    def _run(self, work: Callable[[], None], seen: int) -> None:
        with self.guard.ahead(seen, WAIT_S) as idle:
            if not idle:
                return
            try:
                work()
                release_free_heap()
            except QwenBackendsError as exc:  # nothing a caller could send back; no loss
                logger.debug("%s: no next turn prepared: %s", self.name, first_line(exc))
            except Exception as exc:  # the next turn computes it itself
                logger.warning(
                    "%s: preparing the next turn's prompt failed (%s); the next turn computes "
                    "it itself",
                    self.name,
                    first_line(exc),
                )


def next_turn_ids(
    tokenizer: PreTrainedTokenizerBase,
    request: Request,
    generation: Generation,
    held: Sequence[int],
    *,
    allow_control_tokens: bool,
) -> list[int] | None:
    """The ids every next prompt of ``request``'s conversation starts with once ``generation``
    is appended to it, or ``None`` when fewer than :data:`MIN_AHEAD` of them are missing from
    ``held`` (the ids the runtime's state holds: the prompt and the answer as generated).

    Raises
    ------
    QwenBackendsError
        When the answer could not be sent back as history (see
        :func:`~qwen_backends.chat.render_history`).
    """
    from qwen_backends.backends.local import tool_kwargs
    from qwen_backends.chat import render_history
    from qwen_backends.prompt_encoding import encode_prompt
    from qwen_backends.tools import assistant_message

    text = render_history(
        tokenizer,
        request.messages,
        assistant_message(generation.text, generation.tool_calls),
        allow_control_tokens=allow_control_tokens,
        **tool_kwargs(request.tools),
    )
    ids = encode_prompt(tokenizer, text)
    return ids if len(ids) - common_prefix(held, ids) >= MIN_AHEAD else None
