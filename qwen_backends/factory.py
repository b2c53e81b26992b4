"""Pick and build a backend by name: :func:`create_backend`.

Names resolve through :data:`qwen_backends.registry.BACKENDS`, so a backend's heavy
dependencies load only when that backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwen_backends.errors import MissingDependencyError, UnknownBackendError, did_you_mean
from qwen_backends.registry import BACKENDS, load_target, missing_modules
from qwen_backends.settings import Settings

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend

__all__ = ["backend_class", "create_backend"]


def backend_class(name: str) -> type[ModelBackend]:
    """Import and return the class of backend ``name``.

    Raises
    ------
    UnknownBackendError
        For an unregistered name (with a did-you-mean).
    MissingDependencyError
        When its pip extra is not installed.
    """
    if name not in BACKENDS:
        raise UnknownBackendError(
            f"unknown backend {name!r}; {did_you_mean(name, BACKENDS)}"
            f"available: {', '.join(BACKENDS)}"
        )
    registration = BACKENDS[name]
    missing = missing_modules(name)
    if missing:
        raise MissingDependencyError(
            f"the {name} backend needs {', '.join(missing)}, which is not installed; "
            f"install it with: pip install 'qwen-backends[{registration.extra}]'"
        )
    cls: type[ModelBackend] = load_target(registration)
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
