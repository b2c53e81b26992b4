"""The llamacpp backend side by side with raw llama-cpp-python and with the hf backend.

All on GGUFs converted from the same random-weight checkpoint (``--size``, default ``bench``:
hidden 512, whose widths allow real k-quant tensors), built once and cached
(:func:`qwen_backends.testing.tiny_gguf`).

1. Overhead: ``backend.generate`` against a hand-written ``Llama.generate`` loop on the same
   ``Llama`` object, the same prompt ids and sampler arguments (``generate_kwargs``), the same
   number of tokens (decoded once with ``detokenize``), in interleaved pairs; the median of the
   per-pair ratios of seconds per token. Goal: <= 1.03.
2. Speed: generated tokens per second over the same prompts and seeds for the llamacpp backend
   (q8_0 and Q4_K_M) and the hf backend (float32, same weights), same thread count. Goal: q8_0
   >= 2x hf.
3. ``english_only`` against unconstrained sampling on llamacpp, seconds per token, interleaved
   pairs. Goal: <= 1.05.
4. Peak RSS of a process that loads each backend and generates (one subprocess each).

Usage: ``.venv/bin/python benchmarks/bench_llamacpp.py [--size bench] [--pairs 9] [--tokens 64]
[--threads 1] [--only logprobs]`` (``--only logprobs``: the log-probability pairs alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from qwen_backends import create_backend
from qwen_backends.backends.llamacpp import LlamaCppBackend
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint, tiny_gguf

CONVERSATIONS = [
    "Name three primary colours.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a child in two sentences.",
    "List the planets of the solar system.",
    "Give me a synonym for 'happy'.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
]


def llamacpp(quant: str, size: str, threads: int) -> LlamaCppBackend:
    """A llamacpp backend on the cached GGUF."""
    backend = create_backend(
        backend="llamacpp",
        model=str(tiny_gguf(quant, size)),
        llamacpp={"n_threads": threads, "n_threads_batch": threads, "n_ctx": 2048},
    )
    assert isinstance(backend, LlamaCppBackend)
    return backend


def full_length_seed(backend: LlamaCppBackend, prompt: str, tokens: int) -> SamplingParams:
    """Sampling whose answer runs to ``tokens`` (no end-of-turn), so both sides do equal work."""
    for seed in range(100):
        params = SamplingParams(seed=seed, max_new_tokens=tokens)
        if backend.generate(prompt, params).finish_reason == "length":
            return params
    raise RuntimeError("no seed among 100 gives a full-length answer")


def raw_generate(backend: LlamaCppBackend, prompt_ids: list[int], params: SamplingParams) -> float:
    """Seconds per token of plain llama-cpp-python doing the same work."""
    llama = backend.llama
    start = time.perf_counter()
    kwargs = backend.generate_kwargs(params)  # the seed and window are set like the backend's
    produced: list[int] = []
    for token in llama.generate(prompt_ids, **kwargs):
        produced.append(token)
        if len(produced) == params.max_new_tokens:
            break
    llama.detokenize(produced)
    return (time.perf_counter() - start) / len(produced)


def backend_generate(backend: LlamaCppBackend, prompt: str, params: SamplingParams) -> float:
    start = time.perf_counter()
    result = backend.generate(prompt, params)
    assert result.completion_tokens == params.max_new_tokens, result
    return (time.perf_counter() - start) / result.completion_tokens


def overhead(backend: LlamaCppBackend, tokens: int, pairs: int) -> dict[str, Any]:
    prompt = CONVERSATIONS[0]
    params = full_length_seed(backend, prompt, tokens)
    prompt_ids = backend.prompt_ids(prompt)
    from paired import interleaved

    ours, raws, ratio = interleaved(
        lambda _: backend_generate(backend, prompt, params),
        lambda _: raw_generate(backend, prompt_ids, params),
        pairs,
    )
    return {"backend_ms_per_token": 1000 * ours, "raw_ms_per_token": 1000 * raws, "ratio": ratio}


def text_cost(backend: LlamaCppBackend, tokens: int) -> float:
    """Seconds per token of what the backend adds to raw generation: decoding each id with the
    tokenizer and the text pipeline (stop strings, thinking filter), timed on its own.

    On a busy machine the pair ratio above is noisy; this isolates the backend's own work.
    """
    from qwen_backends.backends.token_loop import IncrementalDecoder
    from qwen_backends.thinking import TextPipeline

    ids = backend.tokenizer("The quick brown fox jumps over the lazy dog. " * 40)["input_ids"]
    ids = ids[:tokens] if len(ids) >= tokens else ids
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        decoder, pipeline = IncrementalDecoder(backend.tokenizer), TextPipeline(("</answer>",))
        for token in ids:
            pipeline.feed(decoder.add(token))
        pipeline.flush()
    return (time.perf_counter() - start) / (rounds * len(ids))


def mask_cost(backend: LlamaCppBackend) -> float:
    """Seconds per token that ``english_only`` adds, timed alone: what llama-cpp-python's custom
    sampler does around a logits processor (a record array over the candidates, the processor,
    the copy back), on an array shaped like the real one."""
    import ctypes

    import llama_cpp
    import numpy as np

    size = backend.n_vocab
    data = (llama_cpp.llama_token_data * size)()
    dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
    view = np.recarray(shape=(size,), dtype=dtype, buf=data)
    view.id[:] = np.arange(size)
    view.logit[:] = np.random.default_rng(0).standard_normal(size)
    backend._english()
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        records = np.recarray(
            shape=(size,),
            dtype=dtype,
            buf=(llama_cpp.llama_token_data * size).from_address(ctypes.addressof(data)),
        )
        records.logit[:] = backend._english_processor(None, records.logit)
        view.logit[:] = 0.0  # undo the -inf so every round does the same work
    return (time.perf_counter() - start) / rounds


def english_cost(backend: LlamaCppBackend, tokens: int, pairs: int) -> dict[str, Any]:
    """``english_only`` against unconstrained sampling, interleaved pairs."""
    return option_cost(backend, tokens, pairs, english_only=True)


def logprobs_cost(backend: LlamaCppBackend, tokens: int, pairs: int) -> dict[str, float]:
    """``logprobs=True, top_logprobs=5`` against off, default sampling, interleaved pairs."""
    return option_cost(backend, tokens, pairs, logprobs=True, top_logprobs=5)


def option_cost(
    backend: LlamaCppBackend, tokens: int, pairs: int, **option: Any
) -> dict[str, float]:
    """Seconds per token with the sampling ``option`` against without, interleaved pairs."""
    from paired import per_token_pairs

    prompt = CONVERSATIONS[0]

    def side(**extra: Any) -> Any:
        return lambda index: backend.generate(
            prompt, SamplingParams(seed=index, max_new_tokens=tokens, **extra)
        )

    return per_token_pairs(side(**option), side(), pairs)


def tokens_per_second(backend: Any, tokens: int) -> float:
    produced, seconds = 0, 0.0
    for seed, prompt in enumerate(CONVERSATIONS):
        result = backend.generate(prompt, SamplingParams(seed=seed, max_new_tokens=tokens))
        produced += result.completion_tokens
        seconds += result.seconds
    return produced / seconds


def speed(size: str, tokens: int, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    rates: dict[str, float] = {}
    with create_backend(
        backend="hf", model=str(tiny_checkpoint(size)), hf={"dtype": "float32"}
    ) as hf:
        tokens_per_second(hf, 4)  # warm-up
        rates["hf_float32"] = tokens_per_second(hf, tokens)
    for quant in ("q8_0", "q4_k_m"):
        with llamacpp(quant, size, threads) as backend:
            tokens_per_second(backend, 4)
            rates[f"llamacpp_{quant}"] = tokens_per_second(backend, tokens)
    return rates


_RSS_CHILD = """
import json, sys
from qwen_backends import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint, tiny_gguf
kind, size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "hf":
    import torch
    torch.set_num_threads(threads)
    backend = create_backend(backend="hf", model=str(tiny_checkpoint(size)),
                             hf={"dtype": "float32"})
else:
    backend = create_backend(backend="llamacpp", model=str(tiny_gguf(kind, size)),
                             llamacpp={"n_threads": threads, "n_ctx": 2048})
with backend:
    backend.generate("Name three primary colours.", SamplingParams(seed=0, max_new_tokens=32))
# VmHWM starts afresh at exec (ru_maxrss would keep the forking parent's peak).
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps(peak / 1024))
"""


def peak_rss(size: str, threads: int) -> dict[str, float]:
    """Peak resident memory (MiB) of one process per backend: load + one generation (Linux)."""
    result = {}
    for kind in ("hf", "q8_0", "q4_k_m"):
        done = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, kind, size, str(threads)],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        )
        name = "hf_float32" if kind == "hf" else f"llamacpp_{kind}"
        result[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench")
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("logprobs",), default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {"size": args.size, "threads": args.threads, "tokens": args.tokens}
    if args.only == "logprobs":
        with llamacpp("q8_0", args.size, args.threads) as backend:
            figures = logprobs_cost(backend, args.tokens, args.pairs)
        print("logprobs top 5 / off, per token (goal <= 1.05):", figures)
        return
    with llamacpp("q8_0", args.size, args.threads) as backend:
        report["overhead_q8_0"] = overhead(backend, args.tokens, args.pairs)
        print("overhead (backend / raw llama-cpp-python, per token):", report["overhead_q8_0"])
        added = text_cost(backend, args.tokens)
        raw = report["overhead_q8_0"]["raw_ms_per_token"] / 1000
        report["text_cost_us_per_token"] = added * 1e6
        report["overhead_bound"] = (raw + added) / raw
        print(f"backend's own work: {added * 1e6:.1f} us/token -> bound {(raw + added) / raw:.4f}")
        report["english_only_q8_0"] = english_cost(backend, args.tokens, args.pairs)
        print("english_only / unconstrained, per token:", report["english_only_q8_0"])
        added = mask_cost(backend)
        free = report["english_only_q8_0"]["baseline_ms_per_token"] / 1000
        report["mask_cost_ms_per_token"] = added * 1000
        report["english_only_bound"] = (free + added) / free
        bound = (free + added) / free
        print(f"english_only's own work: {added * 1000:.3f} ms/token -> bound {bound:.4f}")
        report["logprobs_q8_0"] = logprobs_cost(backend, args.tokens, args.pairs)
        print("logprobs top 5 / off, per token (goal <= 1.05):", report["logprobs_q8_0"])
    rates = speed(args.size, args.tokens, args.threads)
    report["tokens_per_second"] = rates
    report["speedup_vs_hf"] = {
        name: rate / rates["hf_float32"] for name, rate in rates.items() if name != "hf_float32"
    }
    print("tokens/s:", rates, "speed-up vs hf float32:", report["speedup_vs_hf"])
    report["peak_rss_mib"] = peak_rss(args.size, args.threads)
    print("peak RSS (MiB):", report["peak_rss_mib"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
