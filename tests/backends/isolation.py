"""Tests run as a new user would: no QWEN_* settings, no OLLAMA_HOST, no configs/ or .env in cwd.

:func:`isolate` is what the autouse fixture in tests/conftest.py does for every test;
:func:`isolated_in` does the same for module- and session-scoped fixtures (a backend loaded once).
``QWEN_BACKENDS_CACHE`` is kept: it points at the built checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def isolate(patch: pytest.MonkeyPatch, directory: Path) -> None:
    """Clear QWEN_* (but the cache) and OLLAMA_HOST and move to ``directory``, through ``patch``."""
    for name in list(os.environ):
        if name.startswith("QWEN_") and name != "QWEN_BACKENDS_CACHE":
            patch.delenv(name)
    patch.delenv("OLLAMA_HOST", raising=False)
    patch.chdir(directory)


@contextlib.contextmanager
def isolated_in(directory: Path) -> Iterator[None]:
    """:func:`isolate` until the block ends (for fixtures wider than one test)."""
    with pytest.MonkeyPatch.context() as patch:
        isolate(patch, directory)
        yield
