"""Work done ahead for a next turn: it runs only while the backend is idle and gives way.

The lock and the worker are tested with plain callables (no model); the backends' use of them
is tested in tests/backends/test_prompt_cache.py.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from qwen_backends.backends.local import GenerationLock
from qwen_backends.backends.next_turn import AheadWorker, next_turn_ids
from qwen_backends.chat import render_prompt_ids
from qwen_backends.results import Generation, Request, ToolCall
from qwen_backends.sampling import SamplingParams


def test_work_ahead_runs_when_nothing_arrives_and_holds_the_lock() -> None:
    lock = GenerationLock("test")
    with lock.ahead(lock.arrivals, 0.0) as idle:
        assert idle and lock.busy and lock.held_here
    assert not lock.busy


def test_work_ahead_gives_way_to_a_generation_that_arrived() -> None:
    lock = GenerationLock("test")
    seen = lock.arrivals
    with lock.generation():
        pass
    with lock.ahead(seen, 60.0) as idle:  # returns at once: an arrival is already counted
        assert not idle and not lock.busy


def test_work_ahead_does_not_wait_for_a_running_generation() -> None:
    lock = GenerationLock("test")
    started, release = threading.Event(), threading.Event()

    def generate() -> None:
        with lock.generation():
            started.set()
            release.wait()

    worker = threading.Thread(target=generate)
    worker.start()
    started.wait()
    try:
        # The generation arrived before `seen` was read, so only the busy lock stops the work.
        with lock.ahead(lock.arrivals, 0.0) as idle:
            assert not idle
    finally:
        release.set()
        worker.join()


def test_the_worker_runs_submitted_work_once_and_a_later_arrival_cancels_it() -> None:
    lock = GenerationLock("test")
    worker = AheadWorker(lock, "test")
    ran: list[str] = []
    worker.submit(lambda: ran.append("first"), lock.arrivals)
    worker.wait()
    assert ran == ["first"]
    seen = lock.arrivals
    with lock.generation():  # arrives while the work still waits for the backend to be idle
        worker.submit(lambda: ran.append("second"), seen)
    worker.wait()
    assert ran == ["first"]


def test_stop_makes_waiting_work_give_way() -> None:
    lock = GenerationLock("test")
    worker = AheadWorker(lock, "test")
    ran: list[str] = []
    # Nothing arrives, but stop() counts as an arrival: the hour-long wait ends at once.
    with lock.generation():
        seen = lock.arrivals
    thread = threading.Thread(
        target=lambda: worker._run(lambda: ran.append("late"), seen), name="waiting"
    )
    worker._thread = thread
    import qwen_backends.backends.next_turn as next_turn

    original = next_turn.WAIT_S
    next_turn.WAIT_S = 3600.0
    try:
        thread.start()
        worker.stop()
    finally:
        next_turn.WAIT_S = original
    assert not thread.is_alive() and ran == []


def test_a_failure_ahead_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    lock = GenerationLock("test")
    worker = AheadWorker(lock, "test")

    def broken() -> None:
        raise RuntimeError("the runtime fell over")

    with caplog.at_level(logging.WARNING, logger="qwen_backends.backends.next_turn"):
        worker.submit(broken, lock.arrivals)
        worker.wait()
    assert "the runtime fell over" in caplog.text and not lock.busy


# -- what is computed ahead -----------------------------------------------------------------

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three primary colours."},
]


def _generation(text: str, calls: tuple[ToolCall, ...] = ()) -> Generation:
    reason: Any = "tool_calls" if calls else "stop"
    return Generation(
        text, reason, prompt_tokens=0, completion_tokens=1, seconds=0.0, tool_calls=calls
    )


def test_the_ids_ahead_are_where_every_next_prompt_starts(offline_tokenizer: Any) -> None:
    answer = "Red, yellow and blue are the three primary colours of paint, as taught at school."
    request = Request(messages=HISTORY, sampling=SamplingParams())
    ids = next_turn_ids(
        offline_tokenizer, request, _generation(answer), [], allow_control_tokens=False
    )
    assert ids is not None
    turn = [*HISTORY, {"role": "assistant", "content": answer}, {"role": "user", "content": "?"}]
    assert render_prompt_ids(offline_tokenizer, turn)[: len(ids)] == ids
    # Not the answered prompt plus the answer: the hybrid template drops the empty think block.
    prompt = render_prompt_ids(offline_tokenizer, HISTORY)
    assert ids[: len(prompt) - 4] == prompt[:-4] and ids[len(prompt) - 4] != prompt[-4]


def test_little_left_to_compute_means_nothing_ahead(offline_tokenizer: Any) -> None:
    request = Request(messages=HISTORY, sampling=SamplingParams())
    full = next_turn_ids(
        offline_tokenizer, request, _generation("Red."), [], allow_control_tokens=False
    )
    assert full is not None  # nothing held: all of it is missing
    held = full[:-5]
    assert (
        next_turn_ids(
            offline_tokenizer, request, _generation("Red."), held, allow_control_tokens=False
        )
        is None
    )


def test_tool_calls_ahead_match_the_tool_round_trip(offline_tokenizer: Any) -> None:
    from qwen_backends.tools import assistant_message, tool_message

    tool = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
        },
    }
    call = ToolCall(id="call_1", name="add", arguments={"a": 2, "b": 3})
    request = Request(messages=HISTORY, sampling=SamplingParams(), tools=(tool,))
    ids = next_turn_ids(
        offline_tokenizer, request, _generation("", (call,)), [], allow_control_tokens=False
    )
    assert ids is not None
    turn = [*HISTORY, assistant_message("", [call]), tool_message(call, 5)]
    assert render_prompt_ids(offline_tokenizer, turn, tools=[tool])[: len(ids)] == ids
