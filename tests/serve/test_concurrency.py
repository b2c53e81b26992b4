"""The admission gate: one at a time with a bounded FIFO queue, or concurrent."""

from __future__ import annotations

import asyncio

import pytest

from qwen_backends.serve.concurrency import AdmissionGate, QueueFullError


def gate(max_queue: int = 2, concurrent: bool = False) -> AdmissionGate:
    return AdmissionGate(concurrent=concurrent, max_queue=max_queue, backend="hf")


def test_one_at_a_time_in_arrival_order_and_refuses_beyond_the_queue() -> None:
    async def main() -> None:
        admission = gate(max_queue=2)
        order: list[int] = []
        release = asyncio.Event()

        async def work(number: int) -> int:
            order.append(number)
            assert admission.active == 1
            if number == 0:
                await release.wait()
            return number

        first = asyncio.ensure_future(admission.run(lambda: work(0)))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(admission.run(lambda n=n: work(n))) for n in (1, 2)]
        await asyncio.sleep(0)
        assert admission.waiting == 2
        with pytest.raises(QueueFullError) as caught:
            await admission.run(lambda: work(3))
        assert "QWEN_SERVE__MAX_QUEUE" in str(caught.value)
        assert 1 <= caught.value.retry_after <= 60
        release.set()
        assert await asyncio.gather(first, *waiting) == [0, 1, 2]
        assert order == [0, 1, 2]
        assert (admission.active, admission.waiting) == (0, 0)

    asyncio.run(main())


def test_a_waiter_that_goes_away_leaves_the_queue() -> None:
    async def main() -> None:
        admission = gate(max_queue=1)
        hold = asyncio.Event()
        running = asyncio.ensure_future(admission.run(hold.wait))
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert admission.waiting == 0
        hold.set()
        await running
        assert admission.active == 0

    asyncio.run(main())


def test_cancelled_caller_keeps_the_slot_until_the_work_ends() -> None:
    """In-process work cannot be interrupted, so the slot is held until it really ends."""

    async def main() -> None:
        admission = gate(max_queue=1)
        finish = asyncio.Event()
        caller = asyncio.ensure_future(admission.run(finish.wait))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert admission.active == 1  # the work still runs
        finish.set()
        await asyncio.sleep(0.01)
        assert admission.active == 0

    asyncio.run(main())


def test_concurrent_policy_admits_everyone_and_cancels_with_the_caller() -> None:
    async def main() -> None:
        admission = gate(max_queue=0, concurrent=True)
        hold = asyncio.Event()
        callers = [asyncio.ensure_future(admission.run(hold.wait)) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert admission.active == 20
        callers[0].cancel()
        await asyncio.sleep(0.01)
        assert admission.active == 19
        hold.set()
        await asyncio.gather(*callers[1:])
        assert admission.active == 0

    asyncio.run(main())


def test_a_slot_handed_to_a_cancelled_waiter_passes_on() -> None:
    async def main() -> None:
        admission = gate(max_queue=2)
        await admission.acquire()
        second = asyncio.ensure_future(admission.acquire())
        third = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        admission.release()  # hands the slot to `second` ...
        second.cancel()  # ... which goes away before it runs
        with pytest.raises(asyncio.CancelledError):
            await second
        await asyncio.wait_for(third, 1)
        assert (admission.active, admission.waiting) == (1, 0)
        admission.release()
        assert admission.active == 0

    asyncio.run(main())
