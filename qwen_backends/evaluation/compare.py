"""Compare two runs side by side, with a prompt-parity check: :func:`compare_runs`.

Parity asks whether every shared conversation reached both runtimes as the same prompt:

- when both runs rendered prompts in this process (``prompt_sha256`` in their records: the
  hf and unsloth backends), the sha256 of the rendered non-thinking prompt text must match;
- otherwise (a server renders the prompt: ollama, vllm) the prompt token counts the runtimes
  report must match -- a cheaper check that still catches a missing empty think block, a
  ``/no_think`` suffix or a different template.

Conversations themselves are compared by ``messages_sha256`` first: a different conversation
under the same id is reported as such, not as a rendering difference.

Each run records its model and template mode (``hybrid`` for Qwen3-4B, ``non-thinking`` for
Qwen3-4B-Instruct-2507). When the two runs used different models (different
:mod:`~qwen_backends.family` releases, or names that cannot be matched) or different template
modes, the report says so at the top (:attr:`Comparison.warnings`): the outputs then compare two
models, not two runtimes of one model, and prompt parity cannot hold across template modes, so
it is not checked then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation.metrics import format_rate, summarize
from qwen_backends.evaluation.runner import MANIFEST_FILE, OUTPUTS_FILE
from qwen_backends.evaluation.store import OutputsFile
from qwen_backends.family import family_for_model

__all__ = ["Comparison", "ParityCheck", "RunData", "compare_runs", "load_run", "model_warnings"]

#: Longest output text shown in a report cell.
TEXT_LIMIT = 240


@dataclass(frozen=True)
class RunData:
    """A run read back from disk.

    Attributes
    ----------
    path
        The run directory.
    manifest
        ``run.json`` (empty when missing).
    records
        Output records by id, in file order.
    """

    path: Path
    manifest: dict[str, Any]
    records: dict[str, dict[str, Any]]

    def identity(self, key: str) -> Any:
        """``backend`` / ``model`` / ``template_mode`` / ``sampling`` from the manifest, else
        from the records (the first that has it)."""
        if self.manifest.get(key) is not None:
            return self.manifest[key]
        for record in self.records.values():
            if record.get(key) is not None:
                return record[key]
        return None


@dataclass
class ParityCheck:
    """Outcome of the prompt-parity check.

    Attributes
    ----------
    compared
        Shared ids whose prompts were compared.
    by_hash, by_tokens
        How many were compared by rendered-prompt sha256, and by prompt token count.
    mismatches
        ``(id, what differs)`` for every shared id whose prompt differs.
    only_a, only_b
        Ids present in one run only.
    not_checked
        Why parity was not checked at all (the runs used different template modes).
    """

    compared: int = 0
    by_hash: int = 0
    by_tokens: int = 0
    mismatches: list[tuple[str, str]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    not_checked: str | None = None

    @property
    def identical(self) -> bool:
        """True when every shared prompt matched and there was at least one."""
        return self.not_checked is None and self.compared > 0 and not self.mismatches


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_runs`: the markdown report and the parity verdict.

    Attributes
    ----------
    markdown
        The report.
    parity
        The prompt-parity check.
    warnings
        What makes the runs not comparable as two runtimes of one model (different models or
        template modes); shown at the top of the report.
    """

    markdown: str
    parity: ParityCheck
    warnings: tuple[str, ...] = ()


def load_run(path: str | Path) -> RunData:
    """Read a run directory (or its ``outputs.jsonl``) without modifying it.

    Raises
    ------
    ConfigurationError
        When there is no ``outputs.jsonl`` there, or it is damaged.
    """
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    outputs = run_dir / OUTPUTS_FILE
    if not outputs.is_file():
        raise ConfigurationError(
            f"{path} is not an evaluation run (no {OUTPUTS_FILE} in {run_dir}); pass a run "
            "directory written by `qwen-backends eval`"
        )
    records = OutputsFile(outputs).recover(repair=False)
    manifest: dict[str, Any] = {}
    manifest_path = run_dir / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}
    return RunData(run_dir, manifest, {record["id"]: record for record in records})


def check_parity(a: RunData, b: RunData) -> ParityCheck:
    """Compare the prompts of the ids both runs answered (see the module docs)."""
    check = ParityCheck(
        only_a=[i for i in a.records if i not in b.records],
        only_b=[i for i in b.records if i not in a.records],
    )
    for key, left in a.records.items():
        right = b.records.get(key)
        if right is None:
            continue
        check.compared += 1
        if left.get("messages_sha256") != right.get("messages_sha256"):
            check.mismatches.append((key, "different conversations under the same id"))
        elif left.get("prompt_sha256") and right.get("prompt_sha256"):
            check.by_hash += 1
            if left["prompt_sha256"] != right["prompt_sha256"]:
                check.mismatches.append((key, "rendered prompt text differs (sha256)"))
        else:
            check.by_tokens += 1
            if left.get("prompt_tokens") != right.get("prompt_tokens"):
                check.mismatches.append(
                    (
                        key,
                        f"prompt token counts differ ({left.get('prompt_tokens')} vs "
                        f"{right.get('prompt_tokens')})",
                    )
                )
    return check


def model_warnings(a: RunData, b: RunData) -> list[str]:
    """Why ``a`` and ``b`` are not two runtimes of one model (empty when they are)."""
    warnings = []
    model_a, model_b = a.identity("model"), b.identity("model")
    if model_a != model_b:
        family_a = family_for_model(str(model_a)) if model_a else None
        family_b = family_for_model(str(model_b)) if model_b else None
        if family_a is None or family_b is None:
            warnings.append(
                f"**Different models?** A ran `{model_a}`, B ran `{model_b}`; the names do not "
                "show that they are the same model, so differences may come from the models, "
                "not the runtimes."
            )
        elif family_a is not family_b:
            warnings.append(
                f"**Different models**: A ran {family_a.title.split(' (')[0]} (`{model_a}`), B "
                f"ran {family_b.title.split(' (')[0]} (`{model_b}`). Outputs and scores compare "
                "two models, not two runtimes of one model (set the same QWEN_FAMILY for both "
                "runs to compare runtimes)."
            )
    mode_a, mode_b = a.identity("template_mode"), b.identity("template_mode")
    if mode_a and mode_b and mode_a != mode_b:
        warnings.append(
            f"**Different template modes**: A `{mode_a}`, B `{mode_b}`. The prompts differ by "
            "design (the hybrid's ends with the empty think block, Instruct-2507's does not), "
            "so prompt parity cannot hold and is not checked."
        )
    return warnings


def compare_runs(run_a: str | Path, run_b: str | Path) -> Comparison:
    """Build the side-by-side markdown report of two runs and check prompt parity.

    Different models or template modes are stated at the top of the report (see the module
    docs); across template modes parity is not checked (:attr:`ParityCheck.not_checked`).
    """
    a, b = load_run(run_a), load_run(run_b)
    warnings = model_warnings(a, b)
    parity = check_parity(a, b)
    mode_a, mode_b = a.identity("template_mode"), b.identity("template_mode")
    if mode_a and mode_b and mode_a != mode_b:
        parity = ParityCheck(
            only_a=parity.only_a,
            only_b=parity.only_b,
            not_checked=f"the runs used different template modes ({mode_a} vs {mode_b})",
        )
    notice = [*(f"> {warning}" for warning in warnings), ""] if warnings else []
    sections = [
        "# Evaluation comparison",
        "",
        *notice,
        f"- **A**: `{a.path}`",
        f"- **B**: `{b.path}`",
        "",
        "## Summary",
        "",
        *_summary_table(a, b),
        "",
        "## Prompt parity",
        "",
        *_parity_section(parity),
        "",
        "## Outputs",
        "",
        *_outputs_table(a, b),
    ]
    return Comparison("\n".join(sections) + "\n", parity, tuple(warnings))


def _summary_table(a: RunData, b: RunData) -> list[str]:
    sa = summarize(list(a.records.values()), len(a.records))
    sb = summarize(list(b.records.values()), len(b.records))
    rows: list[tuple[str, str, str]] = [
        ("backend", str(a.identity("backend")), str(b.identity("backend"))),
        ("model", str(a.identity("model")), str(b.identity("model"))),
        (
            "template mode",
            str(a.identity("template_mode") or "unknown"),
            str(b.identity("template_mode") or "unknown"),
        ),
    ]
    sampling_a = a.identity("sampling") or {}
    sampling_b = b.identity("sampling") or {}
    differing = sorted(k for k in set(sampling_a) | set(sampling_b) if _differs(k, a, b))
    if not differing:
        rows.append(("sampling", "same", "same"))
    for key in differing:
        rows.append((f"sampling.{key}", str(sampling_a.get(key)), str(sampling_b.get(key))))
    rows += [
        ("answered", str(sa["completed"]), str(sb["completed"])),
        ("prompt tokens", str(sa["prompt_tokens"]), str(sb["prompt_tokens"])),
        ("completion tokens", str(sa["completion_tokens"]), str(sb["completion_tokens"])),
        ("tokens/s", f"{sa['tokens_per_second']:.2f}", f"{sb['tokens_per_second']:.2f}"),
    ]
    for q in ("p50", "p90", "p99"):
        rows.append(
            (f"latency {q}", _secs(sa["latency_seconds"][q]), _secs(sb["latency_seconds"][q]))
        )
    for key, label in (
        ("exact_match_rate", "exact match"),
        ("contains_match_rate", "contains match"),
    ):
        rows.append((label, format_rate(sa[key], sa["scored"]), format_rate(sb[key], sb["scored"])))
    if sa["choice_scored"] or sb["choice_scored"]:
        for key, label in (("accuracy", "accuracy"), ("accuracy_norm", "accuracy (normalised)")):
            rows.append(
                (
                    label,
                    format_rate(sa[key], sa["choice_scored"]),
                    format_rate(sb[key], sb["choice_scored"]),
                )
            )
    rows.append(("finish reasons", _reasons(sa), _reasons(sb)))
    lines = ["| | A | B |", "|---|---|---|"]
    lines += [f"| {name} | {_cell(left)} | {_cell(right)} |" for name, left, right in rows]
    return lines


def _differs(key: str, a: RunData, b: RunData) -> bool:
    left: Mapping[str, Any] = a.identity("sampling") or {}
    right: Mapping[str, Any] = b.identity("sampling") or {}
    return left.get(key) != right.get(key)


def _parity_section(parity: ParityCheck) -> list[str]:
    how = (
        f"{parity.by_hash} by sha256 of the rendered non-thinking prompt, "
        f"{parity.by_tokens} by prompt token count"
    )
    if parity.not_checked:
        lines = [f"**not checked**: {parity.not_checked}; prompt parity cannot hold."]
    elif parity.compared == 0:
        lines = ["**not checked**: the runs share no prompt ids."]
    elif parity.identical:
        lines = [f"**identical**: all {parity.compared} shared prompts match ({how})."]
    else:
        lines = [
            f"**MISMATCH**: {len(parity.mismatches)} of {parity.compared} shared prompts "
            f"differ ({how}).",
            "",
            "| id | difference |",
            "|---|---|",
            *(f"| {_cell(key)} | {_cell(reason)} |" for key, reason in parity.mismatches),
        ]
    for label, ids in (("only in A", parity.only_a), ("only in B", parity.only_b)):
        if ids:
            lines += ["", f"{label} ({len(ids)}): " + ", ".join(f"`{i}`" for i in ids)]
    return lines


def _outputs_table(a: RunData, b: RunData) -> list[str]:
    ids = list(a.records) + [key for key in b.records if key not in a.records]
    lines = ["| id | expected | A | B |", "|---|---|---|---|"]
    for key in ids:
        left, right = a.records.get(key), b.records.get(key)
        expected = (left or right or {}).get("expected") or []
        lines.append(
            f"| {_cell(key)} | {_cell(' / '.join(expected)) or '-'} | {_answer(left)} "
            f"| {_answer(right)} |"
        )
    return lines


def _answer(record: dict[str, Any] | None) -> str:
    if record is None:
        return "_(not run)_"
    text = str(record.get("text", "")).strip()
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + "…"
    if record.get("choices") is not None:
        return _choice_answer(record, text)
    mark = ""
    if record.get("exact_match"):
        mark = "**[exact]** "
    elif record.get("contains_match"):
        mark = "**[contains]** "
    elif record.get("exact_match") is False:
        mark = "**[miss]** "
    stats = (
        f"({record.get('completion_tokens')} tok, {float(record.get('seconds', 0)):.2f}s, "
        f"{record.get('finish_reason')})"
    )
    return f"{mark}{_cell(text)} {stats}"


def _choice_answer(record: dict[str, Any], text: str) -> str:
    """A scored multiple-choice record: the predicted choice, right or wrong, and the
    log-likelihood of every choice."""
    correct = record.get("correct")
    mark = "" if correct is None else ("**[right]** " if correct else "**[wrong]** ")
    scores = ", ".join(f"{float(value):.3f}" for value in record.get("choice_logprobs") or [])
    return f"{mark}{_cell(text)} (log-likelihoods {scores})"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _reasons(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(summary["finish_reasons"].items())) or "-"
