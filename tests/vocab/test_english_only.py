"""English-only generation on the tiny random-weight checkpoint samples only allowed ids.

The checkpoint's weights are random, so unconstrained sampling wanders over the whole
vocabulary (most of it non-English); with ``english_only`` every generated id must lie in
:func:`allowed_token_ids`. The ids are read from the decode loop's real output tensor, not
re-encoded from text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qwen_backends import SamplingParams, create_backend
from qwen_backends.backends import hf as hf_module
from qwen_backends.vocab import allowed_token_ids

# Full-distribution sampling, so the constraint is the only thing keeping tokens English.
WIDE = SamplingParams(
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    max_new_tokens=48,
    presence_penalty=0.0,
    repetition_penalty=1.0,
    seed=7,
    stop=(),
    english_only=False,
)


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Any:
    import torch

    # On a small shared machine torch's default thread pool makes this ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with create_backend(backend="hf", model=str(tiny_model_dir)) as hf:
            yield hf
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def generated(backend: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Records the new ids of every decode call (the real output tensor)."""
    rows: list[list[int]] = []
    original = hf_module.decode

    def spy(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        width = kwargs["input_ids"].shape[1]
        rows.extend(output[:, width:].tolist())
        return output

    monkeypatch.setattr(hf_module, "decode", spy)
    return rows


def test_english_only_generates_only_allowed_ids(backend: Any, generated: list[list[int]]) -> None:
    allowed = set(allowed_token_ids(backend.tokenizer))
    assert len(backend.tokenizer) == 151_669 and 151_645 in allowed
    free = backend.generate("Say something.", WIDE)
    english = backend.generate("Say something.", WIDE.replace(english_only=True))
    batch = backend.generate_batch(
        ["Hi", "Write a long story."], WIDE.replace(english_only=True, seed=11)
    )
    assert len(generated) == 4
    unconstrained, constrained, *batched = generated
    # Without the mask the random model leaves the tier (so this test can fail) ...
    assert set(unconstrained) - allowed
    # ... with it, every id (padding rows above the tokenizer's 151,669 included) is allowed.
    for row in (constrained, *batched):
        assert row and set(row) <= allowed, sorted(set(row) - allowed)[:10]
    assert english.completion_tokens == len(constrained)
    assert free.text != english.text
    assert all(result.completion_tokens > 0 for result in batch)


def test_english_only_streaming_is_constrained_too(
    backend: Any, generated: list[list[int]]
) -> None:
    allowed = set(allowed_token_ids(backend.tokenizer))
    text = "".join(backend.stream("Hello", WIDE.replace(english_only=True, seed=3)))
    assert len(generated) == 1 and generated[0]
    assert set(generated[0]) <= allowed
    assert text.isascii() or all(
        ch.isascii() or ch in "’‘“”—–…" or "\u00a0" <= ch <= "\u00ff" for ch in text
    )
