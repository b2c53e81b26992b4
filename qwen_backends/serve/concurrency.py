"""Who gets to generate when: the per-backend admission policy of ``qwen-backends serve``.

Two policies, chosen from the backend's :class:`~qwen_backends.backends.base.Capabilities`:

- **concurrent** (server backends, ``native_async``: ollama, vllm): every request goes straight
  to ``agenerate`` / ``astream``; the server behind the backend schedules them.
- **one at a time** (in-process backends: hf, unsloth, llama.cpp, MLX): one generation runs, up
  to ``max_queue`` more wait in arrival order, and a request that finds the queue full is
  refused at once with :class:`QueueFullError` (HTTP 503 with ``Retry-After``), so nothing
  ever hangs. A slot is released only when the backend is really free again: a cancelled
  non-streamed request keeps it until its worker thread returns, a closed stream until the
  backend's stream has closed.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from qwen_backends.errors import BackendUnavailableError

__all__ = ["AdmissionGate", "QueueFullError"]

T = TypeVar("T")

#: Bounds of the ``Retry-After`` estimate, in seconds.
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 1, 60


class QueueFullError(BackendUnavailableError):
    """Every slot and queue place of an in-process backend is taken (HTTP 503).

    Attributes
    ----------
    retry_after
        Whole seconds after which a retry is likely to be admitted.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AdmissionGate:
    """Admission for one backend: concurrent, or one at a time with a bounded FIFO queue.

    Parameters
    ----------
    concurrent
        Admit everything at once (server backends).
    max_queue
        Requests that may wait for the running one (one-at-a-time only); more get
        :class:`QueueFullError`.
    backend
        Backend name, for messages.

    Attributes
    ----------
    active
        Generations holding a slot now.
    waiting
        Requests queued for the slot now.
    """

    def __init__(self, *, concurrent: bool, max_queue: int, backend: str) -> None:
        self.concurrent = concurrent
        self.max_queue = max_queue
        self.backend = backend
        self.active = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        # Exponential moving average of how long one generation holds the slot.
        self._average_seconds = 1.0

    @property
    def waiting(self) -> int:
        """Requests queued for the slot now."""
        return len(self._queue)

    @property
    def policy(self) -> str:
        """One line describing the policy (for logs and ``GET /v1/models``-adjacent docs)."""
        if self.concurrent:
            return "concurrent (the backend's server schedules requests)"
        return f"one generation at a time, up to {self.max_queue} waiting"

    def retry_after(self) -> int:
        """Seconds until a place is likely free: queue length x the average generation time."""
        estimate = self._average_seconds * (self.waiting + self.active)
        return int(min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, math.ceil(estimate))))

    async def acquire(self) -> None:
        """Take the slot, waiting in line if allowed.

        Raises
        ------
        QueueFullError
            At once when the slot is busy and ``max_queue`` requests already wait.
        """
        if self.concurrent:
            self.active += 1
            return
        if self.active == 0 and not self._queue:
            self.active = 1
            return
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(
                f"the {self.backend} backend runs one generation at a time and its queue is full "
                f"({self.max_queue} waiting); retry later or raise QWEN_SERVE__MAX_QUEUE",
                self.retry_after(),
            )
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                # The slot was handed over just as this waiter went away: pass it on.
                self._hand_over()
            else:
                self._queue.remove(ticket)
            raise

    def release(self, seconds: float | None = None) -> None:
        """Give the slot back (``seconds``: how long it was held, for ``Retry-After``)."""
        if seconds is not None:
            self._average_seconds = 0.8 * self._average_seconds + 0.2 * max(seconds, 0.0)
        if self.concurrent:
            self.active -= 1
            return
        self._hand_over()

    def _hand_over(self) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.done():
                ticket.set_result(None)  # the slot passes on; active stays 1
                return
        self.active = 0

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work()`` holding a slot; the slot is released when the work has really ended.

        If the caller is cancelled (client gone) while the work runs, the work goes on to its
        end in the background for one-at-a-time backends (a worker thread cannot be
        interrupted) and only then frees the slot; server backends' work is cancelled at once.
        """
        await self.acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            task = asyncio.ensure_future(work())
        except BaseException:
            self.release()
            raise

        def finished(done: asyncio.Future[T]) -> None:
            self.release(loop.time() - started)
            if not done.cancelled():
                done.exception()  # retrieved: a shielded task's caller may be gone

        task.add_done_callback(finished)
        if self.concurrent:
            return await task
        return await asyncio.shield(task)
