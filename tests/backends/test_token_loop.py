"""The in-process backends' shared text path: ids -> visible pieces -> Generation."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from qwen_backends.backends.token_loop import (
    AnswerAssembler,
    BackgroundSteps,
    IncrementalDecoder,
    PendingStep,
    Step,
    decode_ids,
    numpy_step,
)
from qwen_backends.sampling import SamplingParams

IM_END = 151_645
END_IDS = frozenset({IM_END, 151_643})


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def assemble(tokenizer: Any, ids: list[int], **sampling: Any) -> tuple[list[str], Any]:
    """Feed ``ids`` one at a time as a stream does; return the pieces and the Generation."""
    tools = sampling.pop("tools", False)
    answer = AnswerAssembler(tokenizer, END_IDS, SamplingParams(**sampling), tools=tools)
    pieces = []
    for token in ids:
        pieces.append(answer.feed(token))
        if answer.done:
            break
    pieces.append(answer.finish())
    return [piece for piece in pieces if piece], answer.generation(7, 0.5)


def test_incremental_decoding_joins_to_the_whole_decode(offline_tokenizer: Any) -> None:
    text = "naïve 中文 🙂 done"
    ids = offline_tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(offline_tokenizer)
    pieces = [decoder.add(token) for token in ids]
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_an_answer_cut_inside_a_character_ends_at_the_last_complete_one(
    offline_tokenizer: Any,
) -> None:
    ids = ids_of(offline_tokenizer, "ok ꙮ")
    partial = ids[:-1]  # the rare letter is several byte tokens: drop its last one
    assert decode_ids(offline_tokenizer, partial).endswith("\ufffd")
    pieces, generation = assemble(offline_tokenizer, partial, max_new_tokens=len(partial))
    assert generation.text == "".join(pieces) == "ok "
    assert (generation.finish_reason, generation.completion_tokens) == ("length", len(partial))


def test_the_end_token_ends_the_answer_and_is_counted(offline_tokenizer: Any) -> None:
    ids = [*ids_of(offline_tokenizer, "Hello world"), IM_END, *ids_of(offline_tokenizer, "more")]
    pieces, generation = assemble(offline_tokenizer, ids)
    assert "".join(pieces) == generation.text == "Hello world"
    assert generation.finish_reason == "stop"
    assert generation.completion_tokens == len(ids_of(offline_tokenizer, "Hello world")) + 1
    assert generation.prompt_tokens == 7


def test_a_stop_string_cuts_the_text_and_counts_up_to_the_token_that_completed_it(
    offline_tokenizer: Any,
) -> None:
    ids = ids_of(offline_tokenizer, "one two three four five")
    pieces, generation = assemble(offline_tokenizer, ids, stop=[" three"])
    assert generation.text == "".join(pieces) == "one two"
    assert generation.finish_reason == "stop"
    assert generation.completion_tokens == len(ids_of(offline_tokenizer, "one two three"))


def test_thinking_and_tool_calls_never_reach_the_text(offline_tokenizer: Any) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    raw = f"<think>\nplan\n</think>\n\n<tool_call>\n{json.dumps(call)}\n</tool_call>\nDone"
    pieces, generation = assemble(
        offline_tokenizer, [*ids_of(offline_tokenizer, raw), IM_END], tools=True
    )
    assert generation.text == "".join(pieces) == "Done"
    assert generation.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in generation.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


@pytest.mark.parametrize("limit", [1, 3])
def test_max_new_tokens_is_a_length_answer_of_exactly_that_many_tokens(
    offline_tokenizer: Any, limit: int
) -> None:
    ids = ids_of(offline_tokenizer, "a b c d e f g")
    answer = AnswerAssembler(offline_tokenizer, END_IDS, SamplingParams(max_new_tokens=limit))
    answer.feed_all(ids)
    answer.finish()
    generation = answer.generation(1, 0.0)
    assert (generation.finish_reason, generation.completion_tokens) == ("length", limit)
    assert generation.text == decode_ids(offline_tokenizer, ids[:limit])


def test_a_batch_row_and_a_stream_build_the_same_generation(offline_tokenizer: Any) -> None:
    ids = [*ids_of(offline_tokenizer, "Paris is the capital. Next"), IM_END, 151_643, 151_643]
    _, streamed = assemble(offline_tokenizer, ids, stop=[". Next"])
    row = AnswerAssembler(offline_tokenizer, END_IDS, SamplingParams(stop=[". Next"]))
    row.feed_all(ids)
    row.finish()
    assert row.generation(7, 0.5) == streamed


# -- log-probabilities ------------------------------------------------------------------------


@pytest.mark.parametrize("top", [0, 1, 5, 20])
def test_numpy_step_is_the_log_softmax_and_its_top_tokens(top: int) -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(3)
    row = rng.normal(size=151_936).astype(np.float32) * 3
    row[[17, 40_000]] = row.max() + 1.0  # a tie at the top: the smaller id comes first
    step = numpy_step(row, 123, top)
    reference = row.astype(np.float64) - np.logaddexp.reduce(row.astype(np.float64))
    assert step.id == 123 and step.logprob == pytest.approx(reference[123], abs=1e-4)
    order = sorted(range(row.shape[0]), key=lambda i: (-row[i], i))[:top]
    assert [token for token, _ in step.top] == order
    assert [value for _, value in step.top] == pytest.approx(reference[order], abs=1e-4)


def test_background_steps_equal_numpy_steps_and_the_worker_ends_with_the_answer(
    offline_tokenizer: Any,
) -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(5)
    rows = [rng.normal(size=151_936).astype(np.float32) for _ in range(20)]
    ids = [*ids_of(offline_tokenizer, "Hello there, world"), IM_END]
    expected = AnswerAssembler(offline_tokenizer, END_IDS, SamplingParams(logprobs=True))
    late = AnswerAssembler(offline_tokenizer, END_IDS, SamplingParams(logprobs=True))
    with BackgroundSteps(top=3) as steps:
        for row, token in zip(rows, ids, strict=False):
            pending = steps.submit(row.copy(), token)
            assert [t for t in threading.enumerate() if t.name.startswith("qwen-logprobs")]
            assert isinstance(pending, PendingStep) and pending.id == token
            assert len(steps._waiting) <= BackgroundSteps.backlog
            late.feed(pending)
            expected.feed(numpy_step(row, token, 3))
    assert not [t for t in threading.enumerate() if t.name.startswith("qwen-logprobs")]
    for answer in (expected, late):
        answer.finish()
    assert late.generation(3, 0.0).logprobs == expected.generation(3, 0.0).logprobs


def test_logprobs_leave_out_thinking_and_count_the_end_token(offline_tokenizer: Any) -> None:
    visible = ids_of(offline_tokenizer, "Hello world")
    thinking = ids_of(offline_tokenizer, "<think>\nsecret plan\n</think>\n\n")
    ids = [*thinking, *visible, IM_END]
    answer = AnswerAssembler(offline_tokenizer, END_IDS, SamplingParams(logprobs=True))
    for index, token in enumerate(ids):
        answer.feed(Step(token, -0.5 - index, ((token, -0.25),)))
    answer.finish()
    generation = answer.generation(3, 0.0)
    assert generation.text == "Hello world"
    assert generation.completion_tokens == len(ids)
    assert generation.logprobs is not None
    assert [entry.id for entry in generation.logprobs] == [*visible, IM_END]
    assert generation.logprobs[-1].token == "<|im_end|>"
    assert "".join(entry.token for entry in generation.logprobs[:-1]) == "Hello world"
    first = generation.logprobs[0]
    assert first.logprob == -0.5 - len(thinking)
    assert [(top.id, top.logprob) for top in first.top] == [(visible[0], -0.25)]


def test_plain_ids_give_no_logprobs(offline_tokenizer: Any) -> None:
    _, generation = assemble(offline_tokenizer, [*ids_of(offline_tokenizer, "Hi"), IM_END])
    assert generation.logprobs is None
