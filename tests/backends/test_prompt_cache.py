"""Prompt caching: reused prefixes give the very answers a cold start gives, token for token.

The same exactness cases run on every in-process backend that caches (hf, mlx, llamacpp), each
against a twin instance with ``prompt_cache_mb=0``; llama.cpp runs with one thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Literal

import pydantic
import pytest

from qwen_backends import create_backend
from qwen_backends.backends.local import LocalBackend
from qwen_backends.backends.prompt_cache import PromptCache, common_prefix
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint, tiny_gguf

GREEDY = SamplingParams.preset("greedy", max_new_tokens=12)
SEEDED = SamplingParams(temperature=1.2, top_k=0, top_p=0.95, seed=11, max_new_tokens=12)
#: Penalties look back over the sequence, reused prefix included (plain greedy on random weights
#: often repeats one token; these vary it).
PENALISED = SamplingParams.preset(
    "greedy", presence_penalty=2.0, repetition_penalty=1.3, max_new_tokens=12
)
SAMPLINGS = pytest.mark.parametrize(
    "sampling", [GREEDY, SEEDED, PENALISED], ids=["greedy", "seeded", "penalised"]
)
#: One thread, a small context: llama.cpp on two shared cores.
LLAMACPP_OPTIONS: dict[str, Any] = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 2048}
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


def test_take_can_ask_for_more_than_the_runtime_already_holds() -> None:
    cache: PromptCache[str] = PromptCache(1000)
    cache.put([1, 2, 3, 4], "four", 10)
    assert cache.take([1, 2, 3, 4, 5], usable=4, longer_than=4) == (None, 0)
    cache.record_hit(4)
    assert cache.take([1, 2, 3, 4, 5], usable=4, longer_than=3) == ("four", 4)
    assert (cache.stats.calls, cache.stats.hits, cache.stats.reused_tokens) == (2, 2, 8)


def test_an_entry_sharing_only_a_header_is_not_taken() -> None:
    cache: PromptCache[str] = PromptCache(1000, min_reuse=16)
    cache.put(list(range(100)), "long conversation", 10)
    cache.put([1000, 1001], "short", 10)
    assert cache.take([0, 1, 2, 99], usable=3) == (None, 0)  # 3 shared ids: it stays
    assert cache.take([1000, 1001, 7], usable=2) == ("short", 2)  # all of a short entry
    assert cache.take(list(range(20)), usable=19) == ("long conversation", 19)


# -- every in-process backend that caches --------------------------------------------------------

BACKENDS = [
    "hf",
    pytest.param("mlx", marks=[pytest.mark.mlx, pytest.mark.timeout(300)]),
    "llamacpp",
]


def make(name: str, **section: Any) -> LocalBackend:
    """The tiny checkpoint on backend ``name`` (its GGUF for llamacpp) with ``section`` set.

    The next turn is not prepared ahead unless ``section`` asks for it: these tests look at
    what one call leaves in the cache, and work done between calls would change it.
    """
    section = {"prompt_cache_next_turn": False, **section}
    if name == "mlx":
        pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    if name == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
        backend = create_backend(
            backend="llamacpp",
            model=str(tiny_gguf("q8_0")),
            llamacpp={**LLAMACPP_OPTIONS, **section},
        )
    else:
        backend = create_backend(
            backend=name, model=str(tiny_checkpoint("tiny")), **{name: section}
        )
    assert isinstance(backend, LocalBackend) and backend.capabilities.prompt_cache
    return backend


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """The same weights with the cache on (default budget) and off."""
    with make(request.param) as cached, make(request.param, prompt_cache_mb=0) as cold:
        yield cached, cold


def _said(text: str) -> str:
    """An answer as history (the random checkpoint may answer with whitespace only)."""
    return text if text.strip() else f"{text}(blank)"


def _same(cached: Any, cold: Any, messages: Any, sampling: SamplingParams) -> Any:
    hot, plain = cached.generate(messages, sampling), cold.generate(messages, sampling)
    assert (hot.text, hot.completion_tokens, hot.finish_reason) == (
        plain.text,
        plain.completion_tokens,
        plain.finish_reason,
    )
    assert plain.cached_tokens == 0
    return hot


@SAMPLINGS
def test_a_next_turn_reuses_the_history_and_answers_the_same(
    pair: tuple[Any, Any], sampling: SamplingParams
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
    pair: tuple[Any, Any],
) -> None:
    cached, cold = pair
    cached.prompt_cache.clear()
    first = _same(cached, cold, HISTORY, PENALISED)
    half = _said(first.text[: len(first.text) // 2])
    partial = [
        *HISTORY,
        {"role": "assistant", "content": half},
        {"role": "user", "content": "Go on"},
    ]
    assert _same(cached, cold, partial, PENALISED).cached_tokens > 0
    edited = [{**HISTORY[0], "content": "You are verbose. " * 20}, *partial[1:]]
    again = _same(cached, cold, edited, PENALISED)
    assert again.cached_tokens < 6  # the edit is in the system prompt: little is shared


@pytest.mark.parametrize("name", BACKENDS)
def test_a_conversation_longer_than_the_budget_stays_exact(name: str) -> None:
    with make(name, prompt_cache_mb=1) as small, make(name, prompt_cache_mb=0) as cold:
        lru = _lru(small)
        # The tiny model's state is small: a budget of about two first turns, which the
        # conversation outgrows (its state is then refused) while the others push entries out.
        lru.budget_bytes = min(lru.budget_bytes, 2 * _entry_bytes(small))
        messages: list[dict[str, str]] = list(HISTORY)
        others = [[{"role": "user", "content": f"Unrelated {n}: " + "words " * 60}] for n in (1, 2)]
        for turn in range(3):
            answer = _same(small, cold, messages, PENALISED)
            for other in others:  # other conversations in between push it out of the budget
                _same(small, cold, other, PENALISED)
            messages += [
                {"role": "assistant", "content": _said(answer.text)},
                {"role": "user", "content": f"Turn {turn}: " + "more words " * 120},
            ]
            assert lru.used_bytes <= lru.budget_bytes
        assert lru.stats.evicted > 0 and lru.stats.hits > 0


def _lru(backend: Any) -> PromptCache[Any]:
    """The byte-bounded LRU of a backend's prompt cache."""
    cache = backend.prompt_cache
    return cache if isinstance(cache, PromptCache) else cache.lru


def _entry_bytes(backend: Any) -> int:
    """Bytes of one entry holding ``HISTORY`` and an answer (measured on a scratch call)."""
    lru = _lru(backend)
    backend.generate(HISTORY, GREEDY)
    backend.generate([{"role": "user", "content": "measure"}], GREEDY)  # saves the live context
    size = lru.used_bytes
    backend.prompt_cache.clear()
    assert size > 0
    return size


def test_batches_and_logprobs_still_work_beside_the_cache(pair: tuple[Any, Any]) -> None:
    cached, cold = pair
    batch = cached.generate_batch(["Hi", "Name a colour."], GREEDY)
    assert [g.text for g in batch] == [
        g.text for g in cold.generate_batch(["Hi", "Name a colour."], GREEDY)
    ]
    with_logprobs = PENALISED.replace(logprobs=True)
    cached.generate(HISTORY, with_logprobs)
    hot = cached.generate(HISTORY, with_logprobs)
    plain = cold.generate(HISTORY, with_logprobs)
    assert hot.cached_tokens > 0 and hot.logprobs is not None and plain.logprobs is not None
    assert [e.id for e in hot.logprobs] == [e.id for e in plain.logprobs]
    assert [e.logprob for e in hot.logprobs] == pytest.approx(
        [e.logprob for e in plain.logprobs], abs=1e-4
    )


class Pick(pydantic.BaseModel):
    """A bounded answer: whatever the weights, a grammar can always finish it."""

    colour: Literal["red", "green", "blue"]
    count: int = pydantic.Field(ge=0, le=9)


def get_weather(city: str) -> str:
    """Get the weather for a city.

    Parameters
    ----------
    city
        The city's name.
    """
    return f"sunny in {city}"


def test_structured_output_tools_and_async_answer_the_same(pair: tuple[Any, Any]) -> None:
    cached, cold = pair
    sampling = SEEDED.replace(max_new_tokens=40)
    for _ in range(2):  # the second call reuses the first one's prompt
        hot = cached.generate(HISTORY, sampling, response_format=Pick)
        plain = cold.generate(HISTORY, sampling, response_format=Pick)
        assert (hot.text, hot.parsed) == (plain.text, plain.parsed)
    assert hot.cached_tokens > 0
    for _ in range(2):
        hot = cached.generate(HISTORY, PENALISED, tools=[get_weather])
        assert hot.text == cold.generate(HISTORY, PENALISED, tools=[get_weather]).text
    assert hot.cached_tokens > 0
    hot = asyncio.run(cached.agenerate(HISTORY, PENALISED))
    assert hot.cached_tokens > 0 and hot.text == cold.generate(HISTORY, PENALISED).text


@pytest.mark.parametrize("name", BACKENDS)
def test_a_zero_budget_reuses_nothing(name: str) -> None:
    with make(name, prompt_cache_mb=0) as cold:
        assert not cold.prompt_cache.enabled
        cold.generate(HISTORY, GREEDY)
        assert cold.generate(HISTORY, GREEDY).cached_tokens == 0


# -- the next turn, prepared ahead ---------------------------------------------------------------

#: A next turn's new message.
QUESTION = {"role": "user", "content": "?"}
#: An answer long enough that the next turn has more than MIN_AHEAD tokens to compute (the
#: penalties make the tiny checkpoint say more than newlines).
ANSWER = PENALISED.replace(max_new_tokens=32)


@pytest.fixture(scope="module", params=BACKENDS)
def ahead_pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """The cache on with the next turn prepared ahead, and the cache off."""
    with (
        make(request.param, prompt_cache_next_turn=True) as cached,
        make(request.param, prompt_cache_mb=0) as cold,
    ):
        yield cached, cold


def _history_ids(backend: Any, answer: str) -> list[int]:
    """The ids every next prompt starts with once ``answer`` follows ``HISTORY``."""
    from qwen_backends.chat import render_history
    from qwen_backends.prompt_encoding import encode_prompt

    text = render_history(backend.tokenizer, HISTORY, {"role": "assistant", "content": answer})
    return encode_prompt(backend.tokenizer, text)


@SAMPLINGS
def test_a_next_turn_prepared_ahead_computes_only_its_new_message(
    ahead_pair: tuple[Any, Any], sampling: SamplingParams
) -> None:
    cached, cold = ahead_pair
    cached.prompt_cache.clear()
    lru = _lru(cached)
    ahead = lru.stats.ahead_tokens
    first = _same(cached, cold, HISTORY, ANSWER)
    assert first.text.strip(), "the tiny checkpoint answered with whitespace only"
    cached.wait_idle()
    history = _history_ids(cached, first.text)
    assert lru.stats.ahead_tokens - ahead >= first.completion_tokens  # the answer, recomputed
    turn = [*HISTORY, {"role": "assistant", "content": first.text}, QUESTION]
    second = _same(cached, cold, turn, sampling)
    assert second.cached_tokens == len(history)  # all of the history, answer included
    assert second.prompt_tokens - second.cached_tokens < 16  # "?" and the turn markers
    if isinstance(cached.prompt_cache, PromptCache):
        return
    held = getattr(cached.prompt_cache, "held", None)
    if held is not None:  # llama.cpp: the live context held the history, then this turn
        assert held()[: len(history)] == history


def test_without_the_next_turn_ahead_the_answer_is_computed_again(
    pair: tuple[Any, Any],
) -> None:
    cached, cold = pair
    cached.prompt_cache.clear()
    first = _same(cached, cold, HISTORY, ANSWER)
    cached.wait_idle()  # returns at once: nothing was submitted
    assert _lru(cached).stats.ahead_tokens == 0
    turn = [*HISTORY, {"role": "assistant", "content": first.text}, QUESTION]
    second = _same(cached, cold, turn, ANSWER)
    # Reused up to the answer's header only: the answer was held behind the empty think block.
    assert second.cached_tokens <= len(cached.prompt_ids(HISTORY)) - 4


def test_work_ahead_gives_way_to_the_next_call(
    ahead_pair: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qwen_backends.backends.next_turn as next_turn

    # The work waits for an idle hour: the next call always arrives first, and it neither
    # waits for the work nor finds its state changed.
    monkeypatch.setattr(next_turn, "WAIT_S", 3600.0)
    cached, cold = ahead_pair
    cached.prompt_cache.clear()
    sampling = ANSWER
    lru = _lru(cached)
    ahead = lru.stats.ahead_tokens
    try:
        first = _same(cached, cold, HISTORY, sampling)
        other = [{"role": "user", "content": "Something else. " * 10}]
        _same(cached, cold, other, sampling)  # arrives while the first answer's work waits
        turn = [*HISTORY, {"role": "assistant", "content": first.text}, QUESTION]
        second = _same(cached, cold, turn, sampling)
        assert second.cached_tokens < len(_history_ids(cached, first.text))
        assert lru.stats.ahead_tokens == ahead  # every piece of work gave way, none ran
    finally:
        cached._ahead.stop()  # the last answer's work is still waiting: it gives way now


# -- llama.cpp: its live context and saved states ------------------------------------------------


def test_llamacpp_reuses_its_live_context_and_restores_other_conversations() -> None:
    with make("llamacpp") as cached, make("llamacpp", prompt_cache_mb=0) as cold:
        _live_context_and_saved_states(cached, cold)


def _live_context_and_saved_states(cached: Any, cold: Any) -> None:
    first = _same(cached, cold, HISTORY, SEEDED)
    held = cached.prompt_cache.held()
    # What llama-cpp-python keeps on its own: the prompt and the answer's tokens but the last.
    assert held[: first.prompt_tokens] == cached.prompt_ids(HISTORY)
    assert len(held) == first.prompt_tokens + first.completion_tokens - 1
    other = [{"role": "user", "content": "Something else entirely. " * 30}]
    assert _same(cached, cold, other, SEEDED).cached_tokens < 6
    assert len(cached.prompt_cache.lru) == 1  # the first conversation was saved, not lost
    turn = [
        *HISTORY,
        {"role": "assistant", "content": _said(first.text)},
        {"role": "user", "content": "And?"},
    ]
    again = _same(cached, cold, turn, SEEDED)
    assert again.cached_tokens >= len(cached.prompt_ids(HISTORY)) - 6
    assert len(cached.prompt_cache.lru) == 1  # now the other conversation is the saved one
