"""Qwen3-4B at its real size: every backend that runs here, against the memory-bandwidth ceiling.

A random-weight checkpoint with Qwen3-4B's exact shape (``qwen-backends make-test-model --shape
qwen3-4b``, bfloat16, ~8 GB, cached) costs per token what the real model costs; its text is
gibberish, so every answer is greedy with a fixed number of new tokens.

1. Exports (built once into ``<cache>/real-size/``, each a measured subprocess of the CLI, which
   also runs its in-engine check): ``export gguf`` q8_0 and Q4_K_M, ``export mlx`` 4bit and
   8bit. Seconds and peak RSS of each (the largest single process of the command).
2. Per backend, one subprocess each (so peak RSS is that backend's alone): load seconds, peak
   RSS (``ru_maxrss``, which counts mapped weight files) and peak anonymous memory (sampled
   ``RssAnon``), prefill tokens/s on a ``--prompt-tokens`` prompt (one new token), decode
   tokens/s over ``--tokens`` new tokens (``(N - 1) / (t(N) - t(1))`` on two short prompts that
   differ in their first word, so no prompt cache helps), with ``--threads`` threads.
3. The ceiling beside each decode figure: memory bandwidth measured in this run (numpy copy of a
   1 GiB array, 1 and 2 threads, best of 5, before and after the backends) divided by the bytes
   of weights read per generated token in that format (every weight once; the tied embedding
   once, as the output layer), and the achieved fraction.
4. ``generate_batch`` of 8 short conversations on hf (``--batch-tokens`` each): tokens/s, against
   8x the single-stream ceiling (one weight read serves 8 tokens).

Memory: the parent holds no model; one backend runs at a time; a run whose estimated need is
above ``MemAvailable`` is skipped and says so (hf float32 needs ~16 GiB, run last).

Usage: ``.venv/bin/python benchmarks/bench_real_size.py [--only hf-bf16,llamacpp-q4_k_m]
[--threads 2] [--prompt-tokens 512] [--tokens 64] [--batch-tokens 32] [--no-exports]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from qwen_backends._cache import cache_dir
from qwen_backends.testing import REAL_SIZE, tiny_checkpoint

GIB = 1024**3
#: Qwen3-4B's parameters (the tied embedding counted once).
PARAMETERS = 4_022_468_096
#: Short prompts for the decode and batch figures: one word each, differing in the first token.
SHORT_PROMPTS = [
    "hi",
    "Hello",
    "Name three primary colours.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List the planets of the solar system.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
]


@dataclass(frozen=True)
class Run:
    """One backend configuration: how to create it and what it reads per token."""

    backend: str
    #: ``create_backend`` section overrides (the model path is filled in later).
    section: dict[str, Any]
    #: ``"checkpoint"`` or the name of an export.
    weights: str
    #: GiB of memory the run needs, to skip it when that much is not available.
    needs_gib: float
    batch: bool = False
    #: Runs only where CUDA is (scripts/gpu_check.sh); not in the default list.
    gpu: bool = False


EXPORTS: dict[str, list[str]] = {
    "gguf-q8_0": ["export", "gguf", "{src}", "--output", "{out}", "--quant", "q8_0"],
    "gguf-q4_k_m": ["export", "gguf", "{src}", "--output", "{out}", "--quant", "q4_k_m"],
    "mlx-4bit": ["export", "mlx", "{src}", "--output", "{out}", "--quant", "4bit"],
    "mlx-8bit": ["export", "mlx", "{src}", "--output", "{out}", "--quant", "8bit"],
}

RUNS: dict[str, Run] = {
    "llamacpp-q4_k_m": Run("llamacpp", {"n_ctx": 1024}, "gguf-q4_k_m", 4),
    "llamacpp-q8_0": Run("llamacpp", {"n_ctx": 1024}, "gguf-q8_0", 6),
    "mlx-4bit": Run("mlx", {"max_context": 1024}, "mlx-4bit", 5),
    "mlx-8bit": Run("mlx", {"max_context": 1024}, "mlx-8bit", 7),
    "hf-bf16": Run("hf", {"dtype": "bfloat16", "device": "cpu"}, "checkpoint", 10, batch=True),
    "vllm-cpu-bf16": Run("vllm", {}, "checkpoint", 12),
    "hf-f32": Run("hf", {"dtype": "float32", "device": "cpu"}, "checkpoint", 18, batch=True),
    "hf-cuda-bf16": Run(
        "hf", {"dtype": "bfloat16", "device": "cuda"}, "checkpoint", 2, batch=True, gpu=True
    ),
}


# -- measuring a subprocess ------------------------------------------------------------------------


@dataclass
class Measured:
    """Seconds, peak RSS (largest process of the tree) and output of one command."""

    seconds: float
    peak_rss: int
    returncode: int
    output: str


def measured(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``command`` and report its wall time and peak RSS (``wait4``'s ``ru_maxrss``)."""
    with tempfile.TemporaryFile() as sink:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sink.seek(0)
        output = sink.read().decode(errors="replace")
    return Measured(seconds, usage.ru_maxrss * 1024, process.returncode, output)


def available_gib() -> float:
    """``MemAvailable`` in GiB."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` shows them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- memory bandwidth ------------------------------------------------------------------------------


def copy_bandwidth(threads: int, size: int = GIB, repeats: int = 5) -> float:
    """Bytes per second moved (read + written) by numpy copies of a ``size`` array, best of
    ``repeats``, split over ``threads`` threads (numpy releases the GIL while copying)."""
    import numpy as np

    source = np.ones(size // 8, dtype=np.float64)
    target = np.empty_like(source)
    parts = np.array_split(np.arange(source.size), threads)
    bounds = [(int(part[0]), int(part[-1]) + 1) for part in parts]

    def copy(lo: int, hi: int) -> None:
        np.copyto(target[lo:hi], source[lo:hi])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=bound) for bound in bounds]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


# -- exports ---------------------------------------------------------------------------------------


def export_path(name: str) -> Path:
    """Where export ``name`` of the real-size checkpoint is cached."""
    suffix = ".gguf" if name.startswith("gguf") else ""
    return cache_dir() / "real-size" / f"{name}{suffix}"


def build_export(name: str, checkpoint: Path, threads: int) -> dict[str, Any]:
    """Run ``qwen-backends export ...`` once (measured); a cached result is reported as such."""
    target = export_path(name)
    if target.exists():
        return {"export": name, "cached": True, "path": str(target)}
    target.parent.mkdir(parents=True, exist_ok=True)
    # mlx-lm writes into its output as it goes: write beside it, rename when complete.
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.unlink(missing_ok=True)
    arguments = [
        part.format(src=checkpoint, out=partial if name.startswith("mlx") else target)
        for part in EXPORTS[name]
    ]
    if name.startswith("gguf"):
        arguments += ["--threads", str(threads)]
    result = measured([sys.executable, "-m", "qwen_backends.cli", *arguments])
    check: dict[str, Any] = {}
    if result.returncode == 0 and name.startswith("mlx"):
        partial.rename(target)
        checked = measured([sys.executable, __file__, "--check-mlx", str(target)])
        lines = [line for line in checked.output.splitlines() if line.startswith("RESULT ")]
        check = json.loads(lines[-1].removeprefix("RESULT ")) if lines else {"failed": True}
        check["check_seconds"] = round(checked.seconds, 1)
        check["check_peak_rss_gib"] = round(checked.peak_rss / GIB, 2)
    return {
        **check,
        "export": name,
        "seconds": round(result.seconds, 1),
        "peak_rss_gib": round(result.peak_rss / GIB, 2),
        "returncode": result.returncode,
        "size_gib": round(weights_bytes(target) / GIB, 2) if target.exists() else None,
        "load_average": load_average(),
        "output_tail": result.output.strip().splitlines()[-3:],
    }


def weights_bytes(path: Path) -> int:
    """Bytes of weights in a GGUF file or a folder of safetensors."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.glob("*.safetensors"))


def bytes_per_token(run: Run, checkpoint: Path) -> float:
    """Bytes of weights one decode step reads: every weight once (the output layer is the
    tied embedding, read once; the embedding lookup reads one row)."""
    if run.weights == "checkpoint":
        element = 4 if run.section.get("dtype") == "float32" else 2
        return float(PARAMETERS * element)
    return float(weights_bytes(export_path(run.weights)))


def check_mlx(export: str) -> dict[str, Any]:
    """The prompt half of ``check_mlx_export``: the export loads in the mlx backend and renders
    the probe conversations' prompt ids exactly as the checkpoint's tokenizer does.

    Its answer half is left out at this size: it needs the hf side in float32 (16 GiB) and
    MLX's Linux CPU build takes over a minute a token here (see :func:`mlx_cpu_matmul`)."""
    from qwen_backends import create_backend
    from qwen_backends.chat import render_prompt_ids
    from qwen_backends.export.gguf import PROBE_CONVERSATIONS
    from qwen_backends.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_checkpoint(REAL_SIZE)))
    with create_backend(backend="mlx", model=export) as backend:
        same = sum(
            backend.prompt_ids(list(chat)) == render_prompt_ids(tokenizer, list(chat))
            for chat in PROBE_CONVERSATIONS
        )
    return {"prompts_identical": f"{same}/{len(PROBE_CONVERSATIONS)}"}


def mlx_cpu_matmul(bits: int) -> dict[str, float]:
    """Milliseconds MLX takes here for one Qwen3-4B MLP matrix (9,728 x 2,560) times one row:
    ``bits``-bit quantized (what the mlx exports run) and bfloat16, best of 3."""
    import mlx.core as mx

    weight = mx.random.normal((9728, 2560)).astype(mx.bfloat16)
    packed, scales, biases = mx.quantize(weight, group_size=64, bits=bits)
    row = mx.random.normal((1, 2560)).astype(mx.bfloat16)
    mx.eval(packed, scales, biases, row, weight)

    def best(product: Any) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            mx.eval(product())
            times.append(time.perf_counter() - started)
        return round(1000 * min(times), 1)

    return {
        f"q{bits}_ms": best(
            lambda: mx.quantized_matmul(
                row, packed, scales, biases, transpose=True, group_size=64, bits=bits
            )
        ),
        "bf16_ms": best(lambda: row @ weight.T),
    }


# -- one backend, in its own process ---------------------------------------------------------------


class AnonPeak:
    """Samples this process's ``RssAnon`` every 50 ms and keeps the largest."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _status_kib("RssAnon") * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def exact_prompt(tokens: int) -> str:
    """A user message whose non-thinking prompt is exactly ``tokens`` tokens (rendered with the
    checkpoint's tokenizer, as every backend renders it)."""
    from qwen_backends.chat import render_prompt_ids
    from qwen_backends.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_checkpoint(REAL_SIZE)))

    def length(text: str) -> int:
        return len(render_prompt_ids(tokenizer, text))

    sentence = "The quick brown fox jumps over the lazy dog. "
    text = "Read this. " + sentence * max(0, (tokens - length("x")) // 11)
    while length(text) > tokens:
        text = text[: text.rstrip().rfind(" ")]
    while length(text) < tokens:
        text += " fox"
    if length(text) != tokens:
        raise RuntimeError(f"could not build a {tokens}-token prompt")
    return text


def child(name: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load backend ``name``, measure it, return the figures (runs in its own process)."""
    import resource

    from qwen_backends import create_backend
    from qwen_backends.sampling import SamplingParams

    run = RUNS[name]
    anon = AnonPeak()
    section = dict(run.section)
    if run.backend == "hf":
        import torch

        torch.set_num_threads(args.threads)
    elif run.backend == "llamacpp":
        section.update(n_threads=args.threads, n_threads_batch=args.threads)
    started = time.perf_counter()
    backend = create_backend(None, backend=run.backend, model=model, **{run.backend: section})
    load = time.perf_counter() - started
    greedy = SamplingParams.preset("greedy", max_new_tokens=1)
    backend.generate("warm up", greedy)
    long_prompt = exact_prompt(args.prompt_tokens)
    prefill = backend.generate(long_prompt, greedy)
    one = backend.generate(SHORT_PROMPTS[0], greedy)
    full = backend.generate(SHORT_PROMPTS[1], greedy.replace(max_new_tokens=args.tokens))
    figures: dict[str, Any] = {
        "run": name,
        "load_s": round(load, 1),
        "prompt_tokens": prefill.prompt_tokens,
        "prefill_tps": round(prefill.prompt_tokens / prefill.seconds, 2),
        "new_tokens": full.completion_tokens,
        "decode_tps": round((full.completion_tokens - 1) / (full.seconds - one.seconds), 3),
    }
    if run.batch and args.batch_tokens:
        batch_sampling = greedy.replace(max_new_tokens=args.batch_tokens)
        started = time.perf_counter()
        answers = backend.generate_batch(SHORT_PROMPTS, batch_sampling)
        seconds = time.perf_counter() - started
        produced = sum(answer.completion_tokens for answer in answers)
        figures.update(batch_tokens=produced, batch_tps=round(produced / seconds, 2))
    if run.gpu:
        import torch

        figures["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    backend.close()
    figures["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    figures["peak_anon_gib"] = round(anon.stop() / GIB, 2)
    return figures


def vllm_child(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The vllm backend against a vLLM-CPU server of the checkpoint (bfloat16); the server's
    whole process tree is sampled for peak RSS."""
    import psutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))
    from vllm_server import VLLMServer

    from qwen_backends import create_backend
    from qwen_backends.sampling import SamplingParams

    started = time.perf_counter()
    peak = 0
    with VLLMServer(
        model, max_model_len=2048, extra_args=("--dtype", "bfloat16"), startup_timeout=480
    ) as server:
        load = time.perf_counter() - started

        def tree_rss() -> int:
            root = psutil.Process(server._process.pid)
            members = [root, *root.children(recursive=True)]
            return sum(member.memory_info().rss for member in members)

        peak = tree_rss()
        backend = create_backend(
            backend="vllm", model=model, vllm={"base_url": server.base_url, "timeout": 900}
        )
        greedy = SamplingParams.preset("greedy", max_new_tokens=1)
        backend.generate("warm up", greedy)
        prefill = backend.generate(exact_prompt(args.prompt_tokens), greedy)
        one = backend.generate(SHORT_PROMPTS[0], greedy)
        full = backend.generate(SHORT_PROMPTS[1], greedy.replace(max_new_tokens=args.tokens))
        peak = max(peak, tree_rss())
        backend.close()
    return {
        "run": "vllm-cpu-bf16",
        "load_s": round(load, 1),
        "prompt_tokens": prefill.prompt_tokens,
        "prefill_tps": round(prefill.prompt_tokens / prefill.seconds, 2),
        "new_tokens": full.completion_tokens,
        "decode_tps": round((full.completion_tokens - 1) / (full.seconds - one.seconds), 3),
        "peak_rss_gib": round(peak / GIB, 2),
        "peak_anon_gib": None,
    }


# -- the parent ------------------------------------------------------------------------------------


def measure_backend(name: str, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`child` for ``name`` in a fresh interpreter, unless memory or files are short."""
    run = RUNS[name]
    if run.backend == "vllm":
        named = os.environ.get("QWEN_VLLM_PYTHON")
        python = Path(named) if named else cache_dir() / "vllm-venv" / "bin" / "python"
        if not python.is_file():
            return {"run": name, "skipped": f"no vLLM environment ({python} is missing)"}
    if run.backend == "mlx" and not args.with_mlx:
        bits = 4 if run.weights.endswith("4bit") else 8
        matmul = mlx_cpu_matmul(bits)
        token = matmul[f"q{bits}_ms"] / 1000 * PARAMETERS / (9728 * 2560)
        if token > 10:
            return {
                "run": name,
                **matmul,
                "skipped": f"MLX's CPU build multiplies one 9,728 x 2,560 {bits}-bit matrix by "
                f"one row in {matmul[f'q{bits}_ms']:.0f} ms here (bfloat16: "
                f"{matmul['bf16_ms']:.0f} ms), so a token would take ~{token:.0f} s and a "
                f"{args.prompt_tokens}-token prefill ~{token * args.prompt_tokens / 3600:.0f} h "
                "(--with-mlx runs it anyway)",
            }
    model = checkpoint if run.weights == "checkpoint" else export_path(run.weights)
    if not model.exists():
        return {"run": name, "skipped": f"no {run.weights} export (it failed or was skipped)"}
    free = available_gib()
    if free < run.needs_gib:
        return {
            "run": name,
            "skipped": f"needs ~{run.needs_gib} GiB, only {free:.1f} GiB available now",
        }
    command = [sys.executable, __file__, "--child", name, "--model", str(model), *_passed(args)]
    result = measured(command)
    lines = [line for line in result.output.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        tail = result.output.strip().splitlines()[-3:]
        return {"run": name, "failed": f"exit {result.returncode}", "output_tail": tail}
    figures: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    figures["available_gib_before"] = round(free, 1)
    figures["load_average"] = load_average()
    figures["bytes_per_token_gib"] = round(bytes_per_token(run, checkpoint) / GIB, 3)
    return figures


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        "--threads", str(args.threads),
        "--prompt-tokens", str(args.prompt_tokens),
        "--tokens", str(args.tokens),
        "--batch-tokens", str(args.batch_tokens),
        *(["--with-mlx"] if args.with_mlx else []),
    ]  # fmt: skip


def print_table(rows: list[dict[str, Any]], bandwidth: float) -> None:
    """The real-size table: load, peak memory, prefill, decode against the ceiling."""
    print(
        "\n| run | load s | peak RSS GiB | peak anon GiB | prefill tok/s | decode tok/s "
        "| ceiling tok/s | % of ceiling |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        if "decode_tps" not in row:
            reason = row.get("skipped") or row.get("failed")
            print(f"| {row['run']} | {reason} | | | | | | |")
            continue
        ceiling = bandwidth / (row["bytes_per_token_gib"] * GIB)
        print(
            f"| {row['run']} | {row['load_s']} | {row['peak_rss_gib']} | {row['peak_anon_gib']} "
            f"| {row['prefill_tps']} | {row['decode_tps']} | {ceiling:.2f} "
            f"| {100 * row['decode_tps'] / ceiling:.0f} % |"
        )
    for row in rows:
        if "batch_tps" in row:
            ceiling = 8 * bandwidth / (row["bytes_per_token_gib"] * GIB)
            print(
                f"{row['run']} generate_batch of 8: {row['batch_tps']} tok/s "
                f"({row['batch_tokens']} tokens), 8x ceiling {ceiling:.2f} tok/s "
                f"({100 * row['batch_tps'] / ceiling:.0f} %)"
            )


def main() -> None:
    """Exports, then each backend in its own process, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated runs, of: {', '.join(RUNS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64, help="forced new tokens (decode)")
    parser.add_argument("--batch-tokens", type=int, default=32, help="new tokens per batch answer")
    parser.add_argument("--no-exports", action="store_true", help="only use cached exports")
    parser.add_argument("--exports-only", action="store_true", help="build the exports, stop")
    parser.add_argument(
        "--with-mlx", action="store_true", help="run mlx even where its CPU build is too slow"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--check-mlx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_mlx:
        print("RESULT " + json.dumps(check_mlx(args.check_mlx)), flush=True)
        return
    if args.child:
        if RUNS[args.child].backend == "vllm":
            figures = vllm_child(args.model, args)
        else:
            figures = child(args.child, args.model, args)
        print("RESULT " + json.dumps(figures), flush=True)
        return

    names = args.only.split(",") if args.only else [n for n, r in RUNS.items() if not r.gpu]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {load_average()}")
    started = time.perf_counter()
    checkpoint = tiny_checkpoint(REAL_SIZE)
    print(f"checkpoint {checkpoint} ({time.perf_counter() - started:.0f} s to build or find)")
    if not args.no_exports:
        wanted = {RUNS[name].weights for name in names} - {"checkpoint"}
        for export in EXPORTS:
            if export in wanted:
                print(json.dumps(build_export(export, checkpoint, args.threads)), flush=True)
    if args.exports_only:
        return
    before = max(copy_bandwidth(1), copy_bandwidth(2))
    print(f"memory bandwidth (numpy copy, read + write): {before / 1e9:.1f} GB/s")
    rows = []
    for name in names:
        row = measure_backend(name, checkpoint, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    after = max(copy_bandwidth(1), copy_bandwidth(2))
    bandwidth = max(before, after)
    print(
        f"memory bandwidth after: {after / 1e9:.1f} GB/s; ceiling uses {bandwidth / 1e9:.1f} GB/s"
    )
    print_table(rows, bandwidth)
    print(f"\nfinished {time.strftime('%H:%M:%S UTC', time.gmtime())}, load {load_average()}")


if __name__ == "__main__":
    main()
