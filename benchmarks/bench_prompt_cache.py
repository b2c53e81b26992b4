"""Prompt caching on the hf, mlx and llamacpp backends: the next turn pays for its new tokens only.

1. Time to first token (``generate`` with ``max_new_tokens=1``) of turn 2 of a conversation
   whose history is about 2,000 tokens, against a 20-token prompt alone: goal <= 1.3x with the
   cache (without it, the figure grows with the history; printed for reference).
   Then turn 2 after the model's *own* ``--answer-tokens`` answer, with the next turn prepared
   ahead during the reader's pause (``wait_idle``) and without (the answer computed again).
2. No cost when nothing is shared: a stream of unrelated prompts, per generated token, cache on
   against off (interleaved pairs; the call alone is timed): goal <= 1.02. The work done ahead
   between calls (tokens, idle milliseconds) is printed apart.
3. ``--memory``: 200 calls over 20 conversations that each grow a turn at a time (round robin,
   so entries are evicted), the peak RSS above the loaded model against the budget.

``--size qwen3-4b`` runs item 1 at Qwen3-4B's real shape (hf in bfloat16, llamacpp on the
Q4_K_M GGUF that bench_real_size.py exported), one round and without the no-cache instance
(each uncached 2,000-token prefill takes minutes there).

Each backend runs on the same checkpoint (llamacpp: its q8_0 GGUF), an instance with the cache on
(the default budget) against one with ``prompt_cache_mb=0``.

4. ``--floor``: turn 2 with a perfect cache and no library code -- the runtime itself computes
   the history's last 24 tokens after the rest is cached, against the short prompt alone: what
   attention over the history costs on that checkpoint, which no cache can remove.

Usage: ``.venv/bin/python benchmarks/bench_prompt_cache.py [--backend hf mlx llamacpp]
[--size bench|qwen3-4b] [--rounds 5] [--history 2000] [--threads 2] [--memory] [--floor]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from paired import interleaved

from qwen_backends import create_backend
from qwen_backends._cache import cache_dir
from qwen_backends.backends.next_turn import WAIT_S
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint, tiny_gguf

FIRST_TOKEN = SamplingParams.preset("greedy", max_new_tokens=1)


def conversation(backend: Any, history_tokens: int) -> list[dict[str, str]]:
    """A system prompt and one exchange making about ``history_tokens`` prompt tokens."""
    words = "The committee reviewed the quarterly figures and agreed on the next steps. "
    per_copy = len(backend.prompt_ids(words * 2)) - len(backend.prompt_ids(words))
    system = words * max(1, history_tokens // per_copy)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "Summarise the figures."},
        {"role": "assistant", "content": "Revenue grew and costs fell."},
        {"role": "user", "content": "And the outlook?"},
    ]


def seconds(backend: Any, messages: Any) -> float:
    start = time.perf_counter()
    backend.generate(messages, FIRST_TOKEN)
    return time.perf_counter() - start


def build(name: str, size: str, threads: int, **section: Any) -> Any:
    """Backend ``name`` on the ``size`` checkpoint with ``section`` settings."""
    real = size == "qwen3-4b"
    if name == "llamacpp":
        options = {"n_threads": threads, "n_threads_batch": threads, "n_ctx": 4096}
        gguf = cache_dir() / "real-size" / "gguf-q4_k_m.gguf" if real else tiny_gguf("q8_0", size)
        return create_backend(backend=name, model=str(gguf), llamacpp={**options, **section})
    if real and name == "hf":
        section = {"dtype": "bfloat16", **section}
    return create_backend(None, backend=name, model=str(tiny_checkpoint(size)), **{name: section})


def measure(name: str, args: argparse.Namespace) -> None:
    """Print the figures of backend ``name``."""
    real = args.size == "qwen3-4b"
    cached = build(name, args.size, args.threads)
    # At real size a second instance would double the memory: the cache is emptied instead.
    cold = cached if real else build(name, args.size, args.threads, prompt_cache_mb=0)
    long = conversation(cached, args.history)
    short = [{"role": "user", "content": "Name three primary colours, please, in one line."}]
    print(
        f"[{name}] checkpoint {args.size}, threads {args.threads}: history "
        f"{len(cached.prompt_ids(long))} prompt tokens, short prompt "
        f"{len(cached.prompt_ids(short))} tokens"
    )
    hot, plain, alone = [], [], []
    for _ in range(1 if real else args.rounds):
        cached.prompt_cache.clear()
        cached.generate(long[:-2], FIRST_TOKEN)  # turn 1: fills the cache
        hot.append(seconds(cached, long))
        if not real:
            plain.append(seconds(cold, long))
        cached.prompt_cache.clear()
        alone.append(seconds(cold, short))
    if real:
        plain = [float("nan")]
    ttft = {
        name: statistics.median(v) for name, v in (("hot", hot), ("cold", plain), ("alone", alone))
    }
    print(
        f"  time to first token, turn 2: cache {1000 * ttft['hot']:.1f} ms, no cache "
        f"{1000 * ttft['cold']:.1f} ms; a {len(cached.prompt_ids(short))}-token prompt alone "
        f"{1000 * ttft['alone']:.1f} ms"
    )
    print(
        f"  turn 2 with the cache / short prompt alone: {ttft['hot'] / ttft['alone']:.2f}x "
        f"(goal <= 1.3x); without the cache: {ttft['cold'] / ttft['alone']:.2f}x"
    )

    own_answer(name, args, cached, long[:-2], short, ttft["alone"])
    if real:
        cached.close()
        return
    prompts = [f"Question {i}: what is {i} times {i + 3}?" for i in range(64)]
    sampling = SamplingParams(max_new_tokens=args.tokens)
    waits: dict[int, list[float]] = {id(cached): [], id(cold): []}

    def side(backend: Any) -> Any:
        def seconds_per_token(index: int) -> float:
            start = time.perf_counter()
            result = backend.generate(prompts[index % 64], sampling.replace(seed=index))
            elapsed = time.perf_counter() - start
            # Not timed: the work ahead runs here, never inside a call or beside the other side.
            start = time.perf_counter()
            backend.wait_idle()
            waits[id(backend)].append(time.perf_counter() - start)
            return elapsed / result.completion_tokens

        return seconds_per_token

    for backend in (cached, cold):  # one warm-up call each
        side(backend)(0)
    stats = cached.prompt_cache.stats
    ahead_before = stats.ahead_tokens
    calls = 2 * args.rounds + 1
    on, off, ratio = interleaved(side(cached), side(cold), calls)
    print(
        f"  unrelated prompts, per token: cache on {1000 * on:.2f} ms, off {1000 * off:.2f} ms, "
        f"ratio {ratio:.3f} (goal <= 1.02)"
    )
    per_call = (stats.ahead_tokens - ahead_before) / calls
    idle = statistics.median(waits[id(cached)][1:])
    print(
        f"  work ahead on them (never inside a call): {per_call:.0f} tokens a call, median "
        f"{1000 * idle:.1f} ms of idle time ({1000 * WAIT_S:.0f} ms of it waiting for the "
        "backend to stay idle)"
    )
    print(
        f"  cache: {stats.calls} lookups, {stats.hits} hits, {stats.reused_tokens} tokens "
        f"reused, {stats.evicted} evicted, {stats.ahead_tokens} computed ahead"
    )
    cached.close()
    cold.close()


def floor(name: str, args: argparse.Namespace) -> None:
    """Turn 2's cost with a perfect cache and no library code: the runtime itself computes the
    last tokens of the history after the rest is cached, against the short prompt alone."""
    backend = build(name, args.size, args.threads, prompt_cache_mb=0)
    ids = backend.prompt_ids(conversation(backend, args.history))
    short = backend.prompt_ids(
        [{"role": "user", "content": "Name three primary colours, please, in one line."}]
    )
    new = 24  # what turn 2 computes after the cached history (see measure's figures)
    compute = _runtime_step(name, backend)
    hot, alone = [], []
    for _ in range(args.rounds):
        compute(ids[:-new], fresh=True)
        hot.append(compute(ids[-new:], fresh=False))
        alone.append(compute(short, fresh=True))
    ratio = statistics.median(hot) / statistics.median(alone)
    print(
        f"[{name}] the runtime alone: {new} tokens after {len(ids) - new:,} cached "
        f"{1000 * statistics.median(hot):.1f} ms, {len(short)} tokens alone "
        f"{1000 * statistics.median(alone):.1f} ms: {ratio:.2f}x (no cache can do better)"
    )
    backend.close()


def _runtime_step(name: str, backend: Any) -> Any:
    """``compute(ids, fresh) -> seconds``: the runtime's own forward over ``ids``, after what
    it holds (``fresh``: after nothing), the last position's logits evaluated."""
    if name == "llamacpp":
        llama = backend.llama

        def compute_llamacpp(ids: list[int], fresh: bool) -> float:
            if fresh:
                llama.reset()
            start = time.perf_counter()
            llama.eval(ids)
            return time.perf_counter() - start

        return compute_llamacpp
    if name == "mlx":
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        state: dict[str, Any] = {}

        def compute_mlx(ids: list[int], fresh: bool) -> float:
            if fresh:
                state["cache"] = make_prompt_cache(backend.model)
            # As mlx-lm's prefill: the keys and values of all but the last id, then the last id
            # with its logits (MLX computes the output layer for every position it is given).
            cache = state["cache"]
            start = time.perf_counter()
            backend.model(mx.array(ids[:-1])[None], cache=cache)
            mx.eval([layer.state for layer in cache])
            logits = backend.model(mx.array(ids[-1:])[None], cache=cache)
            mx.eval(logits)
            return time.perf_counter() - start

        return compute_mlx
    import torch
    from transformers import DynamicCache

    model = backend.model
    held: dict[str, Any] = {}

    def compute_hf(ids: list[int], fresh: bool) -> float:
        if fresh:
            held["cache"] = DynamicCache(config=model.config)
        cache = held["cache"]
        start = time.perf_counter()
        with torch.inference_mode():
            past = cache.get_seq_length()
            positions = torch.arange(past, past + len(ids))[None, :]
            model(
                input_ids=torch.tensor([ids]),
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return time.perf_counter() - start

    return compute_hf


def own_answer(
    name: str, args: argparse.Namespace, cached: Any, asked: Any, short: Any, alone: float
) -> None:
    """Turn 2 after the model's own answer (``--answer-tokens``), the next turn prepared ahead
    (the reader's pause: ``wait_idle``) and not, against the short prompt alone."""
    sampling = SamplingParams.preset("greedy", max_new_tokens=args.answer_tokens)
    # The switch is read per call: flipped on the one instance (memory, at real size).
    section = getattr(cached.settings, name)
    figures: dict[bool, tuple[float, int]] = {}
    for ahead in (True, False):
        section.prompt_cache_next_turn = ahead
        times, reused = [], 0
        for _ in range(1 if args.size == "qwen3-4b" else args.rounds):
            cached.prompt_cache.clear()
            answer = cached.generate(asked, sampling)
            said = answer.text if answer.text.strip() else f"{answer.text}(blank)"
            cached.wait_idle()  # the reader's pause
            turn = [*asked, {"role": "assistant", "content": said}, asked[-1] | {"content": "Why?"}]
            start = time.perf_counter()
            reused = cached.generate(turn, FIRST_TOKEN).cached_tokens
            times.append(time.perf_counter() - start)
            prompt = len(cached.prompt_ids(turn))
        figures[ahead] = (statistics.median(times), prompt - reused)
    section.prompt_cache_next_turn = True
    (on, on_new), (plain, plain_new) = figures[True], figures[False]
    print(
        f"  turn 2 after its own {args.answer_tokens}-token answer: prepared ahead "
        f"{1000 * on:.1f} ms ({on_new} tokens computed, {on / alone:.2f}x the short prompt "
        f"alone), not prepared {1000 * plain:.1f} ms ({plain_new} tokens, {plain / alone:.2f}x)"
    )


def memory(name: str, args: argparse.Namespace) -> None:
    """Item 3: the memory run with the cache and without, each in a fresh process."""
    grown = {}
    for budget in (0, args.budget_mb):
        command = [sys.executable, __file__, "--backend", name, "--size", args.size]
        command += ["--threads", str(args.threads), "--memory-child", "--budget-mb", str(budget)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        grown[budget] = report["grown_mib"]
        print(f"[{name}] budget {budget} MiB: {report}")
    extra = grown[args.budget_mb] - grown[0]
    verdict = "within" if extra <= args.budget_mb else "OVER"
    print(
        f"[{name}] the cache's own growth: {extra:+.0f} MiB against a {args.budget_mb} MiB budget "
        f"({verdict} it)"
    )


def memory_child(name: str, args: argparse.Namespace) -> None:
    """Peak RSS over 200 calls of 20 growing conversations, as one JSON line."""
    backend = build(name, args.size, args.threads, prompt_cache_mb=args.budget_mb)
    sampling = SamplingParams.preset("greedy", max_new_tokens=16)
    talks = [
        [{"role": "system", "content": f"You are assistant number {i}. " * 30}] for i in range(20)
    ]
    backend.generate("warm up", sampling)
    loaded = _peak_rss()
    for call in range(200):
        talk = talks[call % 20]
        talk.append({"role": "user", "content": f"Tell me fact {call}."})
        answer = backend.generate(talk, sampling).text.strip() or "(no answer)"
        talk.append({"role": "assistant", "content": answer})
    stats = backend.prompt_cache.stats
    report = {
        "loaded_mib": round(loaded / 2**20),
        "grown_mib": round((_peak_rss() - loaded) / 2**20),
        "longest_prompt": max(len(backend.prompt_ids(talk[:-1])) for talk in talks),
        "hits": stats.hits,
        "reused_tokens": stats.reused_tokens,
        "evicted": stats.evicted,
    }
    backend.close()
    print(json.dumps(report))


def _peak_rss() -> int:
    """This process's peak resident set, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", nargs="+", default=["hf", "mlx", "llamacpp"], help="backends to measure"
    )
    parser.add_argument("--size", default="bench", help="tiny or bench (512 hidden)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history", type=int, default=2000, help="history tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch / llama.cpp threads")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per unrelated prompt")
    parser.add_argument("--answer-tokens", type=int, default=64, help="turn 1's own answer")
    parser.add_argument("--memory", action="store_true", help="the memory run (item 3) only")
    parser.add_argument("--floor", action="store_true", help="turn 2 in the runtime alone")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=int, default=64, help="cache budget of --memory")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    for name in args.backend:
        if args.memory_child:
            memory_child(name, args)
        elif args.memory:
            memory(name, args)
        elif args.floor:
            floor(name, args)
        else:
            measure(name, args)


if __name__ == "__main__":
    main()
