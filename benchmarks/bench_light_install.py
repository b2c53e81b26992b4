"""The llamacpp backend's light path: peak memory and time from import to the first token.

Each run is a fresh process (``python -c``) that imports ``qwen_backends``, loads the ``tiny``
q8_0 GGUF (:func:`qwen_backends.testing.tiny_gguf`) and streams one answer; it reports the
seconds from before the import to the first streamed text and its peak resident memory (VmHWM,
Linux). Three kinds of run, interleaved round by round so that machine load hits them alike:

- ``gguf``: the default, the tokenizer embedded in the GGUF (tokenizers + jinja2, no torch);
- ``transformers``: the same model with ``QWEN_LLAMACPP__TOKENIZER=offline``, the Qwen3
  tokenizer through transformers, which imports torch (the path every run took before);
- ``gguf+schema``: the default path answering with ``response_format`` (the grammar engine is
  built on first use).

Goals (the light-installs issue): peak RSS of ``gguf`` <= 250 MB; ``gguf`` import-to-first-token
at most half of ``transformers``'s.

``--real-size`` measures the Qwen3-4B-shaped Q4_K_M GGUF instead (built by
``benchmarks/bench_real_size.py`` into the cache; about 5 GB of memory, a minute a run), mapped
(``use_mmap``, llama.cpp's default) and read, and prints the peak minus the weights and the
KV cache. Goal: weights + KV + <= 250 MB.

Usage: ``.venv/bin/python benchmarks/bench_light_install.py [--rounds 5] [--real-size]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = """
import json, sys, time
start = time.perf_counter()
from qwen_backends import create_backend
from qwen_backends.testing import tiny_gguf
kind = sys.argv[1]
options = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 1024}
if kind == "transformers":
    options["tokenizer"] = "offline"
schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
extra = {"response_format": schema} if kind == "gguf+schema" else {}
with create_backend(backend="llamacpp", model=str(tiny_gguf("q8_0")), llamacpp=options) as b:
    stream = b.stream("Name a colour.", {"max_new_tokens": 16, "seed": 0}, **extra)
    first = None
    for _ in stream:
        first = time.perf_counter() if first is None else first
    stream.close()
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
print(json.dumps({"first_token_s": first - start, "peak_mib": peak / 1024, "heavy": heavy}))
"""

KINDS = ("gguf", "transformers", "gguf+schema")

_REAL_CHILD = """
import json, sys, time
start = time.perf_counter()
from qwen_backends import create_backend
path, n_ctx, use_mmap = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "mapped"
options = {"n_threads": 2, "n_ctx": n_ctx, "use_mmap": use_mmap}
with create_backend(backend="llamacpp", model=path, llamacpp=options) as backend:
    loaded = time.perf_counter()
    backend.generate("Name a colour.", {"max_new_tokens": 4, "seed": 0})
with open("/proc/self/status") as status:
    fields = dict(line.split(":", 1) for line in status)
peak_mib = int(fields["VmHWM"].split()[0]) / 1024
print(json.dumps({"load_s": loaded - start, "peak_mib": peak_mib}))
"""


def real_size(rounds: int, n_ctx: int = 2048) -> None:
    """Peak memory of the llamacpp backend on the real-shape Q4_K_M, mapped and read."""
    from qwen_backends._cache import cache_dir
    from qwen_backends.context_size import KV_BYTES_PER_TOKEN

    path = cache_dir() / "real-size" / "gguf-q4_k_m.gguf"
    if not path.is_file():
        raise SystemExit(f"{path} is missing; build it with benchmarks/bench_real_size.py")
    weights = path.stat().st_size / 2**20  # the tensors, plus a few MiB of vocabulary
    kv = KV_BYTES_PER_TOKEN * n_ctx / 2**20
    print(f"GGUF file {weights:.0f} MiB, KV cache at n_ctx {n_ctx}: {kv:.0f} MiB")
    for round_index in range(rounds):
        for mode in ("mapped", "read") if round_index % 2 == 0 else ("read", "mapped"):
            done = subprocess.run(
                [sys.executable, "-c", _REAL_CHILD, str(path), str(n_ctx), mode],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            over = result["peak_mib"] - weights - kv
            print(
                f"{mode}: load {result['load_s']:.1f} s, peak {result['peak_mib']:.0f} MiB, "
                f"{over:.0f} MiB over the GGUF + KV (goal <= 250 MB)"
            )


def one_run(kind: str) -> tuple[float, float, list[str]]:
    """One fresh process of ``kind``: seconds to the first token, peak MiB, heavy modules."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["first_token_s"]), float(result["peak_mib"]), list(result["heavy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--real-size", action="store_true")
    args = parser.parse_args()
    if args.real_size:
        real_size(args.rounds)
        return
    one_run("gguf")  # builds and caches the GGUF; warms the page cache
    runs: dict[str, list[tuple[float, float, list[str]]]] = {kind: [] for kind in KINDS}
    for round_index in range(args.rounds):
        for kind in KINDS if round_index % 2 == 0 else KINDS[::-1]:
            runs[kind].append(one_run(kind))
    report: dict[str, object] = {"rounds": args.rounds}
    first_token = {}
    for kind, results in runs.items():
        first_token[kind] = statistics.median(seconds for seconds, _, _ in results)
        report[kind] = {
            "first_token_s": first_token[kind],
            "peak_mib": max(peak for _, peak, _ in results),
            "heavy_modules": results[0][2],
        }
        print(kind, report[kind])
    ratio = first_token["gguf"] / first_token["transformers"]
    report["first_token_ratio"] = ratio
    print(f"import to first token, gguf / transformers: {ratio:.3f} (goal <= 0.5)")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
