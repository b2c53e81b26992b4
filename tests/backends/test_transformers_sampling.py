"""The hf path's sampler, english_only bias and stop strings (backends.transformers_sampling).

The sampler must draw from exactly the distribution transformers' own warpers define; it is checked
two ways: its candidate probabilities against the warpers' softmax, and many seeded draws against
those probabilities (a chi-square bound at p ~ 1e-6, deterministic because the seed is fixed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from isolation import isolated_in
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qwen_backends import create_backend
from qwen_backends.backends import hf as hf_module
from qwen_backends.backends import transformers_sampling
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.transformers_decode import DecodeSteps
from qwen_backends.backends.transformers_sampling import (
    AllowedTokensLogitsProcessor,
    PresencePenaltyLogitsProcessor,
    StopStringCriterion,
    TokenSampler,
    english_bias,
    generation_config_for,
)
from qwen_backends.sampling import SamplingParams

#: (temperature, top_k, top_p, min_p)
SETTINGS = [
    pytest.param((0.7, 20, 0.8, 0.0), id="qwen-defaults"),
    pytest.param((1.0, 0, 1.0, 0.0), id="top_k=0,top_p=1"),
    pytest.param((0.7, 0, 0.8, 0.0), id="top_k=0,top_p=0.8"),
    pytest.param((1.0, 0, 1.0, 0.1), id="min_p-only"),
    pytest.param((1.3, 50, 0.95, 0.05), id="all-four"),
    pytest.param((0.7, 20, 1.0, 0.0), id="top_k-only"),
    pytest.param((0.02, 20, 0.8, 0.0), id="temperature-near-0"),
    pytest.param((0.02, 0, 1.0, 0.0), id="temperature-near-0,full-vocab"),
]


def stock_probabilities(scores: torch.Tensor, setting: tuple[float, int, float, float]) -> Any:
    """What transformers' warpers (as generate builds them for do_sample) give each token."""
    temperature, top_k, top_p, min_p = setting
    warpers: list[Any] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    warpers.append(MinPLogitsWarper(min_p))  # generate adds it even for 0
    return torch.softmax(LogitsProcessorList(warpers)(None, scores), dim=-1)  # type: ignore[arg-type]


def sampler_probabilities(sampler: TokenSampler, scores: torch.Tensor) -> torch.Tensor:
    indices, weights = sampler.candidates(scores)
    weights = weights.double() / weights.double().sum(dim=-1, keepdim=True)
    if indices is None:
        return weights.float()
    return torch.zeros_like(scores).scatter_(1, indices, weights.float())


def fixed_logits(vocab: int = 300, seed: int = 0) -> torch.Tensor:
    """Two rows: one peaked (a few likely tokens), one flat (the nucleus needs many tokens).

    The peaked row's top two logits differ by 0.02, so at temperature 0.02 the draw is still a
    real 73/27 choice.
    """
    generator = torch.Generator().manual_seed(seed)
    peaked = torch.randn(vocab, generator=generator) * 3.0
    top = int(peaked.argmax())
    second = int(peaked.masked_fill(torch.arange(vocab) == top, -1e9).argmax())
    peaked[second] = peaked[top] - 0.02
    flat = torch.randn(vocab, generator=generator) * 0.3
    return torch.stack([peaked, flat])


def chi_square_bound(df: int) -> float:
    """Upper 1e-6 quantile of chi-square(df) (Wilson-Hilferty)."""
    z = 4.753
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor, draws: int) -> tuple[float, int]:
    """Pearson's statistic with categories of expected count < 5 pooled; returns (stat, df)."""
    expected = probs.double() * draws
    observed = counts.double()
    big = expected >= 5
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    obs = torch.cat([observed[big], observed[~big].sum().reshape(1)])
    keep = exp > 0
    stat = float((((obs - exp) ** 2)[keep] / exp[keep]).sum())
    return stat, max(int(keep.sum()) - 1, 1)


def draw_counts(sampler: TokenSampler, row: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """Counts of ``draws`` samples from one row of logits (drawn as batches of identical rows)."""
    counts = torch.zeros(row.shape[-1], dtype=torch.long)
    torch.manual_seed(seed)
    batch = row.expand(2_000, -1)
    for _ in range(draws // 2_000):
        counts += torch.bincount(sampler.sample(batch), minlength=row.shape[-1])
    return counts


# -- the distribution ------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("probe", [256, 8])  # 8: top_k=0 nuclei that need the full sort
def test_candidates_are_the_stock_warpers_distribution(
    setting: tuple[float, int, float, float], probe: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transformers_sampling, "NUCLEUS_PROBE", probe)
    scores = fixed_logits()
    expected = stock_probabilities(scores, setting)
    got = sampler_probabilities(TokenSampler(*setting), scores)
    assert torch.equal(got > 0, expected > 0)  # the same tokens survive every filter
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


def test_candidates_on_qwen_sized_vocabulary() -> None:
    scores = torch.randn(2, 151_936, generator=torch.Generator().manual_seed(3)) * 4
    for setting in [(0.7, 20, 0.8, 0.0), (0.7, 0, 0.8, 0.0), (1.0, 0, 1.0, 0.05)]:
        got = sampler_probabilities(TokenSampler(*setting), scores)
        assert torch.allclose(got, stock_probabilities(scores, setting), atol=1e-6, rtol=1e-4)


def test_ties_at_the_kth_value_keep_every_tied_token_like_transformers() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, 1.0, 0.0, -1.0]])
    expected = stock_probabilities(scores, (1.0, 3, 1.0, 0.0))
    assert int((expected > 0).sum()) == 5  # transformers keeps all three tied at the 3rd value
    got = sampler_probabilities(TokenSampler(1.0, 3, 1.0, 0.0), scores)
    assert torch.allclose(got, expected, atol=1e-7)


def test_fewer_finite_logits_than_top_k() -> None:
    scores = torch.full((1, 50), float("-inf"))
    scores[0, [3, 7, 11]] = torch.tensor([1.0, 2.0, 0.5])
    got = sampler_probabilities(TokenSampler(0.7, 20, 0.9, 0.0), scores)
    assert torch.allclose(got, stock_probabilities(scores, (0.7, 20, 0.9, 0.0)), atol=1e-7)
    torch.manual_seed(0)
    drawn = TokenSampler(0.7, 20, 0.9, 0.0).sample(scores.expand(500, -1))
    assert set(drawn.tolist()) <= {3, 7}  # 11 is outside the nucleus, -inf never drawn


@pytest.mark.parametrize("setting", SETTINGS)
def test_draws_follow_the_stock_distribution(
    setting: tuple[float, int, float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transformers_sampling, "NUCLEUS_PROBE", 8)
    scores = fixed_logits()
    expected = stock_probabilities(scores, setting)
    sampler = TokenSampler(*setting)
    draws = 40_000
    for row in range(scores.shape[0]):
        counts = draw_counts(sampler, scores[row], draws, seed=row)
        assert int(counts[expected[row] == 0].sum()) == 0  # never a filtered-out token
        stat, df = chi_square(counts, expected[row], draws)
        assert stat < chi_square_bound(df), (row, stat, df)


def test_the_chi_square_check_rejects_a_wrong_distribution() -> None:
    """The bound has power: draws at temperature 0.7 are rejected against temperature 1.0."""
    scores = fixed_logits()
    counts = draw_counts(TokenSampler(0.7, 20, 1.0, 0.0), scores[0], 40_000, seed=0)
    wrong = stock_probabilities(scores, (1.0, 20, 1.0, 0.0))[0]
    stat, df = chi_square(counts, wrong, 40_000)
    assert stat > chi_square_bound(df)


def test_rows_of_a_batch_are_drawn_independently_from_their_own_logits() -> None:
    scores = fixed_logits()
    sampler = TokenSampler(0.7, 20, 0.8, 0.0)
    batch = scores.repeat(1_000, 1)  # alternating peaked / flat rows
    torch.manual_seed(5)
    drawn = sampler.sample(batch)
    expected = stock_probabilities(scores, (0.7, 20, 0.8, 0.0))
    for row in range(2):
        assert bool((expected[row, drawn[row::2]] > 0).all())
    assert len(set(drawn[0::2].tolist()) & set(drawn[1::2].tolist())) <= 2


def test_seeded_draws_repeat_and_the_processor_leaves_one_token() -> None:
    scores = fixed_logits()
    sampler = TokenSampler(0.7, 20, 0.8, 0.0)
    torch.manual_seed(11)
    first = sampler.sample(scores.repeat(50, 1))
    torch.manual_seed(11)
    assert torch.equal(first, sampler.sample(scores.repeat(50, 1)))
    torch.manual_seed(11)
    out = sampler(torch.zeros(2, 1, dtype=torch.long), scores)  # type: ignore[arg-type]
    assert out.shape == scores.shape
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1]
    assert out.argmax(dim=-1).tolist() == first[:2].tolist()


def test_the_draw_never_picks_a_zero_weight_token_at_the_edges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights = torch.tensor([[0.0, 0.3, 0.7, 0.0, 0.0], [0.0, 1e-30, 0.0, 0.0, 0.0]])

    def uniform(value: float) -> Any:
        return lambda shape, dtype, device: torch.full(shape, value, dtype=dtype, device=device)

    monkeypatch.setattr(torch, "rand", uniform(1 - 2**-53))  # rounds up to the total
    assert transformers_sampling._draw(weights).tolist() == [2, 1]
    monkeypatch.setattr(torch, "rand", uniform(0.0))
    assert transformers_sampling._draw(weights).tolist() == [1, 1]


def test_neutral_values_skip_every_filter() -> None:
    scores = fixed_logits()
    indices, weights = TokenSampler(1.0, 0, 1.0, 0.0).candidates(scores)
    assert indices is None and torch.equal(weights, torch.softmax(scores, dim=-1))
    assert TokenSampler.for_sampling(SamplingParams.preset("greedy")) is None


# -- the other processors ------------------------------------------------------------------------


def test_english_bias_is_added_and_accepts_a_boolean_mask() -> None:
    blocked = torch.tensor([True, False, True, False])
    bias = english_bias(blocked)
    assert bias.dtype == torch.float32 and bias.tolist() == [-math.inf, 0.0, -math.inf, 0.0]
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    for processor in (AllowedTokensLogitsProcessor(bias), AllowedTokensLogitsProcessor(blocked)):
        out = processor(torch.zeros(1, 1, dtype=torch.long), scores)  # type: ignore[arg-type]
        assert out.tolist() == [[-math.inf, 2.0, -math.inf, 4.0]]
    assert scores.tolist() == [[1.0, 2.0, 3.0, 4.0]]  # a new tensor, the input is untouched


def test_presence_penalty_counts_each_generated_token_once() -> None:
    scores = torch.arange(10, dtype=torch.float32).repeat(2, 1)
    input_ids = torch.tensor([[1, 2, 5, 5, 7], [3, 3, 9, 9, 9]])
    out = PresencePenaltyLogitsProcessor(1.5, prompt_length=2)(input_ids, scores)  # type: ignore[arg-type]
    expected = scores.clone()
    expected[0, [5, 7]] -= 1.5
    expected[1, 9] -= 1.5
    assert torch.equal(out, expected)


def decode_bytes(ids: list[int]) -> str:
    """A byte tokenizer: id = byte value, 300 = a special token that decodes to nothing."""
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_stop_string_criterion_matches_only_within_the_new_tokens() -> None:
    stops = ["END", "wört", "x" * 30]
    criterion = StopStringCriterion(decode_bytes, stops, prompt_length=3)
    assert criterion.window == 30 + StopStringCriterion.MARGIN

    def run(prompt: bytes, new: bytes | list[int]) -> list[bool]:
        ids = [*prompt, *new]
        return criterion(torch.tensor([ids]), torch.zeros(1, 1)).tolist()  # type: ignore[arg-type]

    assert run(b"END", b"abc") == [False]  # a stop string in the prompt does not count
    assert run(b"abc", b"the END") == [True]
    assert run(b"abc", "ein wört".encode()) == [True]  # multi-byte characters
    assert run(b"abc", "ein wör".encode()) == [False]
    assert run(b"abc", [69, 78, 300, 68]) == [True]  # a special token in between decodes to ""
    assert run(b"abc", b"y" * 200 + b"x" * 30) == [True]  # only the tail is decoded
    assert run(b"abc", b"") == [False]
    batch = torch.tensor([[*b"abcEND"], [*b"abcENX"]])
    assert criterion(batch, torch.zeros(2, 1)).tolist() == [True, False]  # type: ignore[arg-type]


def test_a_thousand_stop_strings_build_nothing() -> None:
    stops = [f"stop-{i}-marker" for i in range(1_000)]
    criterion = StopStringCriterion(decode_bytes, stops, prompt_length=0)
    ids = torch.tensor([[*b"text then stop-999-marker"]])
    assert criterion(ids, torch.zeros(1, 1)).tolist() == [True]  # type: ignore[arg-type]
    assert criterion(ids[:, :-1], torch.zeros(1, 1)).tolist() == [False]  # type: ignore[arg-type]


# -- through the backend ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[HFBackend]:
    with isolated_in(tmp_path_factory.mktemp("sampling-cwd")):
        instance = create_backend(backend="hf", model=str(tiny_model_dir))
        assert isinstance(instance, HFBackend)
        yield instance
        instance.close()


def effective_processors(backend: HFBackend, sampling: SamplingParams) -> list[str]:
    """What runs on the logits each step for the backend's kwargs: in the hf backend's decode
    loop, and in transformers' generate (the Unsloth backend's path); the two must agree."""
    kwargs = backend._generate_kwargs(sampling, prompt_length=5)
    own = DecodeSteps(kwargs["generation_config"], kwargs["logits_processor"]).names()
    config, _ = backend.model._prepare_generation_config(kwargs["generation_config"])
    processors = backend.model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=5,
        logits_processor=kwargs["logits_processor"],
        device="cpu",
    )
    assert [type(p).__name__ for p in processors] == own
    return own


def test_neutral_values_add_no_processor(backend: HFBackend) -> None:
    neutral = SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0)
    assert effective_processors(backend, neutral) == ["TokenSampler"]
    assert effective_processors(backend, SamplingParams()) == ["TokenSampler"]
    assert effective_processors(backend, SamplingParams.preset("greedy")) == []
    assert effective_processors(
        backend,
        SamplingParams(repetition_penalty=1.1, presence_penalty=0.5, english_only=True),
    ) == [
        "RepetitionPenaltyLogitsProcessor",
        "PresencePenaltyLogitsProcessor",
        "AllowedTokensLogitsProcessor",
        "TokenSampler",
    ]
    config = backend._generate_kwargs(SamplingParams(), prompt_length=5)["generation_config"]
    assert config.do_sample is False  # the sampler draws; the loop takes its choice
    native = generation_config_for(SamplingParams(), eos_token_ids=(1,), pad_token_id=0)
    assert (native.do_sample, native.top_k, native.top_p) == (True, 20, 0.8)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(seed=3, max_new_tokens=10),
        SamplingParams(seed=3, top_k=0, top_p=0.9, min_p=0.05, max_new_tokens=10),
        SamplingParams(seed=3, english_only=True, presence_penalty=1.0, max_new_tokens=10),
    ],
)
def test_seeded_generate_repeats_and_stream_equals_generate(
    backend: HFBackend, sampling: SamplingParams
) -> None:
    first = backend.generate("Write a poem", sampling)
    assert backend.generate("Write a poem", sampling).text == first.text
    assert "".join(backend.stream("Write a poem", sampling)) == first.text
    assert backend.generate("Write a poem", sampling.replace(seed=4)).text != first.text


def test_padded_sampled_batch_is_seeded_and_complete(backend: HFBackend) -> None:
    conversations: list[Any] = ["Hi", "Tell me about the history of the Roman empire, briefly."]
    sampling = SamplingParams(seed=9, max_new_tokens=6)
    first = backend.generate_batch(conversations, sampling)
    second = backend.generate_batch(conversations, sampling)
    assert [g.text for g in first] == [g.text for g in second]
    assert first[0].prompt_tokens != first[1].prompt_tokens  # left padding is exercised
    assert all(g.completion_tokens == 6 or g.finish_reason == "stop" for g in first)
    assert first[0].text != first[1].text


def test_english_only_restricts_the_top_k_sampler(backend: HFBackend) -> None:
    from qwen_backends.vocab import allowed_token_ids

    allowed = set(allowed_token_ids(backend.tokenizer, tier="english"))
    seen: list[torch.Tensor] = []
    original = hf_module.decode

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(output := original(*args, **kwargs))
        return output

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_module, "decode", recording)
        result = backend.generate(
            "Hello", SamplingParams(english_only=True, seed=2, max_new_tokens=16)
        )
    generated = seen[0][0, result.prompt_tokens :].tolist()
    assert len(generated) == 16 and set(generated) <= allowed


def test_a_thousand_stop_strings_finish_and_cut(backend: HFBackend) -> None:
    sampling = SamplingParams.preset("greedy", presence_penalty=2.0, max_new_tokens=12)
    full = backend.generate("Hello", sampling)
    middle = full.text[len(full.text) // 3 : len(full.text) // 3 + 3]
    assert middle.strip()
    stops = [f"never-seen-{i}" for i in range(999)] + [middle]
    result = backend.generate("Hello", sampling.replace(stop=stops))
    assert result.text == full.text[: full.text.index(middle)]
    assert result.finish_reason == "stop"
    assert result.completion_tokens < full.completion_tokens
    assert "".join(backend.stream("Hello", sampling.replace(stop=stops))) == result.text
