"""The hf backend on the tiny random-weight Qwen3 checkpoint (real transformers, no hub).

The checkpoint carries Qwen3-4B's thinking-mode generation_config, so these tests also prove that
every sampling value is passed explicitly. Its weights are random: texts are gibberish but
deterministic under a seed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from isolation import isolated_in
from transformers import AutoTokenizer

from qwen_backends import create_backend
from qwen_backends.backends import hf as hf_module
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.torch_devices import (
    DeviceProbes,
    LowMemoryWarning,
    check_load_options,
    memory_warning,
    resolve_device,
    resolve_dtype,
)
from qwen_backends.backends.transformers_sampling import (
    AllowedTokensLogitsProcessor,
    PresencePenaltyLogitsProcessor,
    generation_config_for,
)
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import (
    ConfigurationError,
    ContextLengthError,
    GenerationError,
    MissingDependencyError,
    ModelNotFoundError,
    ThinkingModeError,
    UnsupportedFeatureError,
)
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import HFSettings, Settings
from qwen_backends.testing import tiny_checkpoint
from qwen_backends.thinking import TemplateMode, TextPipeline, ThinkingStreamFilter

THINK, END_THINK = 151667, 151668
SHORT = {"max_new_tokens": 4}
#: Greedy with a strong presence penalty: fast (no sorting of the vocabulary) and, unlike plain
#: greedy on random weights, a different token at every step.
VARIED = SamplingParams.preset("greedy", presence_penalty=2.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module-wide version of the autouse isolation (no QWEN_* env, no configs/ in cwd)."""
    with isolated_in(tmp_path_factory.mktemp("hf-cwd")):
        yield


@pytest.fixture(scope="module")
def backend(isolated: None, tiny_model_dir: Path) -> Iterator[HFBackend]:
    instance = create_backend(backend="hf", model=str(tiny_model_dir))
    assert isinstance(instance, HFBackend)
    yield instance
    instance.close()


def cpu_probes(**changes: Any) -> DeviceProbes:
    values: dict[str, Any] = {
        "cuda_available": lambda: False,
        "mps_available": lambda: False,
        "cuda_device_count": lambda: 0,
        "cuda_bf16_supported": lambda: False,
        "free_memory": lambda device: None,
        "module_available": lambda name: False,
    }
    values.update(changes)
    return DeviceProbes(**values)


def cuda_probes(bf16: bool = True, count: int = 2, modules: tuple[str, ...] = ()) -> DeviceProbes:
    return cpu_probes(
        cuda_available=lambda: True,
        cuda_device_count=lambda: count,
        cuda_bf16_supported=lambda: bf16,
        module_available=lambda name: name in modules,
    )


def capture_ids(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the token ids the decode loop returns."""
    seen: list[torch.Tensor] = []
    original = hf_module.decode

    def recording(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        seen.append(output)
        return output

    monkeypatch.setattr(hf_module, "decode", recording)
    return seen


def force_tokens(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch, script: list[int]
) -> list[int]:
    """Make the model emit ``script`` first (a huge logit bias), then decode freely."""
    original = backend._logits_processors
    calls: list[int] = []

    class Force:
        def __init__(self, prompt_length: int) -> None:
            self.prompt_length = prompt_length

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - self.prompt_length
            calls.append(step)
            if step < len(script):
                scores = scores.clone()
                scores[:, script[step]] += 1e4
            return scores

    def processors(sampling: SamplingParams, prompt_length: int) -> list[Any]:
        return [*original(sampling, prompt_length), Force(prompt_length)]

    monkeypatch.setattr(backend, "_logits_processors", processors)
    return calls


# -- loading ---------------------------------------------------------------------------------


def test_loads_like_the_hub_model(backend: HFBackend, tiny_model_dir: Path) -> None:
    assert type(backend.model).__name__ == "Qwen3ForCausalLM"
    assert backend.model_name == str(tiny_model_dir)
    assert backend.device.type == "cpu"
    assert backend.model.dtype == torch.float32  # dtype auto on CPU
    assert backend.eos_token_ids == (151645, 151643)
    assert backend.pad_token_id == 151643
    assert not backend.model.training
    assert backend.context_window == 32_768


def test_thinking_defaults_of_the_checkpoint_are_overridden(backend: HFBackend) -> None:
    assert backend.model.generation_config.temperature == 0.6  # the thinking value is there
    for sampling, expected in (
        (SamplingParams(), {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}),
        (SamplingParams(top_k=0, top_p=1.0), {"top_k": 0, "top_p": 1.0}),
        (SamplingParams.preset("greedy"), {"do_sample": False}),
    ):
        config = generation_config_for(sampling, eos_token_ids=(151645, 151643), pad_token_id=0)
        effective, _ = backend.model._prepare_generation_config(config)
        for key, value in expected.items():
            assert getattr(effective, key) == value, key
        assert effective.max_new_tokens == sampling.max_new_tokens
        assert effective.eos_token_id == [151645, 151643]


def test_missing_local_directory_is_a_clear_error(isolated: None, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        create_backend(backend="hf", model=str(tmp_path / "nowhere"))


def test_offline_hub_id_error_says_how_to_run_offline(isolated: None) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        create_backend(backend="hf", model="Qwen/no-such-model-for-tests")
    message = str(caught.value)
    assert "local directory" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, OSError)


def test_yarn_and_the_low_memory_warning(isolated: None, tiny_model_dir: Path) -> None:
    settings = Settings(
        backend="hf", model=str(tiny_model_dir), hf={"yarn": True, "dtype": "bfloat16"}
    )
    probes = cpu_probes(free_memory=lambda device: 1024)
    with (
        pytest.warns(LowMemoryWarning, match=r"only 0\.0 GiB is free on cpu") as caught,
        HFBackend(settings, probes=probes) as yarn,
    ):
        parameters = sum(p.numel() for p in yarn.model.parameters())
        assert f"has {parameters / 1e9:.2f}B parameters" in str(caught[0].message)
        rope = yarn.model.config.rope_parameters
        assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
        assert rope["original_max_position_embeddings"] == 32_768
        assert rope["rope_theta"] == 10_000.0  # kept from the checkpoint
        assert yarn.context_window == 131_072
        assert yarn.model.dtype == torch.bfloat16  # a forced dtype wins over auto (float32)
        assert yarn.generate("hi", {**SHORT, "max_new_tokens": 2}).completion_tokens == 2


def test_subclass_can_replace_only_the_loading_step(backend: HFBackend) -> None:
    class Preloaded(HFBackend):
        def _load(self) -> None:
            self.model, self.tokenizer = backend.model, backend.tokenizer

    other = Preloaded(backend.settings)
    sampling = SamplingParams(seed=3, **SHORT)
    assert _without_time(other.generate("hi", sampling)) == _without_time(
        backend.generate("hi", sampling)
    )


# -- device / dtype resolution ---------------------------------------------------------------


def test_auto_device_prefers_cuda_then_mps_then_cpu() -> None:
    assert resolve_device("auto", cuda_probes()) == "cuda:0"
    assert resolve_device("auto", cpu_probes(mps_available=lambda: True)) == "mps"
    assert resolve_device("auto", cpu_probes()) == "cpu"
    assert resolve_device("cuda:1", cuda_probes()) == "cuda:1"
    assert resolve_device("CUDA", cuda_probes()) == "cuda:0"
    assert resolve_device("cpu", cuda_probes()) == "cpu"


@pytest.mark.parametrize(
    ("device", "probes", "fragment"),
    [
        ("cuda", cpu_probes(), "CUDA is not available"),
        ("cuda:2", cuda_probes(count=2), "has 2 CUDA device"),
        ("cuda:x", cuda_probes(), "not a valid CUDA device"),
        ("mps", cpu_probes(), "MPS is not available"),
        ("tpu", cpu_probes(), "unknown device 'tpu'"),
    ],
)
def test_unavailable_device_is_a_clear_error(
    device: str, probes: DeviceProbes, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        resolve_device(device, probes)


def test_auto_dtype_per_device() -> None:
    assert resolve_dtype("auto", "cuda:0", cuda_probes(bf16=True)) == "bfloat16"
    assert resolve_dtype("auto", "cuda:0", cuda_probes(bf16=False)) == "float16"
    assert resolve_dtype("auto", "mps", cpu_probes()) == "float16"
    assert resolve_dtype("auto", "cpu", cpu_probes()) == "float32"
    assert resolve_dtype("bfloat16", "cpu", cpu_probes()) == "bfloat16"


def test_quantization_and_flash_attention_need_cuda_and_their_packages() -> None:
    with pytest.raises(UnsupportedFeatureError, match="need a CUDA GPU"):
        check_load_options(HFSettings(quantization="4bit"), "cpu", cpu_probes())
    with pytest.raises(MissingDependencyError, match="pip install bitsandbytes"):
        check_load_options(HFSettings(quantization="8bit"), "cuda:0", cuda_probes())
    check_load_options(
        HFSettings(quantization="4bit"), "cuda:0", cuda_probes(modules=("bitsandbytes",))
    )
    flash = HFSettings(attn_implementation="flash_attention_2")
    with pytest.raises(MissingDependencyError, match="flash-attn"):
        check_load_options(flash, "cuda:0", cuda_probes())
    with pytest.raises(UnsupportedFeatureError, match="CUDA only"):
        check_load_options(flash, "mps", cpu_probes(module_available=lambda name: True))
    check_load_options(flash, "cuda:0", cuda_probes(modules=("flash_attn",)))


def test_quantization_on_cpu_is_refused_before_loading(
    isolated: None, tiny_model_dir: Path
) -> None:
    with pytest.raises(UnsupportedFeatureError, match="quantization=4bit"):
        create_backend(backend="hf", model=str(tiny_model_dir), hf={"quantization": "4bit"})


def test_memory_warning_estimate() -> None:
    four_b = 4_022_468_096
    assert memory_warning(four_b, "bfloat16", "cuda:0", 24 * 1024**3) is None
    message = memory_warning(four_b, "bfloat16", "cuda:0", 6 * 1024**3)
    assert message is not None and "9.0 GiB in bfloat16" in message
    assert "QWEN_HF__QUANTIZATION=4bit" in message
    float32 = memory_warning(four_b, "float32", "mps", 8 * 1024**3)
    assert float32 is not None and "QWEN_HF__DTYPE=bfloat16" in float32
    assert memory_warning(four_b, "4bit", "cuda:0", 4 * 1024**3) is None
    assert memory_warning(four_b, "float32", "cpu", None) is None


# -- sampling ---------------------------------------------------------------------------------


def test_same_seed_same_text_and_counts(backend: HFBackend) -> None:
    sampling = SamplingParams(seed=7, **SHORT)
    first, second = backend.generate("Hello", sampling), backend.generate("Hello", sampling)
    assert first.text == second.text and first.text
    assert first.completion_tokens == 4 and first.finish_reason == "length"
    assert first.prompt_tokens == 13  # the golden non-thinking prompt for a one-word message


@pytest.mark.parametrize(
    "change",
    [{"seed": 8}, {"temperature": 0.05}, {"top_k": 0, "top_p": 1.0}, {"top_k": 2}],
)
def test_outputs_change_with_sampling_values(backend: HFBackend, change: dict[str, Any]) -> None:
    base = SamplingParams(seed=7, max_new_tokens=4)
    assert (
        backend.generate("Hello", base).text
        != backend.generate("Hello", base.replace(**change)).text
    )


def test_greedy_equals_temperature_zero_and_top_k_one(backend: HFBackend) -> None:
    prompt = "Tell me a story"
    greedy = backend.generate(prompt, SamplingParams.preset("greedy", **SHORT))
    zero = backend.generate(prompt, SamplingParams(temperature=0, top_p=0.3, top_k=5, **SHORT))
    top1 = backend.generate(prompt, SamplingParams(top_k=1, seed=1, **SHORT))
    assert greedy.text == zero.text == top1.text


def test_seeded_call_leaves_the_global_rng_untouched(backend: HFBackend) -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    backend.generate("Hello", SamplingParams(seed=5, max_new_tokens=2))
    backend.generate("Hello", SamplingParams(max_new_tokens=2))  # no seed: a fresh one
    assert list(backend.stream("Hello", SamplingParams(seed=5, max_new_tokens=2)))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_unseeded_calls_differ(backend: HFBackend) -> None:
    texts = {backend.generate("Hello", SamplingParams(max_new_tokens=4)).text for _ in range(2)}
    assert len(texts) == 2


def test_max_new_tokens_is_exact(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_ids(backend, monkeypatch)
    result = backend.generate("Hello", VARIED.replace(max_new_tokens=5))
    assert result.completion_tokens == 5 == seen[0].shape[1] - result.prompt_tokens
    assert result.finish_reason == "length"


def test_end_of_turn_stops_with_reason_stop(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_tokens(backend, monkeypatch, [9707, 151645])  # "Hello" then <|im_end|>
    result = backend.generate("Hi", SamplingParams(seed=1, max_new_tokens=20))
    assert (result.text, result.finish_reason, result.completion_tokens) == ("Hello", "stop", 2)


def test_stop_string_cuts_the_text_and_ends_early(backend: HFBackend) -> None:
    sampling = VARIED
    full = backend.generate("Hello", sampling)
    stop = _middle(full.text)
    expected = full.text[: full.text.index(stop)]
    result = backend.generate("Hello", sampling.replace(stop=[stop, "never-produced-xyz"]))
    assert result.text == expected
    assert result.finish_reason == "stop"
    assert result.completion_tokens < full.completion_tokens


def test_presence_penalty_processor_penalises_generated_tokens_once() -> None:
    scores = torch.zeros(2, 10)
    input_ids = torch.tensor([[1, 2, 5, 5, 7], [3, 3, 9, 9, 9]])
    out = PresencePenaltyLogitsProcessor(1.5, prompt_length=2)(input_ids, scores)
    expected = torch.zeros(2, 10)
    expected[0, [5, 7]] = -1.5
    expected[1, 9] = -1.5
    assert torch.equal(out, expected)  # prompt tokens (1, 2, 3) are not penalised
    untouched = PresencePenaltyLogitsProcessor(1.5, prompt_length=5)(input_ids, scores)
    assert torch.equal(untouched, scores)


def test_presence_penalty_changes_the_output(backend: HFBackend) -> None:
    greedy = SamplingParams.preset("greedy", max_new_tokens=10)
    plain = backend.generate("Hello", greedy)
    penalised = backend.generate("Hello", greedy.replace(presence_penalty=2.0))
    assert plain.text != penalised.text
    assert plain.text == "\n\n" * 10  # the random checkpoint repeats itself under greedy


def test_allowed_tokens_processor_masks_in_one_step() -> None:
    blocked = torch.tensor([True, False, True, False])
    out = AllowedTokensLogitsProcessor(blocked)(torch.zeros(2, 1), torch.ones(2, 4))
    assert torch.equal(torch.isinf(out), blocked.expand(2, 4))


def test_english_only_samples_only_english_tier_tokens(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwen_backends.vocab import allowed_token_ids

    allowed = set(allowed_token_ids(backend.tokenizer, tier="english"))
    seen = capture_ids(backend, monkeypatch)
    result = backend.generate(
        "Hello", SamplingParams(english_only=True, top_k=0, top_p=1.0, seed=4, max_new_tokens=12)
    )
    generated = seen[0][0, result.prompt_tokens :].tolist()
    assert len(generated) == 12 and set(generated) <= allowed
    free = backend.generate("Hello", SamplingParams(top_k=0, top_p=1.0, seed=4, max_new_tokens=12))
    assert free.text != result.text
    bias = backend._english_bias()
    assert bias.shape == (151_936,) and bias is backend._english_bias()
    assert bias.dtype == torch.float32 and set(bias.unique().tolist()) == {0.0, float("-inf")}
    assert set(torch.nonzero(bias == 0).flatten().tolist()) == {i for i in allowed if i < 151_936}


# -- thinking never reaches the caller -----------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected_start"),
    [
        ([THINK, 9707, END_THINK, 271, 9707], "Hello"),  # a full block, then an answer
        ([END_THINK, 271, 9707], "Hello"),  # an orphan closing tag
    ],
)
def test_forced_thinking_is_removed_from_generate_and_stream(
    backend: HFBackend,
    monkeypatch: pytest.MonkeyPatch,
    script: list[int],
    expected_start: str,
) -> None:
    seen = capture_ids(backend, monkeypatch)
    force_tokens(backend, monkeypatch, script)
    sampling = VARIED.replace(max_new_tokens=8)
    result = backend.generate("Hi", sampling)
    raw = backend.tokenizer.decode(seen[0][0, result.prompt_tokens :])
    assert "</think>" in raw  # the model really produced thinking tags
    assert result.text.startswith(expected_start)
    assert "think>" not in result.text
    pieces = list(backend.stream("Hi", sampling))
    assert "".join(pieces) == result.text
    assert not any("think>" in piece for piece in pieces)


def test_an_answer_cut_inside_a_character_ends_at_the_last_complete_one(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Byte-level token "ä" is the raw byte 0xE4: the first of three bytes of a CJK character.
    first_byte = backend.tokenizer.convert_tokens_to_ids("ä")
    assert backend.tokenizer.decode([9707, first_byte]) == "Hello\ufffd"
    force_tokens(backend, monkeypatch, [9707, first_byte])
    sampling = VARIED.replace(max_new_tokens=2)
    result = backend.generate("Hi", sampling)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("Hello", "length", 2)
    assert "".join(backend.stream("Hi", sampling)) == "Hello"


def test_unclosed_forced_thinking_yields_nothing(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_tokens(backend, monkeypatch, [THINK, 9707])
    sampling = VARIED.replace(max_new_tokens=4)
    assert backend.generate("Hi", sampling).text == ""
    assert list(backend.stream("Hi", sampling)) == []


def test_thinking_filter_is_independent_of_how_text_is_cut() -> None:
    samples = [
        "<think>\nplan\n</think>\n\nAnswer <b>bold</b> 1 < 2",
        "before</think>  after <thin",
        "<th<think>x</think>ink>tail",
        "a <t<think>y</think>hink> b <think>never closed",
        "x<</think>/think>y",
    ]
    for text in samples:
        whole, _ = TextPipeline.whole(text, ())
        assert "<think>" not in whole and "</think>" not in whole
        for cut in range(len(text) + 1):
            for second in range(cut, len(text) + 1):
                parts = ThinkingStreamFilter()
                joined = (
                    "".join(
                        parts.feed(piece) for piece in (text[:cut], text[cut:second], text[second:])
                    )
                    + parts.flush()
                )
                assert joined == whole, (text, cut, second)
    assert TextPipeline.whole("<think>\nplan\n</think>\n\nAnswer", ())[0] == "Answer"
    assert TextPipeline.whole("Answer. stop here", ("stop",)) == ("Answer. ", True)


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(seed=21, max_new_tokens=8),
        VARIED,
    ],
)
def test_stream_equals_generate(backend: HFBackend, sampling: SamplingParams) -> None:
    pieces = list(backend.stream("Write a poem", sampling))
    assert len(pieces) > 1
    assert "".join(pieces) == backend.generate("Write a poem", sampling).text


def test_stream_honours_stop_strings(backend: HFBackend) -> None:
    sampling = VARIED
    stop = _middle(backend.generate("Hello", sampling).text)
    stopped = sampling.replace(stop=[stop])
    assert "".join(backend.stream("Hello", stopped)) == backend.generate("Hello", stopped).text


def test_closing_a_stream_stops_generation(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = force_tokens(backend, monkeypatch, [])
    stream = backend.stream("Hello", SamplingParams(seed=1, max_new_tokens=500))
    next(iter(stream))
    assert backend._guard.busy
    stream.close()  # type: ignore[attr-defined]
    assert not backend._guard.busy
    assert len(steps) < 50  # the worker stopped long before max_new_tokens
    assert backend.generate("Hello", SamplingParams(seed=1, max_new_tokens=2)).text


def test_context_overflow_is_refused_before_generating(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoding must not start")

    monkeypatch.setattr(hf_module, "decode", never)
    too_many = SamplingParams(max_new_tokens=32_760)
    with pytest.raises(ContextLengthError, match=r"13 tokens .* 32,773 exceeds .* QWEN_HF__YARN"):
        backend.generate("Hello", too_many)
    with pytest.raises(ContextLengthError):
        backend.stream("Hello", too_many)  # at the call, not at the first next()
    with pytest.raises(ContextLengthError):
        backend.generate_batch(["Hi", "Hello"], too_many)


# -- batching and the lock -------------------------------------------------------------------------


@pytest.mark.parametrize("presence_penalty", [0.0, 2.0])
def test_batch_equals_one_by_one_under_greedy(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch, presence_penalty: float
) -> None:
    conversations: list[Any] = [
        "Hi",
        "What is the capital of France? Answer in one word.",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to 3"}],
    ]
    sampling = VARIED.replace(max_new_tokens=8, presence_penalty=presence_penalty)
    one_by_one = [backend.generate(messages, sampling) for messages in conversations]
    calls = capture_ids(backend, monkeypatch)
    batched = backend.generate_batch(conversations, sampling)
    assert len(calls) == 1  # one decode call: one forward per step for all rows
    assert [_without_time(g) for g in batched] == [_without_time(g) for g in one_by_one]
    assert len({g.prompt_tokens for g in batched}) > 1  # left padding is exercised


def test_batch_counts_rows_that_end_early(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_tokens(backend, monkeypatch, [9707, 151645])  # every row: "Hello", end of turn
    results = backend.generate_batch(["Hi", "Hello there"], SamplingParams(max_new_tokens=6))
    assert [(g.text, g.finish_reason, g.completion_tokens) for g in results] == [
        ("Hello", "stop", 2),
        ("Hello", "stop", 2),
    ]


def test_one_generation_at_a_time(backend: HFBackend) -> None:
    stream = iter(backend.stream("Hello", VARIED))
    next(stream)
    with pytest.raises(GenerationError, match="close"):
        backend.generate("Hello", SamplingParams(**SHORT))  # same thread, stream still open
    results: list[str] = []
    other = threading.Thread(
        target=lambda: results.append(backend.generate("Hi", SamplingParams(**SHORT)).text)
    )
    other.start()
    other.join(timeout=0.5)
    assert other.is_alive()  # waits for the stream to finish
    rest = list(stream)
    assert isinstance(rest, list)
    other.join(timeout=60)
    assert not other.is_alive() and len(results) == 1


def test_runtime_failures_become_generation_errors(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        streamer = kwargs.get("streamer")
        if streamer is not None:  # some tokens reached the stream before the failure
            streamer.put(kwargs["input_ids"])  # the prompt comes first, as from generate
            for token in backend.tokenizer("partial ", add_special_tokens=False)["input_ids"]:
                streamer.put(torch.tensor([token]))
        raise RuntimeError("CUDA error: device-side assert triggered\nmore detail")

    monkeypatch.setattr(hf_module, "decode", failing)
    with pytest.raises(GenerationError, match="generation failed: CUDA error") as caught:
        backend.generate("Hi", SamplingParams(**SHORT))
    assert isinstance(caught.value.__cause__, RuntimeError)
    received: list[str] = []
    with pytest.raises(GenerationError) as streamed:
        for piece in backend.stream("Hi", SamplingParams(**SHORT)):
            received.append(piece)
    assert "".join(received) == "partial " and streamed.value.partial_text == "partial "
    assert not backend._guard.busy


def test_closed_backend_refuses_work(isolated: None, backend: HFBackend) -> None:
    class Preloaded(HFBackend):
        def _load(self) -> None:
            self.model, self.tokenizer = backend.model, backend.tokenizer

    other = Preloaded(backend.settings)
    open_stream = iter(other.stream("Hi", VARIED))
    first = next(open_stream)
    other.close()  # same thread as the open stream: no deadlock, the stream still completes
    other.close()
    assert first + "".join(open_stream) == backend.generate("Hi", VARIED).text
    with pytest.raises(GenerationError, match="closed"):
        other.generate("Hi")


def _middle(text: str) -> str:
    """Three characters from the middle of ``text``: a stop string the model will produce."""
    assert len(text) > 12
    return text[len(text) // 2 : len(text) // 2 + 3]


def _without_time(generation: Any) -> Any:
    """The answer without what depends on timing and on the prompt cache's state."""
    from dataclasses import replace

    return replace(generation, seconds=0.0, cached_tokens=0)


# -- local checkpoints that cannot load say what is wrong with them (issue 13) -----------------


def _damaged_copy(source: Path, target: Path, damage: dict[str, bytes | None]) -> Path:
    """``source`` linked file by file into ``target``, with ``damage`` replacing (or, for
    ``None``, removing) some files."""
    target.mkdir()
    for file in source.iterdir():
        if file.name not in damage:
            (target / file.name).symlink_to(file)
    for name, content in damage.items():
        if content is not None:
            (target / name).write_bytes(content)
    return target


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ({"config.json": None}, r"holds no model \(no config\.json\)"),
        ("truncated-config", "config.json is damaged or truncated"),
        ("truncated-weights", r"are damaged or truncated \(Error while deserializing header"),
        ({"model.safetensors": b"\x00" * 8 + b"not a header"}, "weights in .* are damaged"),
        ({"model.safetensors": None}, "has no weight files"),
    ],
)
def test_damaged_local_checkpoint_names_the_problem(
    isolated: None, tiny_model_dir: Path, tmp_path: Path, damage: Any, fragment: str
) -> None:
    if damage == "truncated-config":
        damage = {"config.json": (tiny_model_dir / "config.json").read_bytes()[:100]}
    elif damage == "truncated-weights":
        damage = {"model.safetensors": (tiny_model_dir / "model.safetensors").read_bytes()[:1000]}
    model = _damaged_copy(tiny_model_dir, tmp_path / "model", damage)
    with pytest.raises(ModelNotFoundError) as caught:
        create_backend(backend="hf", model=str(model))
    message = str(caught.value)
    assert re.search(fragment, message), message
    assert "\n" not in message
    for wrong_hint in ("hf download", "trust_remote_code", "TRUST_REMOTE_CODE", "hub id or"):
        assert wrong_hint not in message


def test_empty_directory_is_not_a_tokenizer_complaint(isolated: None, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        create_backend(backend="hf", model=str(tmp_path))
    assert "holds no model (no config.json)" in str(caught.value)
    assert "Couldn't instantiate" not in str(caught.value)


def test_unreadable_weights_say_permissions(tmp_path: Path) -> None:
    from qwen_backends.backends.transformers_loading import local_load_error

    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"")
    denied = PermissionError(13, "Permission denied", str(tmp_path / "model.safetensors"))
    message = str(local_load_error(tmp_path, denied))
    assert message == (
        f"cannot read {tmp_path / 'model.safetensors'} (Permission denied); check the "
        f"permissions of the model directory {tmp_path}"
    )


# -- the three Qwen3-4B releases ----------------------------------------------------------------

#: Non-thinking prompt ids of the single user message ``hi``, per template.
HI_HYBRID = [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, THINK, 271, END_THINK, 271]
HI_INSTRUCT = HI_HYBRID[:9]


@pytest.mark.parametrize(
    ("template", "mode", "ids"),
    [
        ("hybrid", TemplateMode.HYBRID, HI_HYBRID),
        ("instruct-2507", TemplateMode.NON_THINKING, HI_INSTRUCT),
    ],
)
def test_hybrid_and_instruct_2507_checkpoints_generate_non_thinking(
    isolated: None, template: str, mode: TemplateMode, ids: list[int]
) -> None:
    directory = tiny_checkpoint("tiny", template=template)
    with create_backend(backend="hf", model=str(directory)) as instance:
        assert instance.template_mode() is mode
        assert instance.prompt_ids("hi") == ids
        assert instance.count_prompt_tokens("hi") == len(ids)
        generation = instance.generate("hi", VARIED)
        assert generation.prompt_tokens == len(ids)
        assert generation.completion_tokens == 12 and generation.text
        assert "".join(instance.stream("hi", VARIED)) == generation.text


def test_thinking_2507_is_refused_before_the_weights_load(
    isolated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tiny_checkpoint("tiny", template="thinking-2507")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    raw = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, enable_thinking=False
    )
    raw_ids = raw["input_ids"] if isinstance(raw, Mapping) else raw
    assert list(raw_ids) == [*HI_INSTRUCT, THINK, 198]  # the template opens <think>\n regardless

    from transformers import AutoModelForCausalLM

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were loaded for a thinking-only model")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(ThinkingModeError) as caught:
        create_backend(backend="hf", model=str(directory))
    message = str(caught.value)
    assert "\n" not in message
    assert "thinking-only" in message and "Qwen/Qwen3-4B-Instruct-2507" in message
    with pytest.raises(ThinkingModeError):
        render_prompt_ids(tokenizer, "hi")


def _damaged_copy(tmp_path: Path, remove: str, add: dict[str, bytes]) -> str:
    import shutil

    from qwen_backends.testing import tiny_checkpoint

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("tiny"), folder)
    for path in folder.glob(remove):
        path.unlink()
    for name, data in add.items():
        (folder / name).write_bytes(data)
    return str(folder)


def test_a_folder_without_tokenizer_json_is_named_as_such(tmp_path: Path) -> None:
    folder = _damaged_copy(tmp_path, "tokenizer.json", {})
    with pytest.raises(ModelNotFoundError, match=r"lacks tokenizer\.json") as caught:
        create_backend(backend="hf", model=folder)
    assert "damaged" not in str(caught.value)


def test_pickle_only_weights_are_named_not_called_damaged(tmp_path: Path) -> None:
    folder = _damaged_copy(tmp_path, "*.safetensors", {"pytorch_model.bin": b"not a pickle"})
    with pytest.raises(ModelNotFoundError, match="only pickle weights") as caught:
        create_backend(backend="hf", model=folder)
    assert "damaged" not in str(caught.value) and "safe_serialization=True" in str(caught.value)
