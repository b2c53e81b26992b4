"""The light extras resolve without the PyTorch stack (pip's resolver, a dry run on Linux).

People pick llama.cpp, MLX, Ollama or a vLLM server precisely to avoid a multi-GB PyTorch
install, so ``[llamacpp]``, ``[mlx]``, ``[ollama]``, ``[vllm]`` and ``[serve]`` must not pull
torch, trl, datasets, accelerate or pandas. The check asks pip what it *would* install
(``pip install --dry-run --report``, nothing is installed); it needs PyPI (reachable on the
development machines and in CI). llama-cpp-python has no Linux wheel on PyPI: the wheel that
``scripts/setup.sh`` caches is offered to pip first, so its sdist is not downloaded.

For Apple silicon the same question goes to uv (``uv pip compile --python-platform
aarch64-apple-darwin``): pip's ``--platform`` only filters wheel tags and still evaluates
environment markers for the running Linux host, so it cannot resolve the Mac's ``mlx`` (Metal)
instead of Linux's ``mlx[cpu]``. MLX 0.32 ships wheels for macOS 14 and later.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_backends._cache import cache_dir

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "trl", "datasets", "accelerate", "pandas"}
#: Most packages each light extra may bring (the base install is 16 with qwen-backends).
MOST = {"llamacpp": 35, "mlx": 60, "ollama": 30, "vllm": 35, "serve": 30}


def resolve(extra: str, tmp_path: Path) -> list[str]:
    """The distributions pip would install for ``qwen-backends[extra]`` into an empty venv."""
    report = tmp_path / f"{extra}.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
        "--report", str(report), f"{ROOT}[{extra}]",
    ]  # fmt: skip
    wheels = cache_dir() / "wheels"
    if wheels.is_dir():
        command[4:4] = ["--find-links", str(wheels)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode and "Could not find a version" in done.stderr:
        pytest.fail(f"pip could not resolve [{extra}]: {done.stderr[-1500:]}")
    if done.returncode:
        pytest.skip(f"pip could not reach the package index: {done.stderr.strip()[-300:]}")
    installs = json.loads(report.read_text())["install"]
    return sorted(item["metadata"]["name"].lower().replace("_", "-") for item in installs)


@pytest.mark.parametrize("extra", sorted(MOST))
def test_a_light_extra_brings_no_pytorch_stack(extra: str, tmp_path: Path) -> None:
    names = resolve(extra, tmp_path)
    assert "qwen-backends" in names
    assert not HEAVY & set(names), f"[{extra}] pulls {sorted(HEAVY & set(names))}"
    assert len(names) <= MOST[extra], f"[{extra}] resolves to {len(names)} packages: {names}"


def resolve_for_apple_silicon(extra: str) -> list[str]:
    """The distributions uv resolves for ``qwen-backends[extra]`` on macOS 14 arm64."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).is_file():
        pytest.fail("uv is missing; it is a dev dependency: pip install -e '.[dev]'")
    command = [
        uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", extra,
        "--python-platform", "aarch64-apple-darwin", "--python-version", "3.11",
        "--no-header", "--no-annotate", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    if done.returncode and "No solution found" in done.stderr:
        pytest.fail(f"uv could not resolve [{extra}] for macOS arm64: {done.stderr[-1500:]}")
    if done.returncode:
        pytest.skip(f"uv could not reach the package index: {done.stderr.strip()[-300:]}")
    lines = done.stdout.splitlines()
    return sorted(line.split("==")[0].lower() for line in lines if "==" in line)


@pytest.mark.parametrize("extra", sorted(MOST))
def test_a_light_extra_resolves_on_apple_silicon_without_pytorch(extra: str) -> None:
    names = resolve_for_apple_silicon(extra)
    assert not HEAVY & set(names), f"[{extra}] pulls {sorted(HEAVY & set(names))} on macOS"
    # The project itself is the compiled file, not a listed requirement: one more package.
    assert len(names) + 1 <= MOST[extra], f"[{extra}] resolves to {len(names)} on macOS: {names}"
    if extra == "mlx":
        assert {"mlx", "mlx-metal", "mlx-lm"} <= set(names) and "mlx-cpu" not in names
