"""Prompt caching: reused prefixes give the very answers a cold start gives, token for token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qwen_backends import create_backend
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.prompt_cache import PromptCache, common_prefix
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint

GREEDY = SamplingParams.preset("greedy", max_new_tokens=12)
SEEDED = SamplingParams(temperature=1.2, top_k=0, top_p=0.95, seed=11, max_new_tokens=12)
HISTORY = [
    {"role": "system", "content": "You are a terse assistant. " * 20},
    {"role": "user", "content": "Name three primary colours."},
]


# -- the LRU ------------------------------------------------------------------------------------


def test_common_prefix_counts_equal_leading_ids() -> None:
    long = list(range(1000))
    assert common_prefix(long, long) == 1000
    assert common_prefix(long, [*long[:700], -1, *long[701:]]) == 700
    assert common_prefix([], long) == 0 and common_prefix([5], [6]) == 0


def test_take_returns_the_longest_shared_prefix_and_removes_the_entry() -> None:
    cache: PromptCache[str] = PromptCache(1000)
    cache.put([1, 2, 3, 4], "short", 10)
    cache.put([1, 2, 3, 4, 5, 6, 7], "long", 10)
    assert cache.take([1, 2, 3, 4, 5, 6, 9], usable=6) == ("long", 6)
    assert len(cache) == 1  # taken entries leave the cache: the caller puts its new state back
    assert cache.take([1, 2, 3], usable=2) == ("short", 2)
    assert cache.take([1, 2, 3], usable=2) == (None, 0)
    assert (cache.stats.calls, cache.stats.hits, cache.stats.reused_tokens) == (3, 2, 8)


def test_the_budget_evicts_the_least_recently_used() -> None:
    cache: PromptCache[str] = PromptCache(25)
    cache.put([1], "a", 10)
    cache.put([2], "b", 10)
    cache.put([3], "c", 10)  # over budget: "a" goes
    assert cache.used_bytes == 20 and cache.stats.evicted == 1
    assert cache.take([1, 0], usable=1) == (None, 0)
    cache.put([4], "too big", 26)  # larger than the whole budget: never kept
    assert len(cache) == 2


def test_a_zero_budget_keeps_nothing() -> None:
    cache: PromptCache[str] = PromptCache(0)
    cache.put([1, 2], "a", 1)
    assert not cache.enabled and cache.take([1, 2, 3], usable=2) == (None, 0)


# -- the hf backend ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[HFBackend, HFBackend]]:
    """The same weights with the cache on (default budget) and off."""
    model = str(tiny_checkpoint("tiny"))
    with (
        create_backend(backend="hf", model=model) as cached,
        create_backend(backend="hf", model=model, hf={"prompt_cache_mb": 0}) as cold,
    ):
        assert isinstance(cached, HFBackend) and isinstance(cold, HFBackend)
        yield cached, cold


def _said(text: str) -> str:
    """An answer as history (the random checkpoint may answer with whitespace only)."""
    return text if text.strip() else f"{text}(blank)"


def _same(cached: HFBackend, cold: HFBackend, messages: Any, sampling: SamplingParams) -> Any:
    hot, plain = cached.generate(messages, sampling), cold.generate(messages, sampling)
    assert (hot.text, hot.completion_tokens, hot.finish_reason) == (
        plain.text,
        plain.completion_tokens,
        plain.finish_reason,
    )
    assert plain.cached_tokens == 0
    return hot


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_next_turn_reuses_the_history_and_answers_the_same(
    pair: tuple[HFBackend, HFBackend], sampling: SamplingParams
) -> None:
    cached, cold = pair
    cached.prompt_cache.clear()
    first = _same(cached, cold, HISTORY, sampling)
    assert first.cached_tokens == 0
    turn = [
        *HISTORY,
        {"role": "assistant", "content": _said(first.text)},
        {"role": "user", "content": "And?"},
    ]
    second = _same(cached, cold, turn, sampling)
    system_and_user = len(cached.prompt_ids(HISTORY)) - 6  # up to the first assistant header
    assert second.cached_tokens >= system_and_user
    assert second.cached_tokens < second.prompt_tokens
    streamed = cached.stream(turn, sampling)
    assert "".join(streamed) == second.text
    assert streamed.generation is not None and streamed.generation.cached_tokens > 0


def test_a_prefix_ending_inside_an_earlier_answer_and_an_edited_history(
    pair: tuple[HFBackend, HFBackend],
) -> None:
    cached, cold = pair
    cached.prompt_cache.clear()
    first = _same(cached, cold, HISTORY, GREEDY)
    half = _said(first.text[: len(first.text) // 2])
    partial = [
        *HISTORY,
        {"role": "assistant", "content": half},
        {"role": "user", "content": "Go on"},
    ]
    assert _same(cached, cold, partial, GREEDY).cached_tokens > 0
    edited = [{**HISTORY[0], "content": "You are verbose. " * 20}, *partial[1:]]
    again = _same(cached, cold, edited, GREEDY)
    assert again.cached_tokens < 6  # the edit is in the system prompt: little is shared


def test_a_conversation_longer_than_the_budget_stays_exact() -> None:
    model = str(tiny_checkpoint("tiny"))
    with (
        create_backend(backend="hf", model=model, hf={"prompt_cache_mb": 1}) as small,
        create_backend(backend="hf", model=model, hf={"prompt_cache_mb": 0}) as cold,
    ):
        assert isinstance(small, HFBackend) and isinstance(cold, HFBackend)
        messages: list[dict[str, str]] = list(HISTORY)
        for turn in range(3):
            answer = _same(small, cold, messages, GREEDY)
            messages += [
                {"role": "assistant", "content": _said(answer.text)},
                {"role": "user", "content": f"Turn {turn}: " + "more words " * 40},
            ]
            assert small.prompt_cache.used_bytes <= 2**20
        assert small.prompt_cache.stats.evicted + small.prompt_cache.stats.hits > 0


def test_batches_and_logprobs_still_work_beside_the_cache(
    pair: tuple[HFBackend, HFBackend],
) -> None:
    cached, cold = pair
    batch = cached.generate_batch(["Hi", "Name a colour."], GREEDY)
    assert [g.text for g in batch] == [
        g.text for g in cold.generate_batch(["Hi", "Name a colour."], GREEDY)
    ]
    with_logprobs = GREEDY.replace(logprobs=True)
    cached.generate(HISTORY, with_logprobs)
    hot = cached.generate(HISTORY, with_logprobs)
    plain = cold.generate(HISTORY, with_logprobs)
    assert hot.cached_tokens > 0 and hot.logprobs is not None and plain.logprobs is not None
    assert [e.id for e in hot.logprobs] == [e.id for e in plain.logprobs]
    assert [e.logprob for e in hot.logprobs] == pytest.approx(
        [e.logprob for e in plain.logprobs], abs=1e-4
    )
