"""Run a prompt set through the configured backend: :func:`run_evaluation`.

A run lives in ``<evaluation.output_dir>/<run_name>/``:

- ``run.json`` -- what produced it (backend, model, its template mode once known, sampling,
  prompt file);
- ``outputs.jsonl`` -- one record per finished prompt (see :func:`make_record`);
- ``summary.json`` -- :func:`qwen_backends.evaluation.metrics.summarize` plus the run's identity.

Multiple-choice prompts (``choices`` in the prompt set) are scored by log-likelihood instead of
answered (:mod:`qwen_backends.evaluation.choices`); their records add the choices' scores and
the summary adds accuracy and length-normalised accuracy.

Running the same configuration again resumes: finished ids are skipped, an incomplete trailing
record left by a kill is cut off, and a run directory made with different backend, model or
sampling is refused rather than mixed. One process at a time writes a run (a lock file in the
run directory; a second writer gets a one-line error). When a write fails (a full disk) the
records finished so far stay on disk and the same command resumes once the cause is fixed. A
damaged ``run.json`` is rewritten from the saved records, which carry the same identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from qwen_backends._files import ensure_directory
from qwen_backends.errors import ConfigurationError, QwenBackendsError, first_line
from qwen_backends.evaluation.metrics import contains_match, exact_match, summarize
from qwen_backends.evaluation.prompts import PromptCase, load_prompts
from qwen_backends.evaluation.store import OutputsFile, RunLock, write_json_atomic

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.results import Generation
    from qwen_backends.sampling import SamplingParams
    from qwen_backends.settings import Settings

__all__ = [
    "MANIFEST_FILE",
    "OUTPUTS_FILE",
    "SUMMARY_FILE",
    "EvaluationResult",
    "make_record",
    "prompt_fingerprint",
    "run_directory",
    "run_evaluation",
]

OUTPUTS_FILE = "outputs.jsonl"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "run.json"
#: Manifest keys that must match for a run to be resumed.
_IDENTITY = ("backend", "model", "sampling")

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What :func:`run_evaluation` did.

    Attributes
    ----------
    run_dir
        The run's directory (holds ``run.json``, ``outputs.jsonl``, ``summary.json``).
    summary
        The content of ``summary.json``.
    generated
        Prompts answered by this call.
    skipped
        Prompts already finished by an earlier call (resumed).
    dropped_partial
        Whether an incomplete trailing record from an interrupted run was removed.
    repaired_manifest
        Whether a damaged ``run.json`` was rewritten from the saved records.
    """

    run_dir: Path
    summary: dict[str, Any]
    generated: int = 0
    skipped: int = 0
    dropped_partial: bool = False
    repaired_manifest: bool = False
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def outputs_path(self) -> Path:
        """The run's ``outputs.jsonl``."""
        return self.run_dir / OUTPUTS_FILE

    @property
    def summary_path(self) -> Path:
        """The run's ``summary.json``."""
        return self.run_dir / SUMMARY_FILE


def run_directory(settings: Settings) -> Path:
    """``output_dir / run_name``, the run name defaulting to the backend name.

    Raises
    ------
    ConfigurationError
        When ``run_name`` is not a plain folder name.
    """
    name = settings.evaluation.run_name or settings.backend
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigurationError(
            f"evaluation.run_name={name!r} must be a plain folder name (no slashes); "
            "put the parent directory in evaluation.output_dir"
        )
    return settings.evaluation.output_dir / name


def run_evaluation(
    settings: Settings,
    *,
    backend: ModelBackend | None = None,
    progress: bool = True,
    progress_file: TextIO | None = None,
) -> EvaluationResult:
    """Answer every prompt of ``settings.evaluation.prompts`` not answered yet, then summarise.

    Parameters
    ----------
    settings
        Resolved settings: the backend, model and sampling to use and the ``evaluation``
        section. Every prompt is generated with ``settings.sampling``, passed explicitly.
    backend
        An already built backend for these settings; by default one is created with
        :func:`qwen_backends.create_backend` (only when something is left to do) and closed
        afterwards.
    progress
        Show a progress bar.
    progress_file
        Where the bar goes (default: standard error).

    Raises
    ------
    ConfigurationError
        For a bad prompt set, a run directory made with other settings, output records that
        do not belong to this prompt set, an output directory that cannot be created, or a run
        another process is writing (its pid is named). Generation errors propagate after the
        records finished so far (and a partial summary) are safely on disk.
    DiskFullError
        When the disk fills up; every finished record is kept and the run resumes later.
    """
    config = settings.evaluation
    prompts = load_prompts(config.prompts, allow_control_tokens=settings.allow_control_tokens)
    if backend is not None and backend.name != settings.backend:
        raise ConfigurationError(
            f"the backend passed ({backend.name}) is not the one the settings select "
            f"({settings.backend}); pass matching settings"
        )
    run_dir = run_directory(settings)
    manifest = _manifest(settings, config.prompts)
    ensure_directory(config.output_dir, "evaluation runs", "evaluation.output_dir (--output-dir)")
    ensure_directory(run_dir, "this evaluation run", "evaluation.run_name (--run-name)")
    with RunLock(run_dir):
        return _run_locked(settings, prompts, backend, progress, progress_file, run_dir, manifest)


def _run_locked(
    settings: Settings,
    prompts: list[PromptCase],
    backend: ModelBackend | None,
    progress: bool,
    progress_file: TextIO | None,
    run_dir: Path,
    manifest: dict[str, Any],
) -> EvaluationResult:
    config = settings.evaluation
    by_id = {case.id: case for case in prompts}
    selected = prompts[: config.limit] if config.limit else prompts
    outputs = OutputsFile(run_dir / OUTPUTS_FILE)
    records = outputs.recover()
    repaired = _check_or_write_manifest(run_dir, manifest, records)
    _check_records(records, by_id, outputs.path, config.prompts)
    done = {record["id"] for record in records}
    todo = [case for case in selected if case.id not in done]
    result = EvaluationResult(
        run_dir=run_dir,
        summary={},
        skipped=len(selected) - len(todo),
        dropped_partial=outputs.dropped_bytes > 0,
        repaired_manifest=repaired,
        records=records,
    )
    total = len({case.id for case in selected} | done)
    owned = backend is None and bool(todo)
    try:
        if todo:
            if backend is None:
                from qwen_backends.factory import create_backend

                backend = create_backend(settings)
            _generate_all(
                backend,
                todo,
                settings.sampling,
                outputs,
                result,
                bar=_progress_bar(total, total - len(todo), run_dir.name, progress, progress_file),
            )
    except BaseException:
        outputs.close()
        if owned and backend is not None:
            backend.close()
        # A summary of what is saved helps, but it must not hide the error that stopped the
        # run (on a full disk the summary cannot be written either; the next run writes it).
        with contextlib.suppress(Exception):
            manifest = _record_template_mode(run_dir, manifest, records)
            result.summary = _write_summary(run_dir, manifest, records, total)
        raise
    outputs.close()
    if owned and backend is not None:
        backend.close()
    manifest = _record_template_mode(run_dir, manifest, records)
    result.summary = _write_summary(run_dir, manifest, records, total)
    return result


def make_record(
    case: PromptCase,
    generation: Generation,
    *,
    backend: str,
    model: str,
    sampling: SamplingParams,
    prompt_sha256: str | None,
    template_mode: str | None = None,
) -> dict[str, Any]:
    """One ``outputs.jsonl`` record.

    Keys: ``id``, ``text``, ``finish_reason``, ``prompt_tokens``, ``cached_tokens`` (prompt
    tokens the backend's prompt cache served), ``completion_tokens``,
    ``seconds``, ``backend``, ``model``, ``template_mode`` (``hybrid`` / ``non-thinking``, or
    ``None`` when the backend could not tell), ``sampling``, ``expected`` (list or ``None``),
    ``exact_match`` / ``contains_match`` (``None`` when there is no expected answer),
    ``messages_sha256`` (the conversation) and ``prompt_sha256`` (the rendered non-thinking
    prompt when the backend renders it in this process, else ``None``).
    """
    scored = bool(case.expected)
    return {
        "id": case.id,
        "text": generation.text,
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "cached_tokens": generation.cached_tokens,
        "completion_tokens": generation.completion_tokens,
        "seconds": round(generation.seconds, 6),
        "backend": backend,
        "model": model,
        "template_mode": template_mode,
        "sampling": sampling.model_dump(mode="json"),
        "expected": list(case.expected) if scored else None,
        "exact_match": exact_match(generation.text, case.expected) if scored else None,
        "contains_match": contains_match(generation.text, case.expected) if scored else None,
        "messages_sha256": case.digest,
        "prompt_sha256": prompt_sha256,
    }


def prompt_fingerprint(backend: ModelBackend, case: PromptCase) -> str | None:
    """sha256 of the non-thinking prompt ``backend`` renders for ``case``, if it renders locally.

    Asks the backend itself (:meth:`~qwen_backends.backends.base.ModelBackend.rendered_prompt`);
    server-side backends return ``None`` (their parity is checked on prompt token counts).
    """
    if not backend.capabilities.renders_locally:
        return None
    prompt = backend.rendered_prompt(list(case.messages))
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _generate_all(
    backend: ModelBackend,
    todo: list[PromptCase],
    sampling: SamplingParams,
    outputs: OutputsFile,
    result: EvaluationResult,
    bar: Any,
) -> None:
    tokens = 0
    seconds = 0.0
    try:
        for case in todo:
            try:
                if case.choices:
                    record = _choice_record(backend, case, sampling)
                    generation = None
                else:
                    generation = backend.generate(list(case.messages), sampling)
            except QwenBackendsError as exc:
                # Same error class (the CLI's exit code and retry logic depend on it), with the
                # prompt it stopped at and how to go on.
                exc.args = (
                    f"prompt {case.id!r} stopped the run: {first_line(exc)}; the "
                    f"{len(result.records)} finished prompt(s) are saved in {outputs.path}: fix "
                    "that prompt (or the cause) and run the same command again to resume",
                )
                raise
            if generation is not None:
                mode = backend.template_mode()  # known once the backend answered
                record = make_record(
                    case,
                    generation,
                    backend=backend.name,
                    model=backend.model_name,
                    sampling=sampling,
                    prompt_sha256=prompt_fingerprint(backend, case),
                    template_mode=mode.value if mode is not None else None,
                )
                tokens += generation.completion_tokens
                seconds += generation.seconds
            outputs.append(record)
            result.records.append(record)
            result.generated += 1
            bar.set_postfix_str(f"{tokens / seconds if seconds else 0.0:.1f} tok/s", refresh=False)
            bar.update(1)
    finally:
        bar.close()


def _choice_record(
    backend: ModelBackend, case: PromptCase, sampling: SamplingParams
) -> dict[str, Any]:
    """A multiple-choice prompt: its choices scored, nothing generated."""
    from qwen_backends.evaluation.choices import make_choice_record

    mode = backend.template_mode()
    return make_choice_record(
        backend,
        case,
        sampling=sampling,
        prompt_sha256=prompt_fingerprint(backend, case),
        template_mode=mode.value if mode is not None else None,
    )


def _progress_bar(total: int, initial: int, name: str, enabled: bool, file: TextIO | None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=name,
        unit="prompt",
        disable=not enabled,
        file=file if file is not None else sys.stderr,
        dynamic_ncols=True,
    )


def _manifest(settings: Settings, prompts_file: Path) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version: str | None = version("qwen-backends")
    except PackageNotFoundError:
        package_version = None
    return {
        "run_name": run_directory(settings).name,
        "backend": settings.backend,
        "model": settings.model_name,
        "sampling": settings.sampling.model_dump(mode="json"),
        "prompts_file": str(prompts_file),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "qwen_backends_version": package_version,
    }


def _check_or_write_manifest(
    run_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]]
) -> bool:
    """Check the run's identity; returns whether a damaged ``run.json`` was rewritten."""
    import json

    path = run_dir / MANIFEST_FILE
    if not records:
        # Nothing answered yet (e.g. the model failed to load): the new settings simply apply.
        write_json_atomic(path, manifest)
        return False
    stored: Any = records[0]  # every record carries backend, model and sampling too
    damaged = False
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s is damaged (%s); checking the run against its records", path, exc)
            stored, damaged = records[0], True
        if not isinstance(stored, dict):
            stored, damaged = records[0], True
    differences = _differences({k: stored.get(k) for k in _IDENTITY}, manifest)
    if differences:
        raise ConfigurationError(
            f"{run_dir} holds a run made with other settings ({'; '.join(differences)}); "
            "resume only with the same backend, model and sampling: set evaluation.run_name "
            "(or --run-name) to start a new run, or delete that directory"
        )
    if damaged or not path.is_file():
        write_json_atomic(path, manifest)
    return damaged


def _differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in stored:
        old, new = stored[key], current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif key == "model" and _same_folder(old, new):
            continue  # ../model and /abs/model name the same checkpoint
        elif old != new:
            found.append(f"{prefix}{key} was {old!r}, now {new!r}")
    return found


def _same_folder(first: Any, second: Any) -> bool:
    """Whether two model names are paths of the same existing folder."""
    if not (isinstance(first, str) and isinstance(second, str)):
        return False
    one, other = Path(first).expanduser(), Path(second).expanduser()
    try:
        return one.is_dir() and other.is_dir() and one.resolve() == other.resolve()
    except OSError:
        return False


def _check_records(
    records: list[dict[str, Any]], by_id: dict[str, PromptCase], outputs: Path, prompts: Path
) -> None:
    for record in records:
        case = by_id.get(record["id"])
        if case is None:
            raise ConfigurationError(
                f"{outputs} has a record for id {record['id']!r}, which {prompts} no longer "
                "contains; start a new run (evaluation.run_name) for a different prompt set"
            )
        if record.get("messages_sha256") != case.digest:
            raise ConfigurationError(
                f"prompt {case.id!r} ({prompts}:{case.line}) changed since it was answered in "
                f"{outputs}; start a new run (evaluation.run_name) or restore the prompt"
            )


def _record_template_mode(
    run_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]]
) -> dict[str, Any]:
    """Add the template mode the records report to ``run.json`` (once it is known)."""
    import json

    modes = {record.get("template_mode") for record in records} - {None}
    if len(modes) != 1:
        return manifest
    path = run_dir / MANIFEST_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else manifest
    except (OSError, json.JSONDecodeError):
        return manifest
    mode = modes.pop()
    if stored.get("template_mode") != mode:
        stored = {**stored, "template_mode": mode}
        write_json_atomic(path, stored)
    return {**manifest, "template_mode": mode}


def _write_summary(
    run_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]], total: int
) -> dict[str, Any]:
    summary = {
        **{key: manifest[key] for key in ("run_name", "backend", "model", "sampling")},
        "template_mode": manifest.get("template_mode"),
        "prompts_file": manifest["prompts_file"],
        **summarize(records, total),
    }
    if run_dir.is_dir():
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary
