"""English vocabulary: extraction speed, and the cost of English-only generation.

Side by side in one run:

1. extraction -- :func:`qwen_backends.vocab.extract_english_tokens` over the full 151,669-token
   vocabulary after the tokenizer is loaded (caches cleared before each repeat; goal <= 1 s) vs
   the naive loop that calls ``tokenizer.decode([id])`` per token (which does less: no exact
   bytes for partial tokens, no classification); the ratio naive / ours;
2. generation -- on one random-weight Qwen3 checkpoint (``qwen_backends.testing``), the same
   prompt and the same number of new tokens (``min_new_tokens = max_new_tokens``), greedy,
   through ``model.generate`` with the hf backend's generation config:
   unconstrained, ``english_only`` (the hf backend's precomputed mask, one ``masked_fill`` a
   step) and transformers' own ``suppress_tokens`` with the same blocked set. Repeats are
   interleaved and medians compared: english_only / unconstrained (goal <= 1.03) and
   suppress_tokens / english_only. Then the end-to-end ``backend.generate`` with and without
   ``english_only`` (token counts may differ there, so it reports per-token time).

::

    .venv/bin/python benchmarks/bench_vocab.py                 # "bench" checkpoint (hidden 512)
    .venv/bin/python benchmarks/bench_vocab.py --size tiny     # the test checkpoint (hidden 64)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from qwen_backends.chat import render_prompt_ids
from qwen_backends.factory import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint
from qwen_backends.tokenizer import load_tokenizer
from qwen_backends.vocab import allowed_token_ids, extract_english_tokens
from qwen_backends.vocab import categories as _categories
from qwen_backends.vocab import extract as _extract
from qwen_backends.vocab.categories import classify_bytes

PROMPT = [{"role": "user", "content": "Write a short paragraph about the sea."}]


def _median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``run`` (CPU time is steadier on a shared box)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _clear_caches() -> None:
    _categories._TABLES.clear()
    _categories._BY_OBJECT.clear()
    _extract._ALLOWED.clear()


def bench_extraction(repeats: int) -> None:
    tokenizer = load_tokenizer("offline")
    extract_english_tokens(tokenizer)  # loads wordfreq's list once, like any first call

    def ours() -> None:
        _clear_caches()
        extract_english_tokens(tokenizer)

    def allowed() -> None:
        _clear_caches()
        allowed_token_ids(tokenizer)

    def naive() -> None:
        for token_id in range(len(tokenizer)):
            tokenizer.decode([token_id])

    def naive_classified() -> None:
        # The same loop plus the same per-token criteria (still no exact bytes for fragments).
        for token_id in range(len(tokenizer)):
            text = str(tokenizer.decode([token_id]))
            classify_bytes(text.encode("utf-8", "surrogatepass"))

    results = {
        "extract_english_tokens (cold)": _median_seconds(ours, repeats),
        "allowed_token_ids (cold, no lexicon)": _median_seconds(allowed, repeats),
        "naive tokenizer.decode per token": _median_seconds(naive, repeats),
        "naive decode + classify per token": _median_seconds(naive_classified, repeats),
    }
    cached, _ = _median_seconds(lambda: allowed_token_ids(tokenizer), 100)
    print(f"## extraction over {len(tokenizer):,} tokens (median of {repeats})")
    print(f"{'':<38}{'wall s':>8}{'cpu s':>8}")
    for name, (wall, cpu) in results.items():
        print(f"{name:<38}{wall:8.3f}{cpu:8.3f}")
    print(f"allowed_token_ids (cached)            {cached * 1e6:8.1f} us")
    ours_wall, ours_cpu = results["extract_english_tokens (cold)"]
    for name in ("naive tokenizer.decode per token", "naive decode + classify per token"):
        wall, cpu = results[name]
        print(f"ratio {name} / ours: wall {wall / ours_wall:.2f}x, cpu {cpu / ours_cpu:.2f}x")
    print(f"goal <= 1 s: {'met' if min(ours_wall, ours_cpu) <= 1 else 'missed'}")


def bench_generation(size: str, new_tokens: int, repeats: int, threads: int) -> None:
    import torch

    from qwen_backends.backends.transformers_sampling import (
        AllowedTokensLogitsProcessor,
        generation_config_for,
    )

    model_dir = tiny_checkpoint(size)
    greedy = SamplingParams(
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        max_new_tokens=new_tokens,
        presence_penalty=0.0,
        repetition_penalty=1.0,
        seed=0,
        stop=(),
        english_only=False,
    )
    with create_backend(backend="hf", model=str(model_dir)) as backend:
        hf: Any = backend
        model, tokenizer = hf.model, hf.tokenizer
        torch.set_num_threads(threads)
        ids: Any = torch.tensor([render_prompt_ids(tokenizer, PROMPT)])
        mask = torch.ones(model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
        mask[torch.tensor(allowed_token_ids(tokenizer))] = False
        blocked = mask.nonzero().flatten().tolist()
        eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

        def config(**extra: Any) -> Any:
            cfg = generation_config_for(greedy, eos_token_ids=eos, pad_token_id=eos[1])
            cfg.min_new_tokens = new_tokens
            for key, value in extra.items():
                setattr(cfg, key, value)
            return cfg

        variants: dict[str, dict[str, Any]] = {
            "unconstrained": {"generation_config": config()},
            "english_only": {
                "generation_config": config(),
                "logits_processor": [AllowedTokensLogitsProcessor(mask)],
            },
            "suppress_tokens": {"generation_config": config(suppress_tokens=blocked)},
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        lengths: dict[str, int] = {}
        with torch.inference_mode():
            for name, kwargs in variants.items():  # warm-up
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
                lengths[name] = out.shape[1] - ids.shape[1]
            for _ in range(repeats):
                for name, kwargs in variants.items():
                    start = time.perf_counter()
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
                    times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(
            f"\n## generation, '{size}' checkpoint, prompt {ids.shape[1]} tokens, "
            f"{new_tokens} new tokens, greedy, median of {repeats} interleaved"
        )
        print(f"blocked ids: {len(blocked):,} of {mask.numel():,}; new tokens {lengths}")
        for name, value in medians.items():
            print(f"{name:<16} {value * 1000:9.1f} ms  {value / new_tokens * 1000:7.2f} ms/token")
        print(
            f"ratio english_only / unconstrained   "
            f"{medians['english_only'] / medians['unconstrained']:.3f}  (goal <= 1.03)"
        )
        print(
            f"ratio suppress_tokens / english_only "
            f"{medians['suppress_tokens'] / medians['english_only']:.3f}"
        )

        from transformers.generation.logits_process import SuppressTokensLogitsProcessor

        scores: Any = torch.randn(1, mask.numel())
        ours_step = AllowedTokensLogitsProcessor(mask)
        theirs_step = SuppressTokensLogitsProcessor(blocked)
        step_ours, _ = _median_seconds(lambda: [ours_step(ids, scores) for _ in range(200)], 5)
        step_theirs, _ = _median_seconds(lambda: [theirs_step(ids, scores) for _ in range(200)], 5)
        forward = medians["unconstrained"] / new_tokens
        print(
            f"one step of the mask: english_only {step_ours / 200 * 1e6:.1f} us, suppress_tokens "
            f"{step_theirs / 200 * 1e6:.1f} us ({step_theirs / step_ours:.1f}x); one unconstrained "
            f"decoding step {forward * 1e3:.2f} ms, so the mask adds "
            f"{100 * step_ours / 200 / forward:.2f}% per step"
        )

        per_token: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeats):
            for english in (False, True):
                result = backend.generate(PROMPT, greedy.replace(english_only=english))
                per_token[english].append(result.seconds / max(1, result.completion_tokens))
        free, only = (statistics.median(per_token[flag]) for flag in (False, True))
        print(
            f"backend.generate per token: unconstrained {free * 1000:.2f} ms, english_only "
            f"{only * 1000:.2f} ms, ratio {only / free:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", help="test checkpoint size (tiny, bench)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; load {os.getloadavg()}")
    bench_extraction(args.repeats)
    if not args.skip_generation:
        bench_generation(args.size, args.new_tokens, args.repeats, args.threads)


if __name__ == "__main__":
    main()
