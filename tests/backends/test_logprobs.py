"""Per-token log-probabilities: the same number on every in-process runtime for the same weights.

The number is the log-softmax of the model's raw logits at each step (before temperature,
penalties, top-k/top-p/min-p and masks). hf, llama.cpp (an f32 GGUF of the same checkpoint) and
mlx-lm (the same safetensors) must agree within 1e-3 on the tiny checkpoint. ``hf-generate`` is
the hf backend decoding through ``model.generate`` (``own_decode_loop = False``), the path the
Unsloth backend takes on a GPU: its log-probabilities come from generate's ``output_logits``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qwen_backends import create_backend
from qwen_backends.backends.base import ModelBackend
from qwen_backends.backends.hf import HFBackend
from qwen_backends.results import Generation
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings
from qwen_backends.testing import tiny_checkpoint, tiny_gguf

GREEDY = SamplingParams.preset("greedy", max_new_tokens=8, logprobs=True, top_logprobs=5)
#: Penalties, a hot temperature and a narrow top-k change what is drawn, not what is reported.
SHAPED = SamplingParams(
    temperature=1.7,
    top_k=3,
    top_p=0.9,
    presence_penalty=1.5,
    repetition_penalty=1.3,
    seed=5,
    max_new_tokens=8,
    logprobs=True,
    top_logprobs=3,
)
TOLERANCE = 1e-3


class GenerateLoopBackend(HFBackend):
    """The hf backend through ``model.generate``, as the Unsloth backend decodes."""

    own_decode_loop = False


def _build(name: str) -> ModelBackend:
    if name == "hf":
        return create_backend(backend="hf", model=str(tiny_checkpoint("tiny")))
    if name == "hf-generate":
        return GenerateLoopBackend(Settings(model=str(tiny_checkpoint("tiny"))))
    if name == "llamacpp":
        pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
        options = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 1024}
        return create_backend(backend="llamacpp", model=str(tiny_gguf("f32")), llamacpp=options)
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    return create_backend(backend="mlx", model=str(tiny_checkpoint("tiny")))


@pytest.fixture(scope="module", params=["hf", "hf-generate", "llamacpp", "mlx"])
def backend(request: pytest.FixtureRequest) -> Iterator[ModelBackend]:
    with _build(request.param) as built:
        yield built


@pytest.fixture(scope="module")
def reference() -> Iterator[ModelBackend]:
    with _build("hf") as built:
        yield built


def _entries(generation: Generation) -> list[Any]:
    assert generation.logprobs is not None
    assert len(generation.logprobs) == generation.completion_tokens
    return list(generation.logprobs)


def test_greedy_tokens_are_the_most_likely_and_agree_with_hf(
    backend: ModelBackend, reference: ModelBackend
) -> None:
    answer = backend.generate("Hi", GREEDY)
    expected = reference.generate("Hi", GREEDY)
    mine, theirs = _entries(answer), _entries(expected)
    assert [e.id for e in mine] == [e.id for e in theirs]
    for entry, other in zip(mine, theirs, strict=True):
        assert entry.logprob <= 0 and len(entry.top) == 5
        assert entry.top[0].id == entry.id and entry.top[0].logprob == entry.logprob
        assert [t.logprob for t in entry.top] == sorted(
            (t.logprob for t in entry.top), reverse=True
        )
        assert entry.logprob == pytest.approx(other.logprob, abs=TOLERANCE)
        assert [t.logprob for t in entry.top] == pytest.approx(
            [t.logprob for t in other.top], abs=TOLERANCE
        )


def test_the_number_is_taken_before_sampling_and_penalties(
    backend: ModelBackend, reference: ModelBackend
) -> None:
    """Force the drawn tokens on the reference through a greedy continuation: the logprob of each
    token is then the same whatever sampling drew it."""
    answer = backend.generate("Hi", SHAPED)
    entries = _entries(answer)
    assert all(len(entry.top) == 3 for entry in entries)
    # The reference scores each drawn token given the same prefix, with plain greedy settings.
    prompt = reference.prompt_ids("Hi")
    hf = reference  # the hf backend exposes its model: one forward pass over prompt + answer
    import torch

    ids = torch.tensor([[*prompt, *(e.id for e in entries)]])
    with torch.inference_mode():
        logits = hf.model(input_ids=ids).logits[0].float()  # type: ignore[attr-defined]
    logprobs = torch.log_softmax(logits, dim=-1)
    for position, entry in enumerate(entries):
        row = logprobs[len(prompt) - 1 + position]
        assert entry.logprob == pytest.approx(float(row[entry.id]), abs=TOLERANCE)
        best = torch.topk(row, 3)
        assert [t.logprob for t in entry.top] == pytest.approx(best.values.tolist(), abs=TOLERANCE)


def test_stream_and_generate_report_the_same_logprobs(backend: ModelBackend) -> None:
    answer = backend.generate("Hi", SHAPED)
    stream = backend.stream("Hi", SHAPED)
    text = "".join(stream)
    assert stream.generation is not None and text == answer.text
    assert stream.generation.logprobs == answer.logprobs


def test_batched_answers_carry_their_own_logprobs(backend: ModelBackend) -> None:
    single = [backend.generate(prompt, GREEDY) for prompt in ("Hi", "Name a colour.")]
    batch = backend.generate_batch(["Hi", "Name a colour."], GREEDY)
    for one, together in zip(single, batch, strict=True):
        assert [e.id for e in _entries(together)] == [e.id for e in _entries(one)]
        assert [e.logprob for e in _entries(together)] == pytest.approx(
            [e.logprob for e in _entries(one)], abs=TOLERANCE
        )


def test_logprobs_off_reports_none(backend: ModelBackend) -> None:
    assert backend.generate("Hi", GREEDY.replace(logprobs=False, top_logprobs=0)).logprobs is None
