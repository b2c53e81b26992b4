"""Shared fixtures: the offline Qwen3 tokenizer and tiny random-weight checkpoints.

Tests never reach the model hub: ``HF_HUB_OFFLINE=1`` is forced here. Built artefacts are cached
outside the repository (see ``qwen_backends._cache.cache_dir``), so only the first run builds them.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Run every test with no QWEN_* variables and outside the repo (no .env, no configs/)."""
    for name in list(os.environ):
        if name.startswith("QWEN_") and name != "QWEN_BACKENDS_CACHE":
            monkeypatch.delenv(name)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


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
