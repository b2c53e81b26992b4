"""The hf backend's own decode loop (backends.transformers_decode) against ``model.generate``.

The loop must give exactly the tokens transformers' ``generate`` gives with the same keyword
arguments: greedy and seeded sampling, left-padded batches, the repetition penalty, rows that
end early, stopping criteria and the streamer protocol. Also the block search it uses for top-k
and argmax (backends.transformers_sampling.top_logits / greedy_tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessorList

from qwen_backends.backends import hf as hf_module
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.transformers_decode import DecodeSteps, decode
from qwen_backends.backends.transformers_sampling import (
    BLOCK,
    PresencePenaltyLogitsProcessor,
    TokenSampler,
    generation_config_for,
    greedy_tokens,
    top_logits,
)
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings

EOS = (151645, 151643)
PAD = 151643


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Iterator[Any]:
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    yield loaded


def prompts(*rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for ``rows``."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def greedy_decode(model: Any, rows: tuple[list[int], ...], limit: int, **extra: Any) -> Any:
    """``decode`` with greedy settings over left-padded ``rows``; ``extra`` goes to decode."""
    ids, mask = prompts(*rows)
    config = generation_config_for(
        SamplingParams.preset("greedy", max_new_tokens=limit), eos_token_ids=EOS, pad_token_id=PAD
    )
    with torch.inference_mode():
        return decode(model, input_ids=ids, attention_mask=mask, generation_config=config, **extra)


SHORT = [151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]
LONG = [151644, 872, 198, *range(1000, 1012), 151645, 198, 151644, 77091, 198]


def both(model: Any, sampling: SamplingParams, rows: tuple[list[int], ...], **extra: Any) -> Any:
    """(decode's output, generate's output) for the same kwargs and seed."""
    ids, mask = prompts(*rows)

    def kwargs() -> dict[str, Any]:
        processors: list[Any] = [*extra.get("processors", [])]
        sampler = TokenSampler.for_sampling(sampling)
        if sampler is not None:
            processors.append(sampler)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "generation_config": generation_config_for(
                sampling, eos_token_ids=EOS, pad_token_id=PAD, native_sampling=False
            ),
            "logits_processor": LogitsProcessorList(processors),
            **({"stopping_criteria": extra["criteria"]} if "criteria" in extra else {}),
        }

    outputs = []
    for run in (lambda: decode(model, **kwargs()), lambda: model.generate(**kwargs())):
        torch.manual_seed(7)
        with torch.inference_mode():
            outputs.append(run())
    return outputs


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams.preset("greedy", max_new_tokens=12),
        SamplingParams(seed=1, max_new_tokens=12),
        SamplingParams(top_k=0, top_p=0.9, min_p=0.05, max_new_tokens=12),
        SamplingParams(repetition_penalty=1.3, max_new_tokens=12),
        SamplingParams.preset("greedy", repetition_penalty=1.5, max_new_tokens=12),
    ],
)
def test_same_tokens_as_generate_alone_and_in_padded_batches(
    model: Any, sampling: SamplingParams
) -> None:
    for rows in ((SHORT,), (SHORT, LONG), (LONG, SHORT, LONG[3:])):
        own, reference = both(model, sampling, rows)
        assert own.shape == reference.shape
        assert torch.equal(own, reference), rows


def test_processors_run_in_generate_order(model: Any) -> None:
    sampling = SamplingParams(seed=1, presence_penalty=1.5, repetition_penalty=1.2)
    prompt_width = len(LONG)
    processors = [PresencePenaltyLogitsProcessor(1.5, prompt_width)]
    own, reference = both(
        model, sampling.replace(max_new_tokens=16), (LONG,), processors=processors
    )
    assert torch.equal(own, reference)
    config = generation_config_for(
        sampling, eos_token_ids=EOS, pad_token_id=PAD, native_sampling=False
    )
    sampler = TokenSampler.for_sampling(sampling)
    assert DecodeSteps(config, [*processors, sampler]).names() == [
        "RepetitionPenaltyLogitsProcessor",
        "PresencePenaltyLogitsProcessor",
        "TokenSampler",
    ]


def test_rows_that_end_early_are_padded_and_the_loop_stops_when_all_end(model: Any) -> None:
    class EndAt:
        """Force the end-of-turn token at a row's ``step``-th new token."""

        def __init__(self, width: int, steps: list[int]) -> None:
            self.width, self.steps = width, steps

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - self.width
            scores = scores.clone()
            for row, end in enumerate(self.steps):
                if step == end:
                    scores[row, EOS[0]] = 1e4
            return scores

    width = len(LONG)
    out = greedy_decode(model, (SHORT, LONG), 20, logits_processor=[EndAt(width, [2, 5])])
    new = out[:, width:].tolist()
    assert len(new[0]) == 6  # ended when the last row did, not at max_new_tokens
    assert new[0][2] == EOS[0] and new[0][3:] == [PAD] * 3
    assert new[1][5] == EOS[0] and PAD not in new[1][:5]


def test_stopping_criteria_end_rows_and_the_streamer_gets_every_step(model: Any) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.puts: list[list[int]] = []
            self.ended = 0

        def put(self, value: torch.Tensor) -> None:
            self.puts.append(value.flatten().tolist())

        def end(self) -> None:
            self.ended += 1

    def after_four(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = input_ids.shape[1] - len(SHORT) >= 4
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    streamer = Recorder()
    out = greedy_decode(model, (SHORT,), 30, stopping_criteria=[after_four], streamer=streamer)
    assert out.shape[1] == len(SHORT) + 4
    assert streamer.puts[0] == SHORT  # the prompt first, as generate does
    assert [put[0] for put in streamer.puts[1:]] == out[0, len(SHORT) :].tolist()
    assert streamer.ended == 1


def test_a_sampling_config_and_missing_limits_are_refused(model: Any) -> None:
    ids, mask = prompts(SHORT)
    native = generation_config_for(SamplingParams(), eos_token_ids=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="TokenSampler"):
        decode(model, input_ids=ids, attention_mask=mask, generation_config=native)
    no_pad = GenerationConfig(max_new_tokens=4, eos_token_id=list(EOS))
    with pytest.raises(ValueError, match="pad_token_id"):
        decode(model, input_ids=ids, attention_mask=mask, generation_config=no_pad)


def test_a_subclass_can_decode_with_model_generate(tiny_model_dir: Path) -> None:
    """``own_decode_loop = False`` (the Unsloth backend) sends decoding through generate."""

    class ThroughGenerate(HFBackend):
        own_decode_loop = False

    backend = ThroughGenerate(Settings(model=str(tiny_model_dir)))
    calls: list[str] = []
    original = backend.model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        calls.append("generate")
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend.model, "generate", generate)
        patch.setattr(hf_module, "decode", lambda *a, **k: pytest.fail("decode ran"))
        sampling = SamplingParams(seed=4, max_new_tokens=6)
        through_generate = backend.generate("Hi", sampling)
    assert calls == ["generate"]
    with HFBackend(Settings(model=str(tiny_model_dir))) as own:
        assert own.generate("Hi", sampling).text == through_generate.text
    backend.close()


# -- the block search -----------------------------------------------------------------------------


def test_top_logits_are_topks_values() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, BLOCK * 300, generator=generator)
    scores[1, :] = scores[1, :].round()  # many ties
    scores[2, BLOCK * 7 : BLOCK * 7 + 30] = 50.0  # every top value in one block
    for count in (1, 21, 64):
        values, indices = top_logits(scores, count)
        expected = torch.topk(scores, count).values
        assert torch.equal(values, expected)
        assert torch.equal(scores.gather(1, indices), values)
        assert all(len(set(row)) == count for row in indices.tolist())


def test_top_logits_with_infinities_and_awkward_sizes() -> None:
    scores = torch.full((1, BLOCK * 200), float("-inf"))
    scores[0, [5, BLOCK * 150 + 3]] = torch.tensor([1.0, 2.0])
    values, indices = top_logits(scores, 4)
    assert values[0, :2].tolist() == [2.0, 1.0] and indices[0, :2].tolist() == [BLOCK * 150 + 3, 5]
    assert torch.isinf(values[0, 2:]).all()
    odd = torch.randn(2, BLOCK * 200 + 5)  # not a whole number of blocks: torch.topk itself
    assert torch.equal(top_logits(odd, 8).values, torch.topk(odd, 8).values)


def test_greedy_tokens_are_argmax_including_ties() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(4, BLOCK * 50, generator=generator)
    scores[1, [BLOCK * 3 + 9, BLOCK * 3 + 2, BLOCK * 40]] = 99.0  # the first of three ties
    scores[2, :] = 0.0
    scores[3, BLOCK * 49 + BLOCK - 1] = 99.0  # the very last position
    assert torch.equal(greedy_tokens(scores), scores.argmax(dim=-1))
    assert greedy_tokens(scores)[1].item() == BLOCK * 3 + 2
    odd = torch.randn(2, BLOCK * 5 + 1)
    assert torch.equal(greedy_tokens(odd), odd.argmax(dim=-1))
