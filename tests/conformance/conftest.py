"""Fixtures of the conformance suite: ``conformant`` (every backend) and ``server_harness``.

The backends and how each is built live in harnesses.py (:data:`harnesses.HARNESSES`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from harnesses import BUILDERS, HARNESSES, SERVER_HARNESSES, Harness

_BUILT: dict[str, Harness] = {}


def _get(name: str, request: pytest.FixtureRequest) -> Harness:
    """The harness of ``name``, built once per run with no QWEN_* variables, outside the repo."""
    if name not in _BUILT:
        with pytest.MonkeyPatch.context() as patch:
            for variable in list(os.environ):
                if variable.startswith("QWEN_") and variable != "QWEN_BACKENDS_CACHE":
                    patch.delenv(variable)
            patch.chdir(request.getfixturevalue("tmp_path_factory").mktemp(f"{name}-cwd"))
            built = BUILDERS[name](request)
        _BUILT[name] = built

        def finish() -> None:
            _BUILT.pop(name, None)
            built.backend.close()
            for close in reversed(built.closers):
                close()

        _FINALIZERS.append(finish)
    return _BUILT[name]


_FINALIZERS: list[Callable[[], None]] = []


# Module scope: the harnesses (and the echo registration) end with their test module, never
# leaking into the rest of the run (a package scope needs an __init__.py, which we do not use).
@pytest.fixture(scope="module", autouse=True)
def _close_harnesses() -> Iterator[None]:
    yield
    while _FINALIZERS:
        _FINALIZERS.pop()()


@pytest.fixture(params=HARNESSES)
def conformant(request: pytest.FixtureRequest) -> Harness:
    """Each backend of :data:`HARNESSES` in turn (each built once per run)."""
    return _get(request.param, request)


@pytest.fixture(params=SERVER_HARNESSES)
def server_harness(request: pytest.FixtureRequest) -> Harness:
    """Each server backend of :data:`HARNESSES` in turn."""
    return _get(request.param, request)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the mlx params their own timeout (upstream reports MLX hangs on Linux CPU)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("conformant") == "mlx":
            item.add_marker(pytest.mark.mlx)
            item.add_marker(pytest.mark.timeout(300))
