"""Structured output and tool calling through the hf backend (tiny random-weight checkpoint).

Random weights make every allowed token plausible, so schema-valid answers prove the grammar
processor is in the generation path; tool calls are scripted token by token (a huge logit bias)
to stand in for a model that learned to call tools.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
import torch
from isolation import isolated_in

from qwen_backends import create_backend
from qwen_backends.backends.hf import HFBackend
from qwen_backends.errors import OutputValidationError, UnsupportedFeatureError
from qwen_backends.sampling import SamplingParams
from qwen_backends.tools import assistant_message, run_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
GREEDY = SamplingParams.preset("greedy", max_new_tokens=60)


class Weather(pydantic.BaseModel):
    """A forecast."""

    sky: Literal["sunny", "cloudy", "rain"]
    celsius: int = pydantic.Field(ge=-30, le=45)
    note: str = pydantic.Field(max_length=8)


def get_weather(city: str) -> str:
    """Get the weather for a city.

    Parameters
    ----------
    city
        The city's name.
    """
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HFBackend]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine thrashes with two threads per process
    with isolated_in(tmp_path_factory.mktemp("hf-structured")):
        instance = create_backend(backend="hf", model=str(tiny_model_dir))
        assert isinstance(instance, HFBackend)
        yield instance
        instance.close()
    torch.set_num_threads(threads)


def script(backend: HFBackend, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Make the model write ``text`` then end its turn."""
    ids = [*backend.tokenizer(text, add_special_tokens=False)["input_ids"], 151645]
    original = backend._logits_processors

    class Force:
        def __init__(self, prompt_length: int) -> None:
            self.prompt_length = prompt_length

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - self.prompt_length
            if step < len(ids):
                scores = scores.clone()
                scores[:, ids[step]] += 1e4
            return scores

    def processors(sampling: SamplingParams, prompt_length: int) -> list[Any]:
        return [*original(sampling, prompt_length), Force(prompt_length)]

    monkeypatch.setattr(backend, "_logits_processors", processors)


# -- structured output -------------------------------------------------------------------


def test_a_pydantic_model_gives_a_validated_instance(backend: HFBackend) -> None:
    answers = set()
    for seed in range(4):
        result = backend.generate(
            "Weather?", {"max_new_tokens": 80, "seed": seed}, response_format=Weather
        )
        assert isinstance(result.parsed, Weather)
        assert result.parsed == Weather.model_validate_json(result.text)
        assert result.finish_reason == "stop"
        answers.add(result.text)
    assert len(answers) > 1


def test_a_stream_gives_the_same_json_and_the_parsed_object(backend: HFBackend) -> None:
    sampling = {"max_new_tokens": 80, "seed": 7}
    whole = backend.generate("Weather?", sampling, response_format=Weather)
    stream = backend.stream("Weather?", sampling, response_format=Weather)
    assert "".join(stream) == whole.text
    assert stream.generation is not None
    assert stream.generation.parsed == whole.parsed


def test_a_batch_and_english_only_are_constrained_too(backend: HFBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 9}},
        "required": ["ok", "n"],
    }
    results = backend.generate_batch(
        ["One?", "A longer second question?"],
        {"max_new_tokens": 40, "seed": 1, "english_only": True},
        response_format=schema,
    )
    for result in results:
        assert set(result.parsed) == {"ok", "n"}
        assert isinstance(result.parsed["ok"], bool) and result.parsed["n"] <= 9


def test_output_cut_by_max_new_tokens_raises_with_the_raw_text(backend: HFBackend) -> None:
    with pytest.raises(OutputValidationError) as caught:
        backend.generate("Weather?", {"max_new_tokens": 3, "seed": 0}, response_format=Weather)
    assert caught.value.partial_text.startswith("{")
    assert caught.value.backend == "hf"
    assert "max_new_tokens" in str(caught.value)


def test_a_schema_the_engine_cannot_enforce_is_refused(backend: HFBackend) -> None:
    with pytest.raises(UnsupportedFeatureError, match="look-around"):
        backend.generate("x", GREEDY, response_format={"type": "string", "pattern": "(?<=a)b"})


# -- tools ---------------------------------------------------------------------------------


def test_the_tools_block_is_rendered_by_the_template(backend: HFBackend) -> None:
    prompt = backend.rendered_prompt("Weather in Paris?", tools=[get_weather])
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert backend.count_prompt_tokens("Weather in Paris?", tools=[get_weather]) > (
        backend.count_prompt_tokens("Weather in Paris?")
    )


def test_a_tool_call_is_parsed_out_of_the_answer(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    script(backend, monkeypatch, f"Checking.\n{CALL}")
    result = backend.generate("Weather in Paris?", GREEDY, tools=[get_weather])
    assert result.text == "Checking."
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    stream = backend.stream("Weather in Paris?", GREEDY, tools=[get_weather])
    pieces = list(stream)
    assert "".join(pieces) == "Checking."
    assert stream.generation is not None
    assert stream.generation.finish_reason == "tool_calls"
    assert [c.arguments for c in stream.generation.tool_calls] == [{"city": "Paris"}]


def test_without_tools_the_text_is_left_alone(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    script(backend, monkeypatch, CALL)
    result = backend.generate("Weather in Paris?", GREEDY)
    assert result.text == CALL and result.tool_calls == ()


def test_a_malformed_call_stays_in_the_text_with_a_warning(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>'
    script(backend, monkeypatch, bad)
    with caplog.at_level(logging.WARNING, logger="qwen_backends.tools"):
        result = backend.generate("Weather in Paris?", GREEDY, tools=[get_weather])
    assert result.text == bad
    assert result.tool_calls == () and result.finish_reason == "stop"
    assert "kept as text" in caplog.text


def test_the_tool_result_goes_back_through_the_template(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        script(backend, patch, CALL)
        first = backend.generate("Weather in Paris?", GREEDY, tools=[get_weather])
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        assistant_message(first.text, first.tool_calls),
        *run_tool_calls(first.tool_calls, [get_weather]),
    ]
    assert history[-1]["content"] == "sunny in Paris"
    prompt = backend.rendered_prompt(history, tools=[get_weather])
    assert "<tool_response>\nsunny in Paris\n</tool_response>" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    second = backend.generate(history, {**GREEDY.model_dump(), "max_new_tokens": 5})
    assert second.prompt_tokens == len(backend.prompt_ids(history))
