"""Shared fixtures: the offline Qwen3 tokenizer and tiny random-weight checkpoints.

Tests never reach the model hub: ``HF_HUB_OFFLINE=1`` is forced here. Built artefacts are cached
outside the repository (see ``qwen_backends._cache.cache_dir``), so only the first run builds them.
"""

from __future__ import annotations

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The server stand-ins and helpers (ollama_server, vllm_server) live in tests/backends; every
# test directory (backends, conformance, evaluation) imports them from there.
sys.path.insert(0, str(Path(__file__).parent / "backends"))

#: A vLLM server that already serves the ``vllm`` test checkpoint (read before the autouse
#: fixture clears QWEN_* variables).
_VLLM_TEST_URL = os.environ.get("QWEN_VLLM_TEST_URL")
#: ``QWEN_REAL_SIZE=1`` runs the ``realsize`` tests (Qwen3-4B's real shape); CI never sets it.
_REAL_SIZE = os.environ.get("QWEN_REAL_SIZE") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``realsize`` tests, with the reason, unless ``QWEN_REAL_SIZE=1``."""
    if _REAL_SIZE:
        return
    skip = pytest.mark.skip(
        reason="real size (Qwen3-4B's shape: an 8 GB checkpoint, GBs of RAM, minutes); "
        "run with QWEN_REAL_SIZE=1"
    )
    for item in items:
        if item.get_closest_marker("realsize") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Run every test with no QWEN_* variables and outside the repo (no .env, no configs/)."""
    from isolation import isolate  # tests/backends, on the path from above

    isolate(monkeypatch, tmp_path_factory.mktemp("cwd"))


#: Entries tests wrote into the shared checkpoints (reported at the end of the run).
_STRAY_WRITES: list[str] = []


@pytest.fixture(autouse=True)
def _shared_checkpoints_stay_as_built(request: pytest.FixtureRequest) -> Iterator[None]:
    """The cached tiny checkpoints are shared by the whole run: an entry a test writes into one
    is removed, so later tests see the checkpoint as built, and the test is named in the run's
    summary (a CI run once found a ``model/`` copy inside the tiny checkpoint; no local run
    has, so the culprit is still unknown)."""
    import shutil

    from qwen_backends._cache import cache_dir

    root = cache_dir() / "checkpoints"
    before = {p.name: set(os.listdir(p)) for p in root.iterdir()} if root.is_dir() else {}
    yield
    for name, entries in before.items():
        folder = root / name
        for entry in sorted(set(os.listdir(folder)) - entries if folder.is_dir() else ()):
            _STRAY_WRITES.append(f"{request.node.nodeid} wrote {entry!r} into {folder} (removed)")
            path = folder / entry
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the tests that wrote into a shared checkpoint."""
    for line in _STRAY_WRITES:
        terminalreporter.write_line(f"shared checkpoint changed: {line}", yellow=True)


@pytest.fixture(scope="session")
def offline_tokenizer() -> Any:
    """The byte-exact offline Qwen3-4B tokenizer (shared; do not mutate it)."""
    from qwen_backends.tokenizer import load_tokenizer

    return load_tokenizer("offline")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A cached tiny random-weight Qwen3 checkpoint (hidden 64, 2 layers)."""
    from qwen_backends.testing import tiny_checkpoint

    return tiny_checkpoint("tiny")


@pytest.fixture(scope="session")
def vllm_served() -> Iterator[tuple[str, str]]:
    """``(base_url, model)`` of ONE vLLM server for the whole run, serving the ``vllm`` checkpoint.

    Shared by tests/backends/test_vllm.py and the conformance suite (a start costs 60-100 s on
    2 cores). ``QWEN_VLLM_TEST_URL`` points at a server that already serves the checkpoint.
    Skipped without a vLLM environment (``scripts/setup.sh --with-vllm``).
    """
    from vllm_server import VLLMServer, vllm_python

    from qwen_backends.testing import tiny_checkpoint

    model = str(tiny_checkpoint("vllm"))
    if _VLLM_TEST_URL:
        yield _VLLM_TEST_URL, model
        return
    if vllm_python() is None:
        pytest.skip(
            "no vLLM environment: run `bash scripts/setup.sh --with-vllm` or set QWEN_VLLM_PYTHON"
        )
    # Compact JSON for response_format: with vLLM's default (any whitespace between JSON
    # tokens) random weights pad the document with whitespace until max_new_tokens.
    compact = (
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    )
    with VLLMServer(model, startup_timeout=600, extra_args=compact) as server:
        print(f"vLLM server ready after {server.startup_seconds:.0f} s")
        yield server.base_url, model
