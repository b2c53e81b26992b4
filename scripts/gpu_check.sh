#!/usr/bin/env bash
# The checks that need a GPU (issue 27), in one run of under 10 minutes on one CUDA GPU:
#   1. the hf backend on CUDA in bfloat16 on the real-shape checkpoint (Qwen3-4B's exact shape,
#      random weights): load s, prefill and decode tokens/s, peak GPU memory
#      (benchmarks/bench_real_size.py --only hf-cuda-bf16);
#   2. the Unsloth backend loading that checkpoint and answering non-thinking;
#   3. a short Unsloth LoRA fine-tune of the tiny checkpoint, its merged model and q8_0 GGUF
#      exported and the GGUF checked in llama.cpp (prompt ids, <|im_end|>, trained answers);
#   4. the conformance suite for the unsloth backend, and the GPU-marked Unsloth tests.
# Without a GPU it runs what needs none -- step 3 with the peft engine (the same merge, export and
# llama.cpp check on the CPU) and the Unsloth tests that need no GPU -- and lists what it skipped.
#
# Usage: bash scripts/gpu_check.sh            (PYTHON=... to use another interpreter)
# Results: printed, and the figures of step 1 as JSON lines; record them in docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d -t gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=()
skipped=()
started=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local begun=$SECONDS
  if timeout --kill-after=10 "$limit" "$@"; then
    echo "== $name: ok in $((SECONDS - begun)) s"
  else
    echo "== $name: FAILED (exit $?) after $((SECONDS - begun)) s"
    failed+=("$name")
  fi
}

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  gpu=1
  "$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB')"
else
  gpu=0
  echo "no CUDA GPU here: running the parts that need none"
fi
have_unsloth=0
"$PYTHON" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('unsloth') else 1)" && have_unsloth=1

# A LoRA run of the tiny checkpoint with its merged model and a q8_0 GGUF checked in llama.cpp
# (usage: python finetune_tiny.py ENGINE OUTPUT_DIR).
cat > "$WORK/finetune_tiny.py" <<'EOF'
import sys
from pathlib import Path

from qwen_backends.finetune import load_config, run_finetune
from qwen_backends.testing import tiny_checkpoint

engine, output = sys.argv[1], sys.argv[2]
config = load_config(
    Path("configs/finetune/cpu_smoke.yaml"),
    engine=engine,
    model=str(tiny_checkpoint("tiny")),
    dtype="auto" if engine == "unsloth" else "float32",
    export={"output_dir": output, "gguf": ["q8_0"], "verify_gguf": True},
    training={"max_steps": 40, "progress_bar": False},
)
result = run_finetune(config)
print(result.summary())
gguf = sorted(Path(output, "gguf").glob("*.gguf"))
assert (Path(output) / "merged" / "config.json").is_file(), "no merged model"
assert gguf, "no GGUF written"
print(f"{engine}: merged model and {', '.join(p.name for p in gguf)} written and checked")
EOF

if [ "$gpu" = 1 ]; then
  step "hf on CUDA, bfloat16, real shape" 300 \
    "$PYTHON" benchmarks/bench_real_size.py --only hf-cuda-bf16 --no-exports
else
  skipped+=("hf on CUDA in bfloat16 at real size (no GPU)")
fi

if [ "$gpu" = 1 ] && [ "$have_unsloth" = 1 ]; then
  step "Unsloth loads the real-shape checkpoint" 240 "$PYTHON" - <<'EOF'
import time

import torch

from qwen_backends import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import REAL_SIZE, tiny_checkpoint

model = str(tiny_checkpoint(REAL_SIZE))
started = time.perf_counter()
settings = {"load_in_4bit": False, "dtype": "bfloat16", "max_seq_length": 2048}
with create_backend(backend="unsloth", model=model, unsloth=settings) as backend:
    loaded = time.perf_counter() - started
    answer = backend.generate("hi", SamplingParams.preset("greedy", max_new_tokens=16))
    assert "<think>" not in answer.text
    print(
        f"unsloth: loaded in {loaded:.1f} s, {answer.completion_tokens} tokens at "
        f"{answer.tokens_per_second:.1f} tok/s, peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )
EOF
  step "Unsloth LoRA of the tiny checkpoint, merged + GGUF checked in llama.cpp" 240 \
    "$PYTHON" "$WORK/finetune_tiny.py" unsloth "$WORK/finetune-unsloth"
  step "conformance suite for unsloth, GPU-marked Unsloth tests" 240 \
    "$PYTHON" -m pytest -q -x tests/conformance -k unsloth tests/backends/test_unsloth.py
else
  why=$([ "$gpu" = 1 ] && echo "unsloth is not installed" || echo "no GPU")
  skipped+=("Unsloth loading the real-shape checkpoint ($why)")
  skipped+=("Unsloth LoRA of the tiny checkpoint with merged + GGUF export ($why)")
  skipped+=("conformance suite for unsloth ($why)")
  step "the same LoRA, merge and GGUF check with the peft engine on the CPU" 300 \
    "$PYTHON" "$WORK/finetune_tiny.py" peft "$WORK/finetune-peft"
  step "Unsloth tests that need no GPU" 120 \
    "$PYTHON" -m pytest -q tests/backends/test_unsloth.py
fi

echo
echo "gpu_check: $((SECONDS - started)) s"
for item in "${skipped[@]}"; do echo "skipped: $item"; done
for item in "${failed[@]}"; do echo "FAILED: $item"; done
[ ${#failed[@]} -eq 0 ]
