"""Pick and build a backend by name: :func:`create_backend`.

Names resolve through :data:`qwen_backends.registry.BACKENDS`, so a backend's heavy
dependencies load only when that backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwen_backends.errors import UnknownBackendError
from qwen_backends.registry import BACKENDS, load_target, missing_modules
from qwen_backends.settings import Settings

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend

__all__ = ["backend_class", "create_backend", "readiness"]


def backend_class(name: str) -> type[ModelBackend]:
    """Import and return the class of backend ``name`` (:meth:`Registry.resolve
    <qwen_backends.registry.Registry.resolve>` over :data:`~qwen_backends.registry.BACKENDS`).

    Raises
    ------
    UnknownBackendError
        For an unregistered name (with a did-you-mean).
    MissingDependencyError
        When its pip extra is not installed.
    """
    cls: type[ModelBackend] = BACKENDS.resolve(name)
    return cls


def readiness(name: str, settings: Settings) -> str:
    """A short verdict on whether backend ``name`` can start on this machine (for ``info``).

    Names the pip extra when its modules are missing; otherwise asks the backend's registered
    readiness probe (:attr:`~qwen_backends.registry.Registration.readiness_target`).
    """
    if name not in BACKENDS:
        raise UnknownBackendError(BACKENDS.unknown(name))
    registration = BACKENDS[name]
    missing = missing_modules(registration)
    if missing:
        return (
            f"cannot start: missing {', '.join(missing)} "
            f"(pip install 'qwen-backends[{registration.extra}]')"
        )
    verdict: str = load_target(registration.readiness_target)(settings)
    return verdict


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
