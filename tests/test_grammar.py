"""The grammar engine every in-process backend shares (numpy only: no model, no torch).

Random walks stand in for a model: at each step a seeded generator picks one of the tokens the
mask allows. Whatever it picks, the answer must stay schema-valid JSON, so a walk that ends must
validate (with ``jsonschema``, as the library validates answers: ``multipleOf`` read on the
decimals written) except for the keywords the engine declares as checked after generation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from qwen_backends.errors import UnsupportedFeatureError
from qwen_backends.grammar import (
    GrammarEngine,
    GrammarMatcher,
    GrammarProcessor,
    apply_mask,
    pack_mask,
    unpack_mask,
)
from qwen_backends.structured import ResponseFormat, _answer_validator_class

VOCAB = 151_936
STOPS = (151645, 151643)
CORPUS = Path(__file__).parent / "data" / "schemas.jsonl"


def corpus() -> list[dict[str, Any]]:
    """The real-world-style schemas of tests/data/schemas.jsonl."""
    with CORPUS.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def engine(offline_tokenizer: Any) -> GrammarEngine:
    return GrammarEngine(offline_tokenizer, VOCAB, STOPS)


def ids(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def closers(tokenizer: Any) -> np.ndarray:
    """Ids of the tokens made only of closing quotes, braces and brackets (``"}``, ``]`` ...)."""
    # Sorted: get_vocab() comes from a Rust hash map whose order changes between processes, and
    # an unsorted array would make every seeded walk differ from run to run.
    return np.array(
        sorted(
            index
            for piece, index in tokenizer.get_vocab().items()
            if piece and set(piece) <= set('"}]')
        )
    )


def walk(
    matcher: GrammarMatcher, seed: int, ends: np.ndarray, steps: int = 300
) -> list[int] | None:
    """Tokens of one random walk through the mask up to a stop token (``None``: no end in
    ``steps``). Stop tokens and ``ends`` (closing tokens) are favoured so that walks end."""
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    for _ in range(steps):
        flags = matcher.allowed()
        allowed = np.flatnonzero(flags)
        assert allowed.size, "the mask left nothing to sample"
        closing = ends[flags[ends]]
        stops = [token for token in STOPS if flags[token]]
        if stops and rng.random() < 0.8:
            token = stops[0]
        elif closing.size and rng.random() < 0.5:
            token = int(rng.choice(closing))
        else:
            token = int(rng.choice(allowed))
        assert matcher.accept(token), f"the grammar refused token {token}, which it allowed"
        if token in STOPS:
            assert matcher.finished
            return tokens
        tokens.append(token)
    return None


def test_the_corpus_is_covered_and_refusals_name_the_keyword(engine: GrammarEngine) -> None:
    refused = []
    schemas = corpus()
    assert len(schemas) >= 100
    for entry in schemas:
        try:
            engine.compile(ResponseFormat.of(entry["schema"]))
        except UnsupportedFeatureError as exc:
            message = str(exc)
            assert "\n" not in message
            assert "oneOf at " in message, message
            refused.append(entry["name"])
    assert len(refused) / len(schemas) <= 0.05, refused
    assert "k8s_probe" in refused, "a oneOf whose branches overlap is refused"


def test_random_walks_over_the_corpus_give_schema_valid_json(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    ended = compiled_count = 0
    ends = closers(offline_tokenizer)
    for index, entry in enumerate(corpus()):
        fmt = ResponseFormat.of(entry["schema"])
        try:
            compiled = engine.compile(fmt)
        except UnsupportedFeatureError:
            continue
        compiled_count += 1
        tokens = walk(engine.matcher(compiled), index, ends)
        if tokens is None:
            continue
        ended += 1
        raw = offline_tokenizer.decode(tokens).encode()
        assert not any(byte < 0x20 for byte in raw), f"{entry['name']}: raw control character"
        data = json.loads(raw)
        validator = _answer_validator_class()(entry["schema"])
        unenforced = set(compiled.checked_after)
        broken = [
            list(error.absolute_schema_path)
            for error in validator.iter_errors(data)
            if not unenforced & set(error.absolute_schema_path)
        ]
        assert not broken, (entry["name"], broken, raw)
    assert ended >= 0.9 * compiled_count, f"only {ended} of {compiled_count} walks ended"


def test_numeric_bounds_patterns_tuples_and_refs_are_enforced(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    schema = {
        "$defs": {"small": {"type": "integer", "minimum": -3, "maximum": 3}},
        "type": "object",
        "properties": {
            "n": {"$ref": "#/$defs/small"},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "code": {"type": "string", "pattern": "^[A-Z]{2}\\d{2}$"},
            "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": ["x", "y"]}],
                     "items": False, "minItems": 2},
        },
        "required": ["n", "ratio", "code", "pair"],
        "additionalProperties": False,
    }  # fmt: skip
    fmt = ResponseFormat.of(schema)
    compiled = engine.compile(fmt)
    assert compiled.checked_after == ()
    seen = set()
    for seed in range(6):
        tokens = walk(engine.matcher(compiled), seed, closers(offline_tokenizer))
        assert tokens is not None
        data = fmt.validate(offline_tokenizer.decode(tokens))
        seen.add(data["n"])
    assert len(seen) > 1


def test_control_characters_never_reach_a_string(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    compiled = engine.compile(ResponseFormat.of({"type": "string", "maxLength": 50}))
    matcher = engine.matcher(compiled)
    matcher.accept(offline_tokenizer.convert_tokens_to_ids('"'))
    allowed = matcher.allowed()
    vocab = offline_tokenizer.get_vocab()
    tab_wc, newline, escaped = vocab["ĉwc"], vocab["Ċ"], vocab["\\n"]
    assert not allowed[tab_wc] and not allowed[newline]
    assert allowed[escaped], "the JSON escape for a newline stays allowed"
    assert not (allowed & engine.blocked).any()


def test_added_tokens_and_padding_rows_are_never_allowed(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    assert engine.blocked[151643 + 2 :].sum() == VOCAB - 151643 - 2 - 1  # all but <|im_end|>
    assert not engine.blocked[list(STOPS)].any()
    compiled = engine.compile(ResponseFormat.of({"type": "string"}))
    matcher = engine.matcher(compiled)
    matcher.accept(ids(offline_tokenizer, '"')[0])
    allowed = matcher.allowed()
    assert not allowed[151657], "<tool_call> is an added token, not JSON text"
    assert not allowed[151669:].any()


def test_a_stop_token_finishes_the_answer_and_then_anything_goes(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    matcher = engine.matcher(engine.compile(ResponseFormat.of({"enum": ["yes"]})))
    for token in ids(offline_tokenizer, '"yes"'):
        assert not matcher.allowed()[STOPS[0]]
        assert matcher.accept(token)
    assert np.flatnonzero(matcher.allowed()).tolist() == list(sorted(STOPS))
    assert matcher.accept(STOPS[0]) and matcher.finished
    assert matcher.allowed().sum() == VOCAB - engine.blocked.sum()


def test_a_forbidden_token_fails_the_matcher_which_then_stops_constraining(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    matcher = engine.matcher(engine.compile(ResponseFormat.of({"type": "integer"})))
    letter = ids(offline_tokenizer, "a")[0]
    assert not matcher.allowed()[letter]
    assert not matcher.accept(letter)
    assert matcher.failed and not matcher.finished
    assert matcher.allowed()[letter]
    assert not (matcher.allowed() & engine.blocked).any()


def test_english_only_is_folded_in_and_the_grammar_wins_where_it_leaves_nothing(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    from qwen_backends.vocab import allowed_token_ids

    blocked = np.ones(VOCAB, dtype=bool)
    blocked[allowed_token_ids(offline_tokenizer, tier="english")] = False
    plain = engine.compile(ResponseFormat.of({"type": "string", "maxLength": 20}))
    matcher = engine.matcher(plain, blocked)
    matcher.accept(ids(offline_tokenizer, '"')[0])
    allowed = matcher.allowed()
    assert allowed.any() and not (allowed & blocked).any()

    kanji = engine.compile(ResponseFormat.of({"enum": ["東京"]}))
    matcher = engine.matcher(kanji, blocked)
    matcher.accept(ids(offline_tokenizer, '"')[0])
    allowed = matcher.allowed()
    assert allowed.any(), "the grammar's only way on is not English: it wins"
    assert (allowed & blocked).any()


def test_schemas_are_compiled_once(engine: GrammarEngine) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    first = engine.compile(ResponseFormat.of(schema))
    assert engine.compile(ResponseFormat(dict(schema))) is first


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf at the top level"),
    ],
)
def test_what_cannot_be_enforced_is_refused_in_one_line(
    engine: GrammarEngine, schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnsupportedFeatureError, match=reason) as caught:
        engine.compile(ResponseFormat.of(schema))
    assert "\n" not in str(caught.value) and caught.value.backend == "hf"


def test_a_compile_over_the_time_limit_is_refused(
    engine: GrammarEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The compile waits for `release`, so it is over the limit however fast this machine is.
    release = threading.Event()
    real = engine._llg.LLMatcher

    class HeldMatcher:
        grammar_from_json_schema = staticmethod(real.grammar_from_json_schema)

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            release.wait(30)
            return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_llg", SimpleNamespace(LLMatcher=HeldMatcher))
    monkeypatch.setattr(engine, "compile_timeout", 0.05)
    try:
        with pytest.raises(UnsupportedFeatureError, match="structured_compile_timeout"):
            engine.compile(ResponseFormat.of({"type": "array", "items": {"type": "string"}}))
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name == "grammar-compile":
                thread.join()


def test_masks_pack_and_apply_the_same_on_numpy_and_torch() -> None:
    words = np.array([[1 - 2**31, 0, 5]], dtype=np.int32)  # bits 0 and 31 of word 0
    allowed = unpack_mask(words, 70)
    assert allowed.shape == (1, 70)
    assert np.flatnonzero(allowed[0]).tolist() == [0, 31, 64, 66]
    assert np.array_equal(pack_mask(allowed[0]), words[0])
    mask = np.random.default_rng(0).random(1000) > 0.5
    assert np.array_equal(unpack_mask(pack_mask(mask), 1000), mask)

    logits = np.zeros((1, 72), dtype=np.float32)  # wider than the mask: the rest is masked
    assert apply_mask(logits, words) is logits
    assert np.flatnonzero(np.isfinite(logits[0])).tolist() == [0, 31, 64, 66]
    torch = pytest.importorskip("torch")
    scores = torch.zeros(1, 72)
    masked = apply_mask(scores, words)
    assert torch.equal(scores, torch.zeros(1, 72)), "torch input is left as it was"
    assert torch.isfinite(masked[0]).nonzero().flatten().tolist() == [0, 31, 64, 66]


def test_the_processor_advances_by_the_newest_token(
    engine: GrammarEngine, offline_tokenizer: Any
) -> None:
    compiled = engine.compile(ResponseFormat.of({"enum": ["no", "nope"]}))
    processor = GrammarProcessor(engine.matcher(compiled))
    prompt = np.array([151644, 872, 198])
    quote, word = ids(offline_tokenizer, '"')[0], ids(offline_tokenizer, "no")[0]
    first = processor(prompt, np.zeros(VOCAB, dtype=np.float32))
    assert np.isfinite(first[quote]) and not np.isfinite(first[word])
    second = processor(np.append(prompt, quote), np.zeros(VOCAB, dtype=np.float32))
    assert np.isfinite(second[word])


def test_the_engine_needs_no_torch(offline_tokenizer: Any) -> None:
    from qwen_backends.tokenizer import offline_tokenizer_dir

    script = f"""
import sys
import numpy as np
from tokenizers import Tokenizer
from qwen_backends.grammar import GrammarEngine
from qwen_backends.structured import ResponseFormat
tokenizer = Tokenizer.from_file({str(offline_tokenizer_dir() / "tokenizer.json")!r})
engine = GrammarEngine(tokenizer, {VOCAB}, {STOPS})
matcher = engine.matcher(engine.compile(ResponseFormat.of({{"enum": ["yes"]}})))
logits = matcher.mask(np.zeros({VOCAB}, dtype=np.float32))
allowed = np.flatnonzero(np.isfinite(logits)).tolist()
assert allowed and all('"yes"'.startswith(tokenizer.decode([i])) for i in allowed), allowed
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
