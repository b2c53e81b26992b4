"""The factory: registry lookups, errors, and a light top-level import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qwen_backends import registry
from qwen_backends.errors import ConfigurationError, MissingDependencyError, UnknownBackendError
from qwen_backends.factory import backend_class, create_backend
from qwen_backends.registry import BACKENDS, Registration


def test_unknown_backend_has_a_did_you_mean() -> None:
    with pytest.raises(UnknownBackendError, match="did you mean 'vllm'"):
        backend_class("vlm")
    with pytest.raises(ConfigurationError, match="did you mean 'ollama'"):
        create_backend(backend="olama")


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        BACKENDS,
        "hf",
        Registration("qwen_backends.backends.hf:HFBackend", "hf", ("no_such_module_xyz",), "x"),
    )
    with pytest.raises(MissingDependencyError) as caught:
        create_backend(backend="hf")
    assert "no_such_module_xyz" in str(caught.value)
    assert "pip install 'qwen-backends[hf]'" in str(caught.value)


def test_unsloth_without_the_package_names_its_extra() -> None:
    pytest.importorskip("torch")
    if registry.missing_modules("unsloth") != ["unsloth"]:
        pytest.skip("unsloth is installed here")
    with pytest.raises(MissingDependencyError, match=r"qwen-backends\[unsloth\]"):
        create_backend(backend="unsloth")


def test_import_loads_no_heavy_library() -> None:
    code = (
        "import sys, qwen_backends, qwen_backends.factory, qwen_backends.cli;"
        "heavy = [m for m in ('torch', 'transformers', 'ollama', 'unsloth', 'openai', 'numpy',"
        " 'trl', 'peft', 'tokenizers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_readiness_names_the_missing_extra_before_asking_the_probe() -> None:
    from qwen_backends.factory import readiness
    from qwen_backends.settings import Settings

    needy = Registration(
        "qwen_backends.backends.hf:HFBackend",
        "extra_x",
        ("no_such_module_xyz",),
        "x",
        readiness="no_such_module_xyz:never_called",
    )
    with BACKENDS.registered("needy", needy):
        assert readiness("needy", Settings()) == (
            "cannot start: missing no_such_module_xyz (pip install 'qwen-backends[extra_x]')"
        )
    with pytest.raises(UnknownBackendError, match="did you mean 'ollama'"):
        readiness("olama", Settings())
