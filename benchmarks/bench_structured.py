"""Grammar-constrained decoding on hf: cost per token and schema compilation, three libraries.

Runs xgrammar (what the hf backend uses), llguidance and outlines-core through the SAME logits
processor (:class:`~qwen_backends.backends.transformers_grammar.GrammarLogitsProcessor`; only the
matcher differs) on the ``bench`` random-weight checkpoint (hidden 512, 4 layers, Qwen3-4B's
151,936-row vocabulary), side by side with unconstrained decoding in the same run:

- per-token time, constrained / unconstrained (goal <= 1.10), on a schema whose string field the
  random model fills until ``max_new_tokens`` (so both runs decode the same number of tokens);
- schema compilation: first compile and cached compile of a bounded schema, and the one-off
  vocabulary scan of each library;
- correctness: how many of ``--seeds`` sampled outputs on the ``tiny`` checkpoint are JSON that
  matches a bounded schema (enums, bounded integers, short strings, nested objects, arrays with
  maxItems).

Usage::

    python benchmarks/bench_structured.py [--tokens 96] [--repeats 3] [--seeds 20]
        [--libraries xgrammar,llguidance,outlines-core]

A library that is not installed is reported and skipped. Keep the numbers small on a shared
machine: the ratio is what matters, and it is measured side by side in one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Bounded: every output the grammar allows ends within a few dozen tokens.
BOUNDED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "label": {"type": "string", "maxLength": 12},
        "flag": {"type": "boolean"},
        "point": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": -5, "maximum": 5},
                "y": {"type": "integer", "minimum": -5, "maximum": 5},
            },
            "required": ["x", "y"],
            "additionalProperties": False,
        },
        "tags": {
            "type": "array",
            "items": {"enum": ["a", "b", "c"]},
            "maxItems": 3,
        },
    },
    "required": ["colour", "count", "label", "flag", "point", "tags"],
    "additionalProperties": False,
}

#: A random model keeps writing the string, so decoding runs to max_new_tokens.
LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


# -- the two other libraries, behind the same GrammarEngine protocol -------------------------


class _LLGuidanceMatcher:
    # is_stopped() turns true when only the stop token is left, before it is sampled; the
    # processor must keep masking until then, so "finished" means the stop token was accepted.
    def __init__(self, matcher: Any, stops: Sequence[int]) -> None:
        import llguidance.torch

        self._matcher = matcher
        self._fill = llguidance.torch.fill_next_token_bitmask
        self._stops = set(stops)
        self._done = False

    def accept(self, token: int) -> bool:
        if token in self._stops and (self._matcher.is_stopped() or self._matcher.is_accepting()):
            self._done = True
            return True
        return bool(self._matcher.consume_token(token))

    def fill(self, bitmask: Any, row: int) -> None:
        self._fill(self._matcher, bitmask, row)

    def finished(self) -> bool:
        return self._done


class LLGuidanceEngine:
    """llguidance with compact JSON (no flexible whitespace)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import llguidance
        import llguidance.hf

        self._llg = llguidance
        self._stops = tuple(stop_token_ids)
        self.vocab_size = vocab_size
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=stop_token_ids[0]
        )
        self._cache: dict[str, Any] = {}

    def compile(self, response_format: Any) -> Any:
        if response_format.key not in self._cache:
            grammar = self._llg.LLMatcher.grammar_from_json_schema(
                response_format.key, defaults={"whitespace_flexible": False}
            )
            error = self._llg.LLMatcher.validate_grammar(grammar, self._tokenizer)
            if error:
                raise ValueError(error)
            self._cache[response_format.key] = grammar
        return self._cache[response_format.key]

    def matcher(self, compiled: Any) -> _LLGuidanceMatcher:
        return _LLGuidanceMatcher(self._llg.LLMatcher(self._tokenizer, compiled), self._stops)


class _OutlinesMatcher:
    def __init__(self, guide: Any, eos: int) -> None:
        self._guide = guide
        self._eos = eos
        self._done = False

    def accept(self, token: int) -> bool:
        if token == self._eos:
            self._done = True
            return bool(self._guide.is_finished())
        try:
            self._guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def fill(self, bitmask: Any, row: int) -> None:
        view = bitmask[row]
        self._guide.write_mask_into(view.data_ptr(), view.numel(), view.element_size())

    def finished(self) -> bool:
        return self._done


class OutlinesCoreEngine:
    """outlines-core: schema -> regex -> token-level index over the whole vocabulary."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import outlines_core
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self._oc = outlines_core
        self.vocab_size = vocab_size
        self._eos = stop_token_ids[0]
        decoder = {char: byte for byte, char in bytes_to_unicode().items()}
        added = set(tokenizer.get_added_vocab().values())
        by_bytes: dict[bytes, list[int]] = {}
        for token, token_id in tokenizer.get_vocab().items():
            if token_id in added or token_id >= vocab_size:
                continue
            by_bytes.setdefault(bytes(decoder[char] for char in token), []).append(token_id)
        self._vocabulary = outlines_core.Vocabulary(self._eos, by_bytes)
        self._cache: dict[str, Any] = {}

    def compile(self, response_format: Any) -> Any:
        if response_format.key not in self._cache:
            regex = self._oc.json_schema.build_regex_from_schema(response_format.key, "")
            self._cache[response_format.key] = self._oc.Index(regex, self._vocabulary)
        return self._cache[response_format.key]

    def matcher(self, compiled: Any) -> _OutlinesMatcher:
        return _OutlinesMatcher(self._oc.Guide(compiled), self._eos)


def make_engine(library: str, tokenizer: Any, vocab_size: int, stops: Sequence[int]) -> Any:
    """The grammar engine of ``library`` bound to ``tokenizer``."""
    if library == "xgrammar":
        from qwen_backends.backends.transformers_grammar import XGrammarEngine

        return XGrammarEngine(tokenizer, vocab_size, stops)
    if library == "llguidance":
        return LLGuidanceEngine(tokenizer, vocab_size, stops)
    if library == "outlines-core":
        return OutlinesCoreEngine(tokenizer, vocab_size, stops)
    raise SystemExit(f"unknown library {library!r}")


# -- measurement ---------------------------------------------------------------------------


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def _generate(model: Any, prompt: Any, max_new_tokens: int, seed: int, processors: list) -> Any:
    import torch
    from transformers import LogitsProcessorList

    from qwen_backends.backends.transformers_sampling import generation_config_for
    from qwen_backends.sampling import SamplingParams

    config = generation_config_for(
        SamplingParams(max_new_tokens=max_new_tokens),
        eos_token_ids=(151645, 151643),
        pad_token_id=151643,
    )
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
        )


class _TimedProcessor:
    """Wraps a processor and adds up the CPU time spent in it."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.seconds = 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        start = time.process_time()
        result = self.processor(input_ids, scores)
        self.seconds += time.process_time() - start
        return result


def per_token(
    model: Any, prompt: Any, tokens: int, repeats: int, engines: dict[str, Any]
) -> dict[str, tuple[float, float]]:
    """Per library (and unconstrained): median ``(CPU seconds per generated token, CPU seconds
    per token spent inside the grammar processor)``; runs are interleaved.

    CPU time of this process (one torch thread), not wall time: on a shared machine other jobs
    stretch wall time by several times, and unevenly between runs.
    """
    from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
    from qwen_backends.structured import ResponseFormat

    long_format = ResponseFormat.of(LONG_SCHEMA)
    compiled = {name: engine.compile(long_format) for name, engine in engines.items()}
    names = ["unconstrained", *engines]
    totals: dict[str, list[float]] = {name: [] for name in names}
    inside: dict[str, list[float]] = {name: [] for name in names}
    _generate(model, prompt, 8, 0, [])  # warm-up
    for repeat in range(repeats):
        for name in names:
            timed = []
            if name != "unconstrained":
                timed = [_TimedProcessor(GrammarLogitsProcessor(engines[name], compiled[name]))]
            start = time.process_time()
            output = _generate(model, prompt, tokens, repeat, timed)
            seconds = time.process_time() - start
            generated = output.shape[1] - prompt.shape[1]
            totals[name].append(seconds / generated)
            inside[name].append(timed[0].seconds / generated if timed else 0.0)
    return {
        name: (statistics.median(totals[name]), statistics.median(inside[name])) for name in names
    }


def correctness(model: Any, prompt: Any, engines: dict[str, Any], seeds: int) -> dict[str, int]:
    """How many seeds give output that validates against :data:`BOUNDED_SCHEMA`."""
    from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
    from qwen_backends.errors import OutputValidationError
    from qwen_backends.structured import ResponseFormat
    from qwen_backends.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("offline")
    bounded = ResponseFormat.of(BOUNDED_SCHEMA)
    valid: dict[str, int] = {}
    for name, engine in engines.items():
        compiled = engine.compile(bounded)
        valid[name] = 0
        for seed in range(seeds):
            output = _generate(model, prompt, 160, seed, [GrammarLogitsProcessor(engine, compiled)])
            text = tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)
            try:
                bounded.validate(text)
            except OutputValidationError as exc:
                print(f"  {name} seed {seed}: {exc}")
            else:
                valid[name] += 1
    return valid


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--libraries", default="xgrammar,llguidance,outlines-core")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from qwen_backends.chat import render_prompt_ids
    from qwen_backends.structured import ResponseFormat
    from qwen_backends.testing import tiny_checkpoint
    from qwen_backends.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer("offline")
    stops = (151645, 151643)
    vocab_size = 151_936
    engines: dict[str, Any] = {}
    print("library        vocabulary scan  first compile  cached compile")
    for library in args.libraries.split(","):
        try:
            scan, engine = _timed(
                lambda lib=library: make_engine(lib, tokenizer, vocab_size, stops)
            )
        except ImportError as exc:
            print(f"{library:<14} not installed ({exc})")
            continue
        # Two distinct format objects with one schema: the cache is keyed by the schema text.
        one, two = ResponseFormat.of(dict(BOUNDED_SCHEMA)), ResponseFormat.of(dict(BOUNDED_SCHEMA))
        first, _ = _timed(lambda e=engine, f=one: e.compile(f))
        cached, _ = _timed(lambda e=engine, f=two: e.compile(f))
        print(f"{library:<14} {scan:>13.2f} s  {first * 1e3:>10.1f} ms  {cached * 1e6:>11.1f} µs")
        engines[library] = engine

    messages = [{"role": "user", "content": "Describe the weather as JSON."}]
    prompt = torch.tensor([render_prompt_ids(tokenizer, messages)])

    bench = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint("bench"))).eval()
    costs = per_token(bench, prompt, args.tokens, args.repeats, engines)
    base = costs["unconstrained"][0]
    print(
        f"\nper token on the bench checkpoint ({args.tokens} tokens, median of {args.repeats}); "
        "CPU time; 'end-to-end' divides whole runs, 'processor ratio' adds the time measured "
        "inside the grammar processor to the unconstrained time:"
    )
    print("  library          per token  end-to-end  in processor  processor ratio")
    for name, (seconds, processor) in costs.items():
        print(
            f"  {name:<14} {seconds * 1e3:8.2f} ms  {seconds / base:9.3f}  "
            f"{processor * 1e3:9.3f} ms  {(base + processor) / base:14.3f}"
        )

    tiny = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint("tiny"))).eval()
    valid = correctness(tiny, prompt, engines, args.seeds)
    print(f"\nschema-valid outputs on the tiny checkpoint ({args.seeds} seeds, bounded schema):")
    for name, count in valid.items():
        print(f"  {name:<14} {count}/{args.seeds}")


if __name__ == "__main__":
    main()
