"""Grammar engines side by side on the structured-output corpus, and on hf per token.

Candidates: llguidance (what every in-process backend uses, through
:class:`~qwen_backends.grammar.GrammarEngine`), xgrammar and outlines-core, each fed the same
schemas after the same preparation (:func:`qwen_backends.schema_support.prepare`: keywords no
grammar can express taken out and checked on the answer, overlapping ``oneOf`` refused).

On the corpus ``tests/data/schemas.jsonl`` (``--corpus``), per candidate:

- coverage: schemas that compile within ``--compile-timeout`` seconds, and why the others did not;
- compile time p50 / p90 / p99 / max (first compile of each schema; cached compiles cost a dict
  look-up);
- per-token mask cost over Qwen3's 151,936-token vocabulary: the time to compute one step's mask
  into a numpy array of packed int32 words, over seeded random walks through every compiled
  schema (a walk picks any allowed token, favouring closing tokens so that walks end);
- validity: walks that ended, and how many of those are JSON that the independent ``jsonschema``
  validator accepts (``invalid`` counts answers that break a keyword the engine claims to
  enforce; ``raw control`` answers holding a raw control character);
- whether the mask can be computed into numpy without importing torch (a fresh subprocess).

Then, unless ``--no-model``: per-token time on the hf backend's ``bench`` checkpoint (hidden 512,
4 layers, Qwen3-4B's vocabulary), constrained / unconstrained in the same run (goal <= 1.10), and
schema-valid sampled answers on the ``tiny`` checkpoint, through the same transformers logits
processor (:class:`~qwen_backends.backends.transformers_grammar.GrammarLogitsProcessor`).

Usage::

    python benchmarks/bench_structured.py [--libraries llguidance,xgrammar,outlines-core]
        [--corpus tests/data/schemas.jsonl] [--compile-timeout 10] [--walk-steps 300]
        [--no-model | --no-corpus] [--tokens 96] [--repeats 3] [--seeds 20]

A library that is not installed is reported and skipped. CPU time is reported where the machine
is shared (other jobs stretch wall time unevenly); ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 151_936
STOPS = (151645, 151643)
#: Compiles that may time out before a library's corpus run stops.
MAX_TIMEOUTS = 3
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "schemas.jsonl"

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
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
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


# -- the other libraries, with the matcher interface of qwen_backends.grammar ------------------


class _WordsMatcher:
    """A library matcher behind :class:`~qwen_backends.grammar.GrammarMatcher`'s interface
    (``allowed_words`` / ``accept`` / ``finished`` / ``failed``), blocked tokens included."""

    def __init__(self, engine: Any, blocked: Any) -> None:
        import numpy as np

        from qwen_backends.grammar import pack_mask

        self.engine = engine
        self.failed = False
        self.finished = False
        self._words = np.empty((1, engine.words), dtype=np.int32)
        self._extra = None if blocked is None else pack_mask(blocked, engine.vocab_size)

    def fill(self, words: Any) -> None:
        raise NotImplementedError

    def advance(self, token: int) -> bool:
        raise NotImplementedError

    def accept(self, token: int) -> bool:
        if self.finished or self.failed:
            return not self.failed
        if token in STOPS and self.is_complete():
            self.finished = True
            return True
        self.failed = not self.advance(token)
        return not self.failed

    def is_complete(self) -> bool:
        raise NotImplementedError

    def allowed_words(self) -> Any:
        words = self._words[0]
        if self.finished or self.failed:
            words.fill(-1)
        else:
            self.fill(self._words)
        for blocked in (self.engine.blocked_words, self._extra):
            if blocked is not None and (words & ~blocked).any():
                words &= ~blocked
        return words

    def allowed(self) -> Any:
        from qwen_backends.grammar import unpack_mask

        return unpack_mask(self.allowed_words(), self.engine.vocab_size)


class _XGrammarMatcher(_WordsMatcher):
    def __init__(self, engine: Any, compiled: Any, blocked: Any) -> None:
        super().__init__(engine, blocked)
        import torch

        self._matcher = engine.xgr.GrammarMatcher(compiled)
        self._view = torch.from_numpy(self._words)

    def fill(self, words: Any) -> None:
        self._matcher.fill_next_token_bitmask(self._view, 0)

    def advance(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    def is_complete(self) -> bool:
        return bool(self._matcher.is_terminated()) or self._matcher.accept_token(STOPS[0])


class XGrammarCandidate:
    """xgrammar: compact JSON, strict mode (what the project used before llguidance)."""

    def __init__(self, tokenizer: Any, blocked_words: Any) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.vocab_size = VOCAB
        self.words = (VOCAB + 31) // 32
        self.blocked_words = blocked_words
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=VOCAB, stop_token_ids=list(STOPS)
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile_schema(self, schema: Any) -> Any:
        return self._compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=True
        )

    def matcher(self, compiled: Any, blocked: Any = None) -> _XGrammarMatcher:
        return _XGrammarMatcher(self, compiled, blocked)


class _OutlinesMatcher(_WordsMatcher):
    def __init__(self, engine: Any, index: Any, blocked: Any) -> None:
        super().__init__(engine, blocked)
        self._guide = engine.oc.Guide(index)

    def fill(self, words: Any) -> None:
        words.fill(0)
        self._guide.write_mask_into(words.ctypes.data, words.size, words.itemsize)

    def advance(self, token: int) -> bool:
        try:
            self._guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def is_complete(self) -> bool:
        return bool(self._guide.is_finished())


class OutlinesCoreCandidate:
    """outlines-core: schema -> regex -> a token-level index over the whole vocabulary."""

    def __init__(self, tokenizer: Any, blocked_words: Any) -> None:
        import outlines_core

        from qwen_backends.tokenizer import byte_decoder

        self.oc = outlines_core
        self.vocab_size = VOCAB
        self.words = (VOCAB + 31) // 32
        self.blocked_words = blocked_words
        decoder = byte_decoder()
        added = set(tokenizer.get_added_vocab().values())
        by_bytes: dict[bytes, list[int]] = {}
        for token, token_id in tokenizer.get_vocab().items():
            if token_id not in added:
                by_bytes.setdefault(bytes(decoder[char] for char in token), []).append(token_id)
        self._vocabulary = outlines_core.Vocabulary(STOPS[0], by_bytes)

    def compile_schema(self, schema: Any) -> Any:
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), "")
        return self.oc.Index(regex, self._vocabulary)

    def matcher(self, compiled: Any, blocked: Any = None) -> _OutlinesMatcher:
        return _OutlinesMatcher(self, compiled, blocked)


class LLGuidanceCandidate:
    """llguidance through the project's own engine (what the backends run)."""

    def __init__(self, tokenizer: Any) -> None:
        from qwen_backends.grammar import GrammarEngine

        self.engine = GrammarEngine(tokenizer, VOCAB, STOPS, compile_timeout=3600)
        self.vocab_size = VOCAB
        self.blocked_words = self.engine.blocked_words

    def compile_schema(self, schema: Any) -> Any:
        from qwen_backends.structured import ResponseFormat

        return self.engine.compile(ResponseFormat(schema))

    def matcher(self, compiled: Any, blocked: Any = None) -> Any:
        return self.engine.matcher(compiled, blocked)


def make_candidate(library: str, tokenizer: Any, blocked_words: Any) -> Any:
    """The candidate of ``library`` bound to ``tokenizer``."""
    if library == "llguidance":
        return LLGuidanceCandidate(tokenizer)
    if library == "xgrammar":
        return XGrammarCandidate(tokenizer, blocked_words)
    if library == "outlines-core":
        return OutlinesCoreCandidate(tokenizer, blocked_words)
    raise SystemExit(f"unknown library {library!r}")


# -- the corpus ------------------------------------------------------------------------------


def _bounded(function: Callable[[], Any], timeout: float) -> tuple[str, Any, float]:
    """``("ok", value, seconds)``, ``("error", message, seconds)`` or ``("timeout", None,
    timeout)``; a timed-out call is left running in a daemon thread."""
    outcome: list[Any] = []

    def run() -> None:
        start = time.perf_counter()
        try:
            value = function()
        except Exception as exc:
            outcome.append(("error", str(exc).strip().splitlines()[0][:120], start))
        else:
            outcome.append(("ok", value, start))
        outcome.append(time.perf_counter() - start)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if len(outcome) < 2:
        return "timeout", None, timeout
    (status, value, _), seconds = outcome
    return status, value, seconds


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_corpus(
    candidate: Any,
    corpus: list[dict[str, Any]],
    tokenizer: Any,
    timeout: float,
    steps: int,
) -> dict[str, Any]:
    """Coverage, compile times, per-step mask times and validity of one candidate."""
    import jsonschema
    import numpy as np

    from qwen_backends.schema_support import UnenforceableSchema, prepare

    closers = np.array(
        [i for piece, i in tokenizer.get_vocab().items() if piece and set(piece) <= set('"}]')]
    )
    figures: dict[str, Any] = {"compile": [], "mask": [], "failures": {}, "ended": 0}
    figures.update(valid=0, invalid=[], control=0, refused=0, steps=0)
    timeouts = 0
    for index, entry in enumerate(corpus):
        if timeouts >= MAX_TIMEOUTS:
            # A timed-out compile keeps running in its thread: stop before they pile up.
            figures["failures"][entry["name"]] = f"not run ({MAX_TIMEOUTS} compiles timed out)"
            continue
        try:
            prepared = prepare(entry["schema"])
        except UnenforceableSchema as exc:
            figures["refused"] += 1
            figures["failures"][entry["name"]] = f"refused: {exc}"[:120]
            continue
        schema = entry["schema"] if isinstance(candidate, LLGuidanceCandidate) else prepared.schema
        status, compiled, seconds = _bounded(
            functools.partial(candidate.compile_schema, schema), timeout
        )
        if status != "ok":
            timeouts += status == "timeout"
            figures["failures"][entry["name"]] = f"{status}: {compiled or ''}"
            continue
        figures["compile"].append(seconds)
        matcher = candidate.matcher(compiled)
        rng = np.random.default_rng(index)
        tokens: list[int] = []
        for _ in range(steps):
            start = time.perf_counter()
            matcher.allowed_words()
            figures["mask"].append(time.perf_counter() - start)
            flags = matcher.allowed()
            allowed = np.flatnonzero(flags)
            closing = closers[flags[closers]]
            stop = STOPS[0] if flags[STOPS[0]] else None
            if not allowed.size:
                figures["failures"][entry["name"]] = "empty mask"
                break
            if stop is not None and rng.random() < 0.8:
                token = stop
            elif closing.size and rng.random() < 0.5:
                token = int(rng.choice(closing))
            else:
                token = int(rng.choice(allowed))
            if not matcher.accept(token):
                figures["failures"][entry["name"]] = f"refused its own token {token}"
                break
            if token in STOPS:
                figures["ended"] += 1
                raw = tokenizer.decode(tokens).encode()
                figures["control"] += any(byte < 0x20 for byte in raw)
                try:
                    data = json.loads(raw)
                except ValueError:
                    figures["invalid"].append((entry["name"], "not JSON"))
                    break
                unenforced = set(prepared.checked_after)
                broken = [
                    error.message[:80]
                    for error in jsonschema.Draft202012Validator(entry["schema"]).iter_errors(data)
                    if not unenforced & set(error.absolute_schema_path)
                ]
                if broken:
                    figures["invalid"].append((entry["name"], broken[0]))
                else:
                    figures["valid"] += 1
                break
            tokens.append(token)
    return figures


_TORCH_FREE = """
import sys, numpy as np
library = sys.argv[1]
if library == "llguidance":
    import llguidance, llguidance.numpy
elif library == "xgrammar":
    import xgrammar
elif library == "outlines-core":
    import outlines_core
print("torch" in sys.modules)
"""


def torch_free(library: str) -> str:
    """Whether importing ``library`` (and its numpy mask helpers) leaves torch out."""
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, library], capture_output=True, text=True, timeout=300
    )
    if done.returncode:
        return "error: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return "no (imports torch)" if done.stdout.strip() == "True" else "yes"


# -- hf per token ------------------------------------------------------------------------------


def _generate(model: Any, prompt: Any, max_new_tokens: int, seed: int, processors: list) -> Any:
    import torch
    from transformers import LogitsProcessorList

    from qwen_backends.backends.transformers_sampling import generation_config_for
    from qwen_backends.sampling import SamplingParams

    config = generation_config_for(
        SamplingParams(max_new_tokens=max_new_tokens), eos_token_ids=STOPS, pad_token_id=STOPS[1]
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
    model: Any, prompt: Any, tokens: int, repeats: int, candidates: dict[str, Any]
) -> dict[str, tuple[float, float]]:
    """Per library (and unconstrained): median ``(CPU seconds per generated token, CPU seconds
    per token inside the grammar processor)``; runs are interleaved."""
    from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
    from qwen_backends.schema_support import prepare

    compiled = {
        name: candidate.compile_schema(
            LONG_SCHEMA if name == "llguidance" else prepare(LONG_SCHEMA).schema
        )
        for name, candidate in candidates.items()
    }
    names = ["unconstrained", *candidates]
    totals: dict[str, list[float]] = {name: [] for name in names}
    inside: dict[str, list[float]] = {name: [] for name in names}
    _generate(model, prompt, 8, 0, [])  # warm-up
    for repeat in range(repeats):
        for name in names:
            timed = []
            if name != "unconstrained":
                grammar = GrammarLogitsProcessor(candidates[name], compiled[name])
                timed = [_TimedProcessor(grammar)]
            start = time.process_time()
            output = _generate(model, prompt, tokens, repeat, timed)
            seconds = time.process_time() - start
            generated = output.shape[1] - prompt.shape[1]
            totals[name].append(seconds / generated)
            inside[name].append(timed[0].seconds / generated if timed else 0.0)
    return {
        name: (statistics.median(totals[name]), statistics.median(inside[name])) for name in names
    }


def correctness(
    model: Any, prompt: Any, tokenizer: Any, candidates: dict[str, Any], seeds: int
) -> dict[str, int]:
    """How many seeds give output that validates against :data:`BOUNDED_SCHEMA`."""
    from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
    from qwen_backends.errors import OutputValidationError
    from qwen_backends.schema_support import prepare
    from qwen_backends.structured import ResponseFormat

    bounded = ResponseFormat.of(BOUNDED_SCHEMA)
    valid: dict[str, int] = {}
    for name, candidate in candidates.items():
        schema = BOUNDED_SCHEMA if name == "llguidance" else prepare(BOUNDED_SCHEMA).schema
        compiled = candidate.compile_schema(schema)
        valid[name] = 0
        for seed in range(seeds):
            processor = GrammarLogitsProcessor(candidate, compiled)
            output = _generate(model, prompt, 160, seed, [processor])
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
    parser.add_argument("--libraries", default="llguidance,xgrammar,outlines-core")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--compile-timeout", type=float, default=10.0)
    parser.add_argument("--walk-steps", type=int, default=300)
    parser.add_argument("--no-model", action="store_true", help="skip the hf per-token runs")
    parser.add_argument("--no-corpus", action="store_true", help="skip the corpus runs")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)

    from qwen_backends.grammar import GrammarEngine
    from qwen_backends.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("offline")
    corpus = [json.loads(line) for line in args.corpus.read_text(encoding="utf-8").splitlines()]
    # The same never-allowed tokens for every candidate (control characters, added tokens).
    blocked_words = GrammarEngine(tokenizer, VOCAB, STOPS).blocked_words
    candidates: dict[str, Any] = {}
    header = (
        "library        setup   coverage  compile p50 / p90 / p99 / max (ms)      "
        "mask/step mean / p50 / p99 (ms)  ended valid invalid control  torch-free"
    )
    if not args.no_corpus:
        print(f"corpus: {len(corpus)} schemas ({args.corpus.name}); {VOCAB:,} tokens\n")
        print(header)
    for library in args.libraries.split(","):
        try:
            setup, candidate = _timed(
                functools.partial(make_candidate, library, tokenizer, blocked_words)
            )
        except ImportError as exc:
            print(f"{library:<14} not installed ({exc})")
            continue
        candidates[library] = candidate
        if args.no_corpus:
            continue
        figures = run_corpus(candidate, corpus, tokenizer, args.compile_timeout, args.walk_steps)
        compiles = [seconds * 1e3 for seconds in figures["compile"]]
        masks = [seconds * 1e3 for seconds in figures["mask"]]
        print(
            f"{library:<14} {setup:5.1f} s  {len(compiles):>3}/{len(corpus):<3}  "
            f"{_percentile(compiles, 0.5):8.1f} / {_percentile(compiles, 0.9):7.1f} / "
            f"{_percentile(compiles, 0.99):7.1f} / {_percentile(compiles, 1.0):8.1f}      "
            f"{statistics.fmean(masks) if masks else float('nan'):6.3f} / "
            f"{_percentile(masks, 0.5):6.3f} / "
            f"{_percentile(masks, 0.99):6.3f}        {figures['ended']:>4} {figures['valid']:>5} "
            f"{len(figures['invalid']):>7} {figures['control']:>7}  {torch_free(library)}"
        )
        for name, why in sorted(figures["failures"].items()):
            print(f"    not covered  {name}: {why}")
        for name, why in figures["invalid"]:
            print(f"    invalid      {name}: {why}")

    if args.no_model or not candidates:
        return
    import torch
    from transformers import AutoModelForCausalLM

    from qwen_backends.chat import render_prompt_ids
    from qwen_backends.testing import tiny_checkpoint

    torch.set_num_threads(1)
    messages = [{"role": "user", "content": "Describe the weather as JSON."}]
    prompt = torch.tensor([render_prompt_ids(tokenizer, messages)])
    bench = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint("bench"))).eval()
    costs = per_token(bench, prompt, args.tokens, args.repeats, candidates)
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
    valid = correctness(tiny, prompt, tokenizer, candidates, args.seeds)
    print(f"\nschema-valid outputs on the tiny checkpoint ({args.seeds} seeds, bounded schema):")
    for name, count in valid.items():
        print(f"  {name:<14} {count}/{args.seeds}")


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


if __name__ == "__main__":
    main()
