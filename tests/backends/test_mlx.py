"""The mlx backend on the tiny random-weight Qwen3 checkpoint, through MLX's Linux CPU build.

The same float32 weights are loaded by mlx-lm and by transformers, so greedy decoding must agree
token for token with the hf backend. Every test has a timeout: an upstream report
(ml-explore/mlx-lm#252) describes generation hangs on Linux CPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from isolation import isolated_in

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

from qwen_backends import create_backend
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.mlx import (
    AdditiveMask,
    MLXBackend,
    PresencePenalty,
)
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import (
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)
from qwen_backends.sampling import SamplingParams

pytestmark = [pytest.mark.mlx, pytest.mark.timeout(180)]

THINK, END_THINK, IM_END = 151667, 151668, 151645
#: Greedy with a strong presence penalty: unlike plain greedy on random weights, a different
#: token at every step (and the penalty is part of what must agree with hf).
VARIED = SamplingParams.preset("greedy", presence_penalty=2.0, max_new_tokens=16)
SAMPLED = SamplingParams(top_k=0, top_p=1.0, seed=4, max_new_tokens=12)
CONVERSATIONS: list[Any] = [
    "Hello",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, with ünïcödé and 中文?"},
    ],
]


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module-wide version of the autouse isolation (no QWEN_* env, no configs/ in cwd)."""
    with isolated_in(tmp_path_factory.mktemp("mlx-cwd")):
        yield


@pytest.fixture(scope="module")
def backend(isolated: None, tiny_model_dir: Path) -> Iterator[MLXBackend]:
    instance = create_backend(backend="mlx", model=str(tiny_model_dir))
    assert isinstance(instance, MLXBackend)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def hf(isolated: None, tiny_model_dir: Path) -> Iterator[HFBackend]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    instance = create_backend(backend="hf", model=str(tiny_model_dir))
    assert isinstance(instance, HFBackend)
    yield instance
    instance.close()
    torch.set_num_threads(threads)


def force_tokens(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch, script: list[int]
) -> list[int]:
    """Make the model emit ``script`` first (a huge logit bias), then decode freely."""
    original = backend.logits_processors
    steps: list[int] = []

    def processors(sampling: SamplingParams, prompt_length: int) -> list[Any]:
        def force(tokens: Any, logits: Any) -> Any:
            step = tokens.size - prompt_length
            steps.append(step)
            if step < len(script):
                logits[:, script[step]] = logits[:, script[step]] + 1e4
            return logits

        return [*original(sampling, prompt_length), force]

    monkeypatch.setattr(backend, "logits_processors", processors)
    return steps


def record_samples(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every token the sampler draws."""
    import qwen_backends.backends.mlx as module

    drawn: list[int] = []
    original = module.make_sampler

    def recording(sampling: SamplingParams, vocab_size: int) -> Any:
        sample = original(sampling, vocab_size)

        def wrapped(logprobs: Any) -> Any:
            token = sample(logprobs)
            drawn.append(int(token.item()))
            return token

        return wrapped

    monkeypatch.setattr(module, "make_sampler", recording)
    return drawn


# -- loading ---------------------------------------------------------------------------------


def test_selected_by_environment_like_a_new_user(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWEN_BACKEND", "mlx")
    monkeypatch.setenv("QWEN_MODEL", str(tiny_model_dir))
    with create_backend() as backend:
        assert backend.name == "mlx"
        result = backend.generate("Hello", {"max_new_tokens": 5, "seed": 1})
    assert (result.finish_reason, result.completion_tokens) == ("length", 5)
    assert result.prompt_tokens == 13 and result.text


def test_loads_the_checkpoint_with_both_end_tokens(
    backend: MLXBackend, tiny_model_dir: Path
) -> None:
    assert backend.model_name == str(tiny_model_dir)
    assert backend.eos_token_ids == {151645, 151643}
    assert {151645, 151643} <= set(backend.wrapper.eos_token_ids)
    assert backend.vocab_size == 151_936
    assert backend.context_window == 32_768
    assert type(backend.tokenizer).__module__.startswith("transformers")


def test_missing_local_directory_is_a_clear_error(isolated: None, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        create_backend(backend="mlx", model=str(tmp_path / "nowhere"))


def test_offline_hub_id_error_says_how_to_run_offline(isolated: None) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        create_backend(backend="mlx", model="Qwen/no-such-model-for-tests")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "export mlx" in message and "\n" not in message


def test_a_directory_without_weights_is_a_clear_error(isolated: None, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ModelNotFoundError, match="mlx-lm cannot load"):
        create_backend(backend="mlx", model=str(tmp_path))


def test_readiness_says_where_it_runs(isolated: None) -> None:
    from qwen_backends.settings import Settings

    verdict = MLXBackend.readiness(Settings())
    assert verdict.startswith("ready")
    if platform.system() == "Linux":
        assert "CPU" in verdict


# -- prompts and parity with hf ---------------------------------------------------------------


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_prompt_ids_are_the_projects_non_thinking_render(
    backend: MLXBackend, offline_tokenizer: Any, messages: Any
) -> None:
    expected = render_prompt_ids(offline_tokenizer, messages)
    assert backend.prompt_ids(messages) == expected
    assert backend.count_prompt_tokens(messages) == len(expected)
    assert backend.rendered_prompt(messages).endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize(
    "sampling",
    [
        VARIED,
        SamplingParams.preset("greedy", max_new_tokens=12),
        SamplingParams.preset("greedy", repetition_penalty=1.8, max_new_tokens=12),
        SamplingParams.preset("greedy", english_only=True, presence_penalty=1.0, max_new_tokens=12),
    ],
    ids=["presence", "plain", "repetition", "english"],
)
def test_greedy_answers_equal_hf_on_the_same_weights(
    backend: MLXBackend, hf: HFBackend, sampling: SamplingParams
) -> None:
    for messages in CONVERSATIONS:
        got, expected = backend.generate(messages, sampling), hf.generate(messages, sampling)
        assert got.text == expected.text
        assert (got.prompt_tokens, got.completion_tokens, got.finish_reason) == (
            expected.prompt_tokens,
            expected.completion_tokens,
            expected.finish_reason,
        )


def test_stop_string_cuts_like_hf_and_counts_to_the_token_that_completed_it(
    backend: MLXBackend, hf: HFBackend
) -> None:
    full = backend.generate("Hello", VARIED)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip(), full.text
    sampling = VARIED.replace(stop=(stop,))
    got, expected = backend.generate("Hello", sampling), hf.generate("Hello", sampling)
    assert got.text == full.text[: full.text.index(stop)] == expected.text
    assert got.finish_reason == "stop"
    assert got.completion_tokens == expected.completion_tokens < full.completion_tokens


# -- sampling --------------------------------------------------------------------------------


def test_max_new_tokens_is_exact(backend: MLXBackend) -> None:
    result = backend.generate("Hello", VARIED.replace(max_new_tokens=7))
    assert (result.finish_reason, result.completion_tokens) == ("length", 7)


def test_end_of_turn_counts_the_end_token(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_tokens(backend, monkeypatch, [9707, 13, IM_END])  # "Hello", ".", <|im_end|>
    result = backend.generate("Hi", VARIED)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("Hello.", "stop", 3)


def test_same_seed_same_text_and_the_global_rng_is_untouched(backend: MLXBackend) -> None:
    import mlx.core as mx

    mx.random.seed(123)
    before = mx.random.uniform().item()
    mx.random.seed(123)
    first = backend.generate("Hello", SAMPLED)
    second = backend.generate("Hello", SAMPLED)
    assert mx.random.uniform().item() == before
    assert first == dataclasses.replace(second, seconds=first.seconds)
    other = backend.generate("Hello", SAMPLED.replace(seed=5))
    assert other.text != first.text
    assert backend.generate("Hello", SAMPLED.replace(seed=None)).text != first.text


@pytest.mark.parametrize(
    "change", [{"temperature": 0.001}, {"top_k": 1}, {"top_p": 1e-9}, {"min_p": 1.0}]
)
def test_filters_reach_the_sampler(backend: MLXBackend, change: dict[str, Any]) -> None:
    # Each of these leaves (almost) only the most likely token: the answer becomes greedy.
    greedy = backend.generate("Hello", SAMPLED.replace(temperature=0.0))
    assert backend.generate("Hello", SAMPLED.replace(**change)).text == greedy.text
    assert backend.generate("Hello", SAMPLED).text != greedy.text


def test_presence_penalty_penalises_generated_tokens_once() -> None:
    import mlx.core as mx

    penalty = PresencePenalty(1.5, prompt_length=2)
    logits = penalty(mx.array([0, 1, 3, 3, 4]), mx.zeros((1, 6)))
    assert logits.tolist() == [[0.0, 0.0, 0.0, -1.5, -1.5, 0.0]]
    untouched = penalty(mx.array([0, 1]), mx.zeros((1, 6)))
    assert untouched.tolist() == [[0.0] * 6]


def test_additive_mask_keeps_the_logits_dtype() -> None:
    import mlx.core as mx

    mask = AdditiveMask(mx.array([0.0, -float("inf"), 0.0]))
    out = mask(mx.array([0]), mx.ones((1, 3), dtype=mx.bfloat16))
    assert out.dtype == mx.bfloat16
    assert [v == -float("inf") for v in out.astype(mx.float32).tolist()[0]] == [False, True, False]


def test_english_only_samples_only_english_tier_tokens(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwen_backends.vocab import allowed_token_ids

    allowed = set(allowed_token_ids(backend.tokenizer, tier="english"))
    drawn = record_samples(monkeypatch)
    result = backend.generate("Hello", SAMPLED.replace(english_only=True))
    assert result.completion_tokens == 12 and len(drawn) >= 12 and set(drawn) <= allowed
    drawn.clear()
    free = backend.generate("Hello", SAMPLED)
    assert not set(drawn) <= allowed and free.text != result.text
    assert backend.english_mask() is backend.english_mask()


# -- text: thinking, streaming ------------------------------------------------------------------


def test_forced_thinking_is_removed_from_generate_and_stream(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_tokens(backend, monkeypatch, [THINK, 9707, END_THINK, 271, 9707, 13, IM_END])
    result = backend.generate("Hi", VARIED)
    assert (result.text, result.completion_tokens) == ("Hello.", 7)
    assert "".join(backend.stream("Hi", VARIED)) == "Hello."


def test_an_answer_cut_inside_a_character_ends_at_the_last_complete_one(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Byte-level token "ä" is the raw byte 0xE4: the first of three bytes of a CJK character.
    first_byte = backend.tokenizer.convert_tokens_to_ids("ä")
    assert backend.tokenizer.decode([9707, first_byte]) == "Hello\ufffd"
    force_tokens(backend, monkeypatch, [9707, first_byte])
    sampling = VARIED.replace(max_new_tokens=2)
    result = backend.generate("Hi", sampling)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("Hello", "length", 2)
    assert "".join(backend.stream("Hi", sampling)) == "Hello"


@pytest.mark.parametrize("sampling", [VARIED, SAMPLED], ids=["greedy", "seeded"])
def test_stream_equals_generate(backend: MLXBackend, sampling: SamplingParams) -> None:
    stream = backend.stream(CONVERSATIONS[2], sampling)
    pieces = list(stream)
    result = backend.generate(CONVERSATIONS[2], sampling)
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert stream.generation is not None
    assert stream.generation.completion_tokens == result.completion_tokens
    assert stream.generation.finish_reason == result.finish_reason


def test_async_stream_and_generate_equal_generate(backend: MLXBackend) -> None:
    async def both() -> tuple[str, str]:
        pieces = [piece async for piece in backend.astream("Hello", VARIED)]
        return "".join(pieces), (await backend.agenerate("Hello", VARIED)).text

    streamed, generated = asyncio.run(both())
    assert streamed == generated == backend.generate("Hello", VARIED).text


def test_async_stream_closed_early_stops_on_its_own_thread(backend: MLXBackend) -> None:
    # MLX stream contexts must be left on the thread that entered them; a generation hopping
    # between worker threads fails when it is closed ("destroyed in a different thread").
    async def first_pieces() -> list[str]:
        stream = backend.astream("Hello", VARIED.replace(max_new_tokens=400))
        pieces = [await anext(stream), await anext(stream)]
        await stream.aclose()
        return pieces

    assert all(asyncio.run(first_pieces()))
    assert backend.generate("Hello", VARIED.replace(max_new_tokens=3)).completion_tokens == 3


def test_closing_a_stream_early_frees_the_backend(backend: MLXBackend) -> None:
    with backend.stream("Hello", VARIED) as stream:
        next(stream)
        with pytest.raises(GenerationError, match="already running on this thread"):
            backend.generate("Hello", VARIED)
    assert backend.generate("Hello", VARIED.replace(max_new_tokens=3)).completion_tokens == 3


# -- refusals --------------------------------------------------------------------------------


def test_context_overflow_is_refused_before_generating(
    isolated: None, tiny_model_dir: Path
) -> None:
    with create_backend(backend="mlx", model=str(tiny_model_dir), mlx={"max_context": 20}) as b:
        with pytest.raises(ContextLengthError, match="QWEN_MLX__MAX_CONTEXT"):
            b.generate("Hello", VARIED.replace(max_new_tokens=8))
        assert b.generate("Hello", VARIED.replace(max_new_tokens=7)).completion_tokens == 7


# -- structured output -------------------------------------------------------------------------

#: A bounded schema: whatever the random weights, the grammar can finish it.
PICK = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "ok": {"type": "boolean"},
    },
    "required": ["colour", "count", "ok"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams.preset("greedy", max_new_tokens=48),
        SamplingParams.preset("greedy", english_only=True, presence_penalty=1.0, max_new_tokens=48),
    ],
    ids=["plain", "english"],
)
def test_constrained_greedy_answers_equal_hf_on_the_same_weights(
    backend: MLXBackend, hf: HFBackend, sampling: SamplingParams
) -> None:
    for messages in CONVERSATIONS:
        got = backend.generate(messages, sampling, response_format=PICK)
        expected = hf.generate(messages, sampling, response_format=PICK)
        assert got.text == expected.text and got.parsed == expected.parsed
        assert set(got.parsed) == {"colour", "count", "ok"}
        assert (got.completion_tokens, got.finish_reason) == (
            expected.completion_tokens,
            expected.finish_reason,
        )


def test_sampled_structured_output_streams_and_validates(backend: MLXBackend) -> None:
    answers = set()
    for seed in range(3):
        sampling = SamplingParams(seed=seed, top_k=0, top_p=1.0, max_new_tokens=48)
        whole = backend.generate("Pick one.", sampling, response_format=PICK)
        stream = backend.stream("Pick one.", sampling, response_format=PICK)
        assert "".join(stream) == whole.text
        assert stream.generation is not None and stream.generation.parsed == whole.parsed
        assert (
            whole.parsed["colour"] in ("red", "green", "blue") and 0 <= whole.parsed["count"] <= 9
        )
        answers.add(whole.text)
    assert len(answers) > 1  # the grammar constrains the draw, it does not fix the answer


def test_a_schema_the_engine_cannot_enforce_is_refused_naming_mlx(backend: MLXBackend) -> None:
    with pytest.raises(UnsupportedFeatureError, match="look-around") as caught:
        backend.generate("x", VARIED, response_format={"type": "string", "pattern": "(?<=a)b"})
    assert caught.value.backend == "mlx"


# -- tools -----------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_are_rendered_through_the_template(backend: MLXBackend) -> None:
    prompt = backend.rendered_prompt("Weather in Oslo?", tools=[WEATHER])
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert backend.prompt_ids("Weather in Oslo?", tools=[WEATHER]) == render_prompt_ids(
        backend.tokenizer, [{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER]
    )


def test_a_tool_call_is_parsed_out_of_generate_and_stream(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\nOk'
    script = backend.tokenizer(raw, add_special_tokens=False).input_ids
    force_tokens(backend, monkeypatch, [*script, IM_END])
    sampling = VARIED.replace(max_new_tokens=len(script) + 4)
    result = backend.generate("Hi", sampling, tools=[WEATHER])
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert (result.text, result.finish_reason) == ("Ok", "tool_calls")
    stream = backend.stream("Hi", sampling, tools=[WEATHER])
    pieces = list(stream)
    assert "".join(pieces) == "Ok" and not any("<tool" in piece for piece in pieces)
    assert stream.generation is not None and stream.generation.tool_calls[0].name == "get_weather"
    # Without tools the same text is plain text.
    plain = backend.generate("Hi", sampling)
    assert plain.text == raw and plain.tool_calls == () and plain.finish_reason == "stop"


def test_a_malformed_tool_call_stays_in_the_text(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = "<tool_call>\n{not json}\n</tool_call>"
    script = backend.tokenizer(raw, add_special_tokens=False).input_ids
    force_tokens(backend, monkeypatch, [*script, IM_END])
    result = backend.generate("Hi", VARIED.replace(max_new_tokens=len(script) + 2), tools=[WEATHER])
    assert (result.text, result.tool_calls, result.finish_reason) == (raw, (), "stop")


def test_runtime_failures_become_generation_errors(
    backend: MLXBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(tokens: Any, logits: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(backend, "logits_processors", lambda sampling, length: [broken])
    with pytest.raises(GenerationError, match="mlx-lm generation failed: boom"):
        backend.generate("Hello", VARIED)


def test_closed_backend_refuses_work(isolated: None, tiny_model_dir: Path) -> None:
    instance = create_backend(backend="mlx", model=str(tiny_model_dir))
    instance.close()
    instance.close()
    with pytest.raises(GenerationError, match="closed"):
        instance.generate("Hello", VARIED)


def test_structured_output_runs_without_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The mlx extra resolves without torch (tests/test_packaging.py), but this venv has it and
    # transformers imports it whenever it is installed. A None entry in sys.modules makes
    # importlib report torch as absent, as on a light install: any torch import on the mlx path
    # (mlx-lm, transformers' tokenizer, the grammar engine, the English mask) then fails.
    script = f"""
import sys
sys.modules["torch"] = None
from qwen_backends import create_backend
schema = {{"type": "object", "properties": {{"ok": {{"type": "boolean"}}}}, "required": ["ok"]}}
with create_backend(backend="mlx", model={str(tiny_model_dir)!r}) as backend:
    answer = backend.generate(
        "hi", {{"max_new_tokens": 16, "seed": 0, "english_only": True}}, response_format=schema
    )
    scored = backend.score("hi", answer.text)
assert isinstance(answer.parsed["ok"], bool), answer
assert scored.logprob < 0, scored
heavy = [name for name in ("torch", "trl", "datasets") if sys.modules.get(name) is not None]
assert not heavy, heavy
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_logprobs_without_processors_come_from_mlx_lm_once_logits_are_float32(
    isolated: None, tiny_model_dir: Path
) -> None:
    sampling = SamplingParams.preset("greedy", max_new_tokens=6, logprobs=True, top_logprobs=3)
    with create_backend(backend="mlx", model=str(tiny_model_dir)) as fresh:
        assert isinstance(fresh, MLXBackend) and not fresh._float32_logits
        kept = fresh.generate("Hello", sampling)  # through the raw-logits processor
        assert fresh._float32_logits, "the tiny checkpoint's logits are float32"
        own = fresh.generate("Hello", sampling)  # mlx-lm's own log-softmax
    assert own.logprobs is not None and kept.logprobs is not None
    assert [e.id for e in own.logprobs] == [e.id for e in kept.logprobs]
    for mine, theirs in zip(own.logprobs, kept.logprobs, strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-5)
        assert [t.id for t in mine.top] == [t.id for t in theirs.top]
