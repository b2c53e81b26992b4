"""What an Ollama server holds: its version, its models' template modes, and getting a model.

- :func:`parse_version` / :func:`check_version` -- servers older than :data:`MIN_THINK_VERSION`
  cannot switch thinking off and are refused;
- :func:`ollama_template_mode` / :func:`check_model` -- what a model does with ``think=false``
  (a thinking-only build is refused);
- :class:`ModelManager` -- :meth:`~qwen_backends.backends.ollama.OllamaBackend.ensure_model`:
  pull a library tag, or build the hybrid Qwen3-4B's local model (:func:`built_model_source`)
  from a hub GGUF with the non-thinking TEMPLATE and PARAMETERs of
  :mod:`qwen_backends.finetune.ollama`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import BackendUnavailableError, ModelNotFoundError, ThinkingModeError
from qwen_backends.family import FAMILIES, Family
from qwen_backends.settings import OLLAMA_NON_THINKING_TAGS
from qwen_backends.thinking import EMPTY_THINK_BLOCK, GENERATION_PROMPT, TemplateMode

if TYPE_CHECKING:
    import ollama

    from qwen_backends.backends.remote import Remote
    from qwen_backends.backends.server import StatusErrors

__all__ = [
    "INSTRUCT_TAGS",
    "MIN_THINK_VERSION",
    "ModelManager",
    "built_model_source",
    "check_model",
    "check_version",
    "ollama_template_mode",
    "parse_version",
    "thinking_only_reason",
]

logger = logging.getLogger(__name__)

#: Tags of Qwen3-4B-Instruct-2507, the non-thinking build the maintainers recommend.
INSTRUCT_TAGS: tuple[str, ...] = OLLAMA_NON_THINKING_TAGS
#: The first server version that understands the top-level ``think`` field.
MIN_THINK_VERSION: tuple[int, int, int] = (0, 9, 0)

_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?")
#: How an Ollama template reads the request's think field (``.Thinking`` is history, not it).
_THINK_SWITCH = re.compile(r"\.(Think|IsThinkSet)\b")
#: A template that hands over inside an opened think block (not the pre-filled empty one).
_OPENS_THINK = re.compile(re.escape(GENERATION_PROMPT + "<think>") + r"(?!\n\n</think>)")


# -- the server version ----------------------------------------------------------------------


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"0.12.4"`` -> ``(0, 12, 4)``; ``None`` for a missing or unreadable version.

    Development builds report ``0.0.0``; that is treated as unknown too.
    """
    match = _VERSION.match(text or "")
    if not match:
        return None
    major, minor, patch = (int(part or 0) for part in match.groups())
    return None if (major, minor, patch) == (0, 0, 0) else (major, minor, patch)


def check_version(version: str | None, *, remote: Remote) -> None:
    """Refuse a server older than :data:`MIN_THINK_VERSION`; an unknown version only warns.

    Raises
    ------
    BackendUnavailableError
        For a server that ignores ``think=false``.
    """
    parsed = parse_version(version)
    if parsed is None:
        logger.warning(
            "could not read the Ollama server version (%r) at %s; assuming it honours "
            "think=false (needs 0.9.0 or newer)",
            version,
            remote.url,
        )
    elif parsed < MIN_THINK_VERSION:
        raise BackendUnavailableError(
            f"Ollama {version} at {remote.url} is older than 0.9.0 and ignores "
            "think=false, so Qwen3 could think; upgrade Ollama (https://ollama.com/download)",
            retryable=False,
            backend=remote.backend,
        )


# -- the model's template --------------------------------------------------------------------


def ollama_template_mode(model: str, show: Mapping[str, Any]) -> tuple[TemplateMode, str]:
    """What an Ollama model does with ``think=false``, and why: ``(mode, reason)``.

    ``show`` is the ``/api/show`` answer (``capabilities``, ``template``, ``model_info``).

    - ``THINKING_ONLY``: its template opens ``<think>`` after the assistant header; or it has
      the ``thinking`` capability and its name or GGUF metadata says "thinking" (e.g.
      ``general.finetune: Thinking-2507``), or its ChatML template has none of the
      ``$.Think`` / ``$.IsThinkSet`` switches that honour ``think=false``;
    - ``HYBRID``: the ``thinking`` capability with such a switch (or a server-side renderer),
      or no capability and a template that pre-fills the empty think block (the Modelfile of
      :mod:`qwen_backends.finetune.ollama`, used by :meth:`ModelManager.ensure`);
    - ``NON_THINKING``: no ``thinking`` capability and no think block (Instruct-2507).
    """
    template = show.get("template") or ""
    if _OPENS_THINK.search(template):
        return TemplateMode.THINKING_ONLY, "its chat template opens <think> for every answer"
    if "thinking" not in (show.get("capabilities") or []):
        if GENERATION_PROMPT + EMPTY_THINK_BLOCK in template:
            return TemplateMode.HYBRID, "its template pre-fills the empty think block"
        return TemplateMode.NON_THINKING, "it has no thinking capability"
    info = show.get("model_info") or show.get("modelinfo") or {}
    labels = [model] + [
        str(info[key]) for key in ("general.name", "general.finetune") if info.get(key)
    ]
    for label in labels:
        lowered = label.lower()
        if "thinking" in lowered and "instruct" not in lowered:
            return TemplateMode.THINKING_ONLY, f"it is labelled {label!r}"
    if "<|im_start|>" in template and not _THINK_SWITCH.search(template):
        return TemplateMode.THINKING_ONLY, "its chat template has no switch for think=false"
    return TemplateMode.HYBRID, "its template honours think=false"


def thinking_only_reason(model: str, show: Mapping[str, Any]) -> str | None:
    """Why ``model`` looks like a thinking-only build, or ``None`` if it can answer directly.

    See :func:`ollama_template_mode` for the rules.
    """
    mode, reason = ollama_template_mode(model, show)
    return reason if mode is TemplateMode.THINKING_ONLY else None


def check_model(model: str, show: Any) -> TemplateMode:
    """The template mode of ``model`` from its ``/api/show`` answer (a ``ShowResponse``).

    Raises
    ------
    ThinkingModeError
        For a thinking-only build, naming the tags that work.
    """
    details = {
        "capabilities": show.capabilities,
        "template": show.template,
        "model_info": show.modelinfo,
    }
    mode, reason = ollama_template_mode(model, details)
    if mode is TemplateMode.THINKING_ONLY:
        raise ThinkingModeError(
            f"Ollama model {model} is a thinking-only build ({reason}); "
            f"think=false has no effect on it. Use a non-thinking model: `ollama pull "
            f"{INSTRUCT_TAGS[0]}` (alias {INSTRUCT_TAGS[1]}; "
            "QWEN_FAMILY=qwen3-4b-instruct-2507), or the hybrid "
            f"{FAMILIES['qwen3-4b'].ollama} that "
            "OllamaBackend.ensure_model() builds (QWEN_FAMILY=qwen3-4b)"
        )
    return mode


# -- getting the model ---------------------------------------------------------------------------


def built_model_source(model: str) -> tuple[Family, str] | None:
    """``(family, hub GGUF)`` when ``model`` is a family's locally built Ollama model.

    The hybrid Qwen3-4B has no Ollama library tag; :meth:`ModelManager.ensure` builds its model
    from ``hf.co/...``. ``None`` for a model that is pulled as it is.
    """
    for family in FAMILIES.values():
        if family.ollama == model and family.ollama_source:
            return family, family.ollama_source
    return None


class ModelManager:
    """Pulls or builds one model on an Ollama server.

    Parameters
    ----------
    client
        The backend's sync ``ollama.Client``.
    remote
        The backend's error table and retry policy.
    model
        The Ollama model name (a tag, or a family's built model).
    status_errors
        The backend's wording for a 4xx (a 404 says how to get the model).
    """

    def __init__(
        self, client: ollama.Client, remote: Remote, model: str, status_errors: StatusErrors
    ) -> None:
        self.client = client
        self.remote = remote
        self.model = model
        self.status_errors = status_errors

    def ensure(self, *, pull: bool, progress: bool) -> bool:
        """Make sure the model is on the server (see ``OllamaBackend.ensure_model``).

        Returns
        -------
        bool
            ``True`` if the model was pulled or built, ``False`` if it was already there.
        """
        try:
            self.remote.call(lambda: self.client.show(self.model), self.status_errors)
            return False
        except ModelNotFoundError:
            if not pull:
                raise
        built = built_model_source(self.model)
        if built is None:
            self.pull(self.model, progress)
        else:
            self.build(built[1], progress)
        return True

    def build(self, source: str, progress: bool) -> None:
        """Pull ``source`` (a hub GGUF) and create the model from it, non-thinking."""
        from qwen_backends.finetune.ollama import NON_THINKING_TEMPLATE, modelfile_parameters

        self.pull(source, progress)
        self.remote.call(
            lambda: self.client.create(
                model=self.model,
                from_=source,
                template=NON_THINKING_TEMPLATE,
                parameters=modelfile_parameters(),
            ),
            self.status_errors,
        )

    def pull(self, name: str, progress: bool) -> None:
        """Pull ``name`` with a tqdm progress bar (``progress=False`` hides it)."""
        from tqdm import tqdm

        bar = tqdm(
            desc=f"pulling {name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        )
        try:
            for update in self.client.pull(name, stream=True):
                if update.total:
                    if bar.total != update.total:
                        bar.reset(total=update.total)
                    bar.update((update.completed or 0) - bar.n)
                if update.status:
                    bar.set_postfix_str(update.status, refresh=False)
        except Exception as exc:
            raise self._pull_error(name, exc) from exc
        finally:
            bar.close()

    def _pull_error(self, name: str, exc: Exception) -> BaseException:
        import ollama

        if isinstance(exc, ollama.ResponseError) and exc.status_code in (-1, 404):
            where = (
                "check the hub repository and quantization (and the network)"
                if name.startswith("hf.co/")
                else f"check the tag (e.g. {INSTRUCT_TAGS[0]}) at https://ollama.com/library/qwen3/tags"
            )
            return ModelNotFoundError(
                f"could not pull {name}: {exc.error}; {where}", backend=self.remote.backend
            )
        return self.remote.translate(exc, status_errors=self.status_errors)
