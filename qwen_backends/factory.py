"""Pick and build a backend by name: :func:`create_backend`.

The registry maps names to ``"module:Class"`` strings, so listing the choices imports nothing
and a backend's heavy dependencies load only when that backend is built.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import MissingDependencyError, UnknownBackendError
from qwen_backends.settings import Settings

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend

__all__ = ["BACKENDS", "BackendInfo", "backend_class", "create_backend", "missing_modules"]


@dataclass(frozen=True)
class BackendInfo:
    """Where a backend lives and what it needs.

    Attributes
    ----------
    target
        ``"module:Class"`` of the implementation.
    extra
        The pip extra that installs its dependencies.
    requires
        Importable module names the backend needs.
    """

    target: str
    extra: str
    requires: tuple[str, ...]


BACKENDS: dict[str, BackendInfo] = {
    "hf": BackendInfo(
        "qwen_backends.backends.hf:HFBackend", "hf", ("torch", "transformers", "accelerate")
    ),
    "ollama": BackendInfo("qwen_backends.backends.ollama:OllamaBackend", "ollama", ("ollama",)),
    "unsloth": BackendInfo(
        "qwen_backends.backends.unsloth:UnslothBackend", "unsloth", ("torch", "unsloth")
    ),
    "vllm": BackendInfo("qwen_backends.backends.vllm:VLLMBackend", "vllm", ("openai",)),
}


def missing_modules(name: str) -> list[str]:
    """The modules backend ``name`` needs that are not installed (cheap: imports nothing)."""
    return [module for module in _info(name).requires if importlib.util.find_spec(module) is None]


def backend_class(name: str) -> type[ModelBackend]:
    """Import and return the class of backend ``name``.

    Raises
    ------
    UnknownBackendError
        For an unregistered name (with a did-you-mean).
    MissingDependencyError
        When its pip extra is not installed.
    """
    info = _info(name)
    missing = missing_modules(name)
    if missing:
        raise MissingDependencyError(
            f"the {name} backend needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install 'qwen-backends[{info.extra}]'"
        )
    module_name, class_name = info.target.split(":")
    cls: type[ModelBackend] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create_backend(settings: Settings | None = None, **overrides: Any) -> ModelBackend:
    """Build the backend the settings select.

    Parameters
    ----------
    settings
        Resolved settings; ``None`` reads them from the environment, ``.env`` and YAML.
    **overrides
        Settings fields to change, e.g. ``backend="ollama"``, ``model="./my-model"``,
        ``hf={"dtype": "float32"}``, ``sampling={"temperature": 0}``.

    Examples
    --------
    >>> backend = create_backend(backend="hf", model="Qwen/Qwen3-4B")  # doctest: +SKIP
    >>> backend.generate("What is 2+2?").text  # doctest: +SKIP
    """
    settings = Settings(**overrides) if settings is None else settings.replace(**overrides)
    return backend_class(settings.backend)(settings)


def _info(name: str) -> BackendInfo:
    try:
        return BACKENDS[name]
    except KeyError:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownBackendError(
            f"unknown backend {name!r}; {hint}available: {', '.join(BACKENDS)}"
        ) from None
