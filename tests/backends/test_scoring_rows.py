"""The runtimes' half of scoring (qwen_backends.backends.scoring_rows), through ``score()``.

The reference is transformers' full forward pass (every position's logits, log-softmax in
float32) on the same tiny checkpoint; llama.cpp (an f16 GGUF of it) and mlx-lm must agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_backends import create_backend
from qwen_backends.backends.scoring_rows import common_prefix
from qwen_backends.scoring import CHUNK_ROWS, Span

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
CHOICES = ["Four.", "It is five, I believe.", "22", "Four. Definitely four."]
GREEDY = {"temperature": 0, "max_new_tokens": 12, "presence_penalty": 2.0}
DOCUMENT = Path("/usr/share/common-licenses/Apache-2.0")


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> Iterator[Any]:
    with create_backend(backend="hf", model=str(tiny_model_dir)) as backend:
        yield backend


def full_forward(backend: Any, ids: list[int]) -> Any:
    """Log-softmax of every position's logits: the plain computation scoring must equal."""
    import torch

    with torch.inference_mode():
        logits = backend.model(torch.tensor([ids])).logits.float()
    return torch.log_softmax(logits, dim=-1)[0]


def test_hf_score_equals_the_full_forward_pass(hf: Any) -> None:
    prompt = hf.prompt_ids(QUESTION)
    # Longer than one chunk of rows, so the chunking is exercised.
    continuation = " ".join(["four"] * (CHUNK_ROWS + 20))
    ids = hf.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    assert len(ids) > CHUNK_ROWS
    score = hf.score(QUESTION, continuation)
    reference = full_forward(hf, prompt + ids)
    expected = [reference[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids)]
    assert [t.logprob for t in score.tokens] == pytest.approx(expected, abs=1e-5)
    greedy = [reference[len(prompt) - 1 + i].argmax().item() == t for i, t in enumerate(ids)]
    assert [t.greedy for t in score.tokens] == greedy


def test_hf_batch_with_a_shared_prompt_equals_single_calls(hf: Any) -> None:
    batched = hf.score_batch([(QUESTION, choice) for choice in CHOICES], top_logprobs=3)
    for choice, together in zip(CHOICES, batched, strict=True):
        alone = hf.score(QUESTION, choice, top_logprobs=3)
        assert [t.id for t in together.tokens] == [t.id for t in alone.tokens]
        assert [t.logprob for t in together.tokens] == pytest.approx(
            [t.logprob for t in alone.tokens], abs=1e-4
        )
        assert [[b.id for b in t.top] for t in together.tokens] == [
            [b.id for b in t.top] for t in alone.tokens
        ]


def test_score_text_windows_cover_the_document(hf: Any) -> None:
    text = DOCUMENT.read_text()[:1500]
    whole = hf.score_text(text)
    windowed = hf.score_text(text, window=50)
    ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [t.id for t in whole.tokens] == [t.id for t in windowed.tokens] == ids
    reference = full_forward(hf, [hf.tokenizer.eos_token_id, *ids])
    assert whole.logprob == pytest.approx(
        sum(reference[i, t].item() for i, t in enumerate(ids)), abs=1e-3
    )
    # The first window is the same computation; later ones see less context.
    assert [t.logprob for t in windowed.tokens[:50]] == pytest.approx(
        [t.logprob for t in whole.tokens[:50]], abs=1e-4
    )
    assert windowed.logprob != pytest.approx(whole.logprob, abs=1e-3)


def test_following_reports_the_next_tokens(hf: Any) -> None:
    context = hf.tokenizer("Two plus two is", add_special_tokens=False)["input_ids"]
    score = hf.score_text(" four", context=context, following=5)
    reference = full_forward(hf, [*context, *score_ids(score)])[-1]
    assert [b.id for b in score.following] == reference.topk(5).indices.tolist()
    assert score.following[0].logprob == pytest.approx(reference.max().item(), abs=1e-5)


def score_ids(score: Any) -> list[int]:
    return [token.id for token in score.tokens]


def test_common_prefix_stops_before_each_first_row() -> None:
    spans = [Span((1, 2, 3, 4, 5), 4), Span((1, 2, 3, 9), 3), Span((1, 2, 3, 4, 6), 4)]
    assert common_prefix(spans) == 2  # min(first_row) = 2
    assert common_prefix([Span((1, 2), 1), Span((5, 2), 1)]) == 0


def compare(hf: Any, other: Any, tolerance: float) -> None:
    for choice, theirs in zip(
        CHOICES, other.score_batch([(QUESTION, c) for c in CHOICES]), strict=True
    ):
        ours = hf.score(QUESTION, choice)
        assert [t.id for t in theirs.tokens] == [t.id for t in ours.tokens]
        assert [t.logprob for t in theirs.tokens] == pytest.approx(
            [t.logprob for t in ours.tokens], abs=tolerance
        )
    text = DOCUMENT.read_text()[:800]
    ours_doc, theirs_doc = hf.score_text(text, window=64), other.score_text(text, window=64)
    assert [t.logprob for t in theirs_doc.tokens] == pytest.approx(
        [t.logprob for t in ours_doc.tokens], abs=tolerance
    )


def test_llamacpp_f16_agrees_with_hf_and_generation_is_unchanged(hf: Any) -> None:
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
    from qwen_backends.testing import tiny_gguf

    options = {"n_ctx": 1024, "n_threads": 1, "n_threads_batch": 1}
    with create_backend(backend="llamacpp", model=str(tiny_gguf("f16")), llamacpp=options) as llama:
        assert llama._llama_options()["logits_all"] is False  # type: ignore[attr-defined]
        before = llama.generate(QUESTION, GREEDY).text
        # Measured: at most 4e-4 per token between the f16 GGUF and the float32 checkpoint.
        compare(hf, llama, 2e-3)
        assert llama.generate(QUESTION, GREEDY).text == before


@pytest.mark.mlx
@pytest.mark.timeout(300)
def test_mlx_agrees_with_hf(hf: Any, tiny_model_dir: Path) -> None:
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    with create_backend(backend="mlx", model=str(tiny_model_dir)) as mlx:
        compare(hf, mlx, 1e-4)
