"""Pick and build a backend by name: :func:`create_backend`.

Names resolve through :data:`qwen_backends.registry.BACKENDS`, so a backend's heavy
dependencies load only when that backend is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwen_backends.errors import MissingDependencyError, UnknownBackendError
from qwen_backends.registry import BACKENDS, load_target, missing_modules
from qwen_backends.settings import Settings

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend

__all__ = ["backend_class", "create_backend", "prompt_cache_status", "readiness"]


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


def prompt_cache_status(name: str, settings: Settings) -> str:
    """Whether backend ``name`` keeps a prompt cache, and how large (for ``info``).

    In-process backends with :attr:`Capabilities.prompt_cache
    <qwen_backends.backends.base.Capabilities.prompt_cache>` report their ``prompt_cache_mb``;
    server backends say their server caches on its own; any other says it has none.
    """
    from qwen_backends.backends.local import LocalBackend

    try:
        cls = backend_class(name)
    except MissingDependencyError:
        return "unknown (its extra is not installed)"
    if not cls.capabilities.prompt_cache:
        if issubclass(cls, LocalBackend):
            return "none (every call computes its whole prompt)"
        return "none in this library (the server keeps its own prompt cache)"
    budget = getattr(getattr(settings, name, None), "prompt_cache_mb", None)
    variable = f"QWEN_{name.upper()}__PROMPT_CACHE_MB"
    if not budget:
        return f"off ({variable}=0)"
    return f"on, {budget:,} MiB ({variable}; 0 turns it off)"


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
