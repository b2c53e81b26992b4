"""Grammar-constrained decoding with transformers on the tiny random-weight checkpoint.

The weights are random, so every token the grammar allows is plausible to the model: if the
output matches the schema for many seeds, it is the mask (not the model) that made it so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
from qwen_backends.backends.transformers_sampling import (
    PresencePenaltyLogitsProcessor,
    generation_config_for,
)
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import UnsupportedFeatureError
from qwen_backends.grammar import GrammarEngine
from qwen_backends.sampling import SamplingParams
from qwen_backends.structured import ResponseFormat

VOCAB = 151_936
STOPS = (151645, 151643)

BOUNDED: dict[str, dict[str, Any]] = {
    "enum": {"enum": ["red", "green", "blue", "dark grey"]},
    "bounded integers": {
        "type": "object",
        "properties": {
            "small": {"type": "integer", "minimum": -3, "maximum": 3},
            "percent": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["small", "percent"],
    },
    "short strings": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 1, "maxLength": 4},
            "word": {"type": "string", "maxLength": 10},
        },
        "required": ["code", "word"],
    },
    "nested objects": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 9},
                    "role": {"enum": ["admin", "guest"]},
                    "active": {"type": "boolean"},
                    "address": {
                        "type": "object",
                        "properties": {"zip": {"type": "string", "maxLength": 5}},
                        "required": ["zip"],
                    },
                },
                "required": ["id", "role", "active", "address"],
            }
        },
        "required": ["user"],
    },
    "arrays with maxItems": {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "minItems": 1,
                "maxItems": 3,
            },
            "pairs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"k": {"enum": ["a", "b"]}, "v": {"type": "boolean"}},
                    "required": ["k", "v"],
                },
                "maxItems": 2,
            },
        },
        "required": ["scores", "pairs"],
    },
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a shared 2-core machine, two torch threads per process thrash (10x slower steps).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()


@pytest.fixture(scope="module")
def engine(offline_tokenizer: Any) -> GrammarEngine:
    return GrammarEngine(offline_tokenizer, VOCAB, STOPS)


@pytest.fixture(scope="module")
def english_blocked(offline_tokenizer: Any) -> torch.Tensor:
    from qwen_backends.vocab import allowed_token_ids

    blocked = torch.ones(VOCAB, dtype=torch.bool)
    blocked[torch.tensor(allowed_token_ids(offline_tokenizer, tier="english"))] = False
    return blocked


def _prompt(tokenizer: Any, text: str = "Answer in JSON.") -> list[int]:
    return render_prompt_ids(tokenizer, [{"role": "user", "content": text}])


def _generate(
    model: Any,
    prompts: list[list[int]],
    processors: list[Any],
    sampling: SamplingParams,
    seed: int,
) -> list[list[int]]:
    """Left-padded batch generation; returns each row's new tokens up to its end of turn."""
    from transformers import LogitsProcessorList

    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[STOPS[1]] * (width - len(ids)) + ids for ids in prompts])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    torch.manual_seed(seed)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            generation_config=generation_config_for(
                sampling, eos_token_ids=STOPS, pad_token_id=STOPS[1]
            ),
            logits_processor=LogitsProcessorList(processors),
        )
    rows = []
    for row in output[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in STOPS), len(row))
        rows.append(row[: end + 1])
    return rows


@pytest.mark.parametrize("name", list(BOUNDED))
def test_sampled_output_matches_bounded_schemas_for_many_seeds(
    name: str, model: Any, engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    fmt = ResponseFormat.of(BOUNDED[name])
    compiled = engine.compile(fmt)
    # Non-thinking defaults (0.7 / 0.8 / 20) plus repetition and presence penalties: the mask
    # must hold whatever runs after it.
    sampling = SamplingParams(max_new_tokens=120, repetition_penalty=1.3, presence_penalty=1.0)
    prompt = _prompt(offline_tokenizer)
    outputs = set()
    for seed in range(10):
        processors = [
            PresencePenaltyLogitsProcessor(1.0, len(prompt)),
            GrammarLogitsProcessor(engine, compiled),
        ]
        (row,) = _generate(model, [prompt], processors, sampling, seed)
        assert row[-1] in STOPS, "the grammar ends the turn once the document is complete"
        text = offline_tokenizer.decode(row, skip_special_tokens=True)
        fmt.validate(text)  # raises OutputValidationError if not
        outputs.add(text)
    assert len(outputs) > 1, "different seeds should sample different documents"


def test_every_row_of_a_batch_is_constrained_on_its_own(
    model: Any, engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    fmt = ResponseFormat.of(BOUNDED["arrays with maxItems"])
    prompts = [
        _prompt(offline_tokenizer, "Scores please."),
        _prompt(offline_tokenizer, "A much longer question, so the rows need left padding."),
        _prompt(offline_tokenizer, "x"),
    ]
    processor = GrammarLogitsProcessor(engine, engine.compile(fmt))
    rows = _generate(model, prompts, [processor], SamplingParams(max_new_tokens=120), seed=3)
    assert processor.failed_rows == set()
    for row in rows:
        fmt.validate(offline_tokenizer.decode(row, skip_special_tokens=True))


def test_greedy_decoding_is_constrained_too(
    model: Any, engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    fmt = ResponseFormat.of(BOUNDED["nested objects"])
    greedy = SamplingParams.preset("greedy", max_new_tokens=120, repetition_penalty=1.5)
    (row,) = _generate(
        model,
        [_prompt(offline_tokenizer)],
        [GrammarLogitsProcessor(engine, engine.compile(fmt))],
        greedy,
        seed=0,
    )
    fmt.validate(offline_tokenizer.decode(row, skip_special_tokens=True))


def test_english_only_and_the_grammar_are_both_honoured(
    model: Any, engine: GrammarEngine, offline_tokenizer: Any, english_blocked: torch.Tensor
) -> None:
    fmt = ResponseFormat.of(BOUNDED["short strings"])
    compiled = engine.compile(fmt)
    for seed in range(4):
        processor = GrammarLogitsProcessor(engine, compiled, blocked=english_blocked)
        (row,) = _generate(
            model,
            [_prompt(offline_tokenizer)],
            [processor],
            SamplingParams(max_new_tokens=60),
            seed,
        )
        fmt.validate(offline_tokenizer.decode(row, skip_special_tokens=True))
        assert not english_blocked[torch.tensor(row)].any(), "a non-English token was sampled"


def test_the_grammar_wins_where_english_leaves_nothing(
    model: Any, engine: GrammarEngine, offline_tokenizer: Any, english_blocked: torch.Tensor
) -> None:
    fmt = ResponseFormat.of({"enum": ["東京", "大阪"]})
    processor = GrammarLogitsProcessor(engine, engine.compile(fmt), blocked=english_blocked)
    (row,) = _generate(
        model, [_prompt(offline_tokenizer)], [processor], SamplingParams(max_new_tokens=20), seed=0
    )
    assert fmt.validate(offline_tokenizer.decode(row, skip_special_tokens=True)) in ("東京", "大阪")


def test_the_mask_is_applied_exactly() -> None:
    import numpy as np

    class Matcher:
        def __init__(self) -> None:
            self.seen: list[int] = []
            self.failed = False

        def accept(self, token: int) -> bool:
            self.seen.append(token)
            self.failed = self.failed or token == 2
            return not self.failed

        def allowed_words(self) -> np.ndarray:
            # Tokens 0, 1 and 3 minus the blocked token 1; a failed matcher allows all but 1.
            return np.array([-1 ^ 0b10 if self.failed else 0b1001, 0], dtype=np.int32)

    class Engine:
        vocab_size = 40

        def __init__(self) -> None:
            self.matchers: list[Matcher] = []

        def matcher(self, compiled: Any, blocked: Any) -> Matcher:
            assert blocked.tolist() == [index == 1 for index in range(40)]
            self.matchers.append(Matcher())
            return self.matchers[-1]

    engine = Engine()
    blocked = torch.zeros(40, dtype=torch.bool)
    blocked[1] = True
    processor = GrammarLogitsProcessor(engine, None, blocked=blocked)  # type: ignore[arg-type]
    scores = torch.zeros(2, 40)
    first = processor(torch.zeros(2, 5, dtype=torch.long), scores)
    assert torch.isfinite(first).nonzero()[:, 1].tolist() == [0, 3, 0, 3]
    assert torch.equal(scores, torch.zeros(2, 40)), "the input scores are not modified"
    # Row 1 draws token 2, which its grammar forbids: it is reported and left unconstrained
    # by the grammar (the blocked tokens stay blocked).
    second = processor(torch.tensor([[9, 3], [9, 2]]), scores)
    assert [matcher.seen for matcher in engine.matchers] == [[3], [2]]
    assert processor.failed_rows == {1}
    assert torch.isfinite(second[0]).nonzero().flatten().tolist() == [0, 3]
    assert (~torch.isfinite(second[1, :32])).nonzero().flatten().tolist() == [1]


def test_schemas_are_compiled_once(engine: GrammarEngine) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    first = engine.compile(ResponseFormat.of(schema))
    assert engine.compile(ResponseFormat(dict(schema))) is first


def test_a_schema_the_library_cannot_enforce_is_refused(engine: GrammarEngine) -> None:
    fmt = ResponseFormat.of({"type": "string", "pattern": "(?<=a)b"})
    with pytest.raises(UnsupportedFeatureError, match="look-around") as caught:
        engine.compile(fmt)
    assert "\n" not in str(caught.value)
    assert "^^^" not in str(caught.value), "no caret line from the regex error"
