"""Comparing two runs: the markdown report and the prompt-parity check, on real hf runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eval_data import PROMPTS, write_prompts

from qwen_backends.backends.base import ModelBackend
from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation import EvaluationResult, compare_runs, load_run, run_evaluation
from qwen_backends.evaluation.compare import _cell
from qwen_backends.factory import create_backend
from qwen_backends.family import FAMILIES
from qwen_backends.settings import Settings
from qwen_backends.testing import tiny_checkpoint

#: A template variant that injects a default system prompt (as some chat templates do): the
#: same conversation then reaches the model as a different prompt.
SYSTEM_DEFAULT = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
)


def test_report_side_by_side_with_identical_prompts(
    make_settings: Callable[..., Settings],
    hf_backend: ModelBackend,
    baseline_run: EvaluationResult,
    tiny_model_dir: Path,
) -> None:
    greedy = make_settings({"temperature": 0.0, "top_p": 1.0, "top_k": 0}, run_name="greedy")
    run_a = baseline_run.run_dir
    run_b = run_evaluation(greedy, backend=hf_backend, progress=False).run_dir
    comparison = compare_runs(run_a, run_b)
    parity = comparison.parity
    assert parity.identical
    assert (parity.compared, parity.by_hash, parity.by_tokens) == (4, 4, 0)
    assert parity.only_a == parity.only_b == []

    report = comparison.markdown
    assert report.startswith("# Evaluation comparison\n")
    assert f"- **A**: `{run_a}`" in report and f"- **B**: `{run_b}`" in report
    assert "| backend | hf | hf |" in report
    assert f"| model | {tiny_model_dir} | {tiny_model_dir} |" in report
    assert "| sampling.temperature | 0.7 | 0.0 |" in report
    assert "| sampling.top_k | 20 | 0 |" in report
    assert "sampling.seed" not in report, "only differing sampling fields are listed"
    assert "| answered | 4 | 4 |" in report
    assert "**identical**: all 4 shared prompts match (4 by sha256" in report
    outputs = report.split("## Outputs", 1)[1]
    b_records = {
        r["id"]: r for r in map(json.loads, (run_b / "outputs.jsonl").read_text().splitlines())
    }
    for row in PROMPTS:
        line = next(line for line in outputs.splitlines() if line.startswith(f"| {row['id']} |"))
        assert _cell(b_records[row["id"]]["text"].strip()[:20]) in line
        assert line.count("tok, ") == 2
    assert "| capital | Rome / Roma |" in outputs
    assert "| poem | - |" in outputs


def test_parity_catches_a_different_chat_template(
    make_settings: Callable[..., Settings],
    baseline_run: EvaluationResult,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    variant = tmp_path / "variant-model"
    variant.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.suffix == ".safetensors":
            (variant / item.name).symlink_to(item)
        elif item.is_file():
            shutil.copy(item, variant / item.name)
    template = variant / "chat_template.jinja"
    template.write_text(SYSTEM_DEFAULT + template.read_text(encoding="utf-8"), encoding="utf-8")

    run_a = baseline_run
    settings_b = make_settings(run_name="b").replace(model=str(variant))
    with create_backend(settings_b) as backend_b:
        run_b = run_evaluation(settings_b, backend=backend_b, progress=False)

    comparison = compare_runs(run_a.run_dir, run_b.run_dir)
    mismatched = dict(comparison.parity.mismatches)
    # "capital" has its own system message, so only the other three prompts change.
    assert sorted(mismatched) == ["add", "poem", "recall"]
    assert set(mismatched.values()) == {"rendered prompt text differs (sha256)"}
    assert "**MISMATCH**: 3 of 4 shared prompts differ" in comparison.markdown
    assert "| add | rendered prompt text differs (sha256) |" in comparison.markdown


def test_parity_by_token_count_when_a_server_renders(
    baseline_run: EvaluationResult, tmp_path: Path
) -> None:
    run_a = baseline_run
    # A server-rendering backend (ollama, vllm) records no prompt hash, only token counts;
    # rewrite a copy of the real run that way.
    server = tmp_path / "server-run"
    shutil.copytree(run_a.run_dir, server)
    records = [json.loads(line) for line in (server / "outputs.jsonl").read_text().splitlines()]
    for record in records:
        record["prompt_sha256"] = None

    def save() -> None:
        text = "".join(json.dumps(record) + "\n" for record in records)
        (server / "outputs.jsonl").write_text(text, encoding="utf-8")

    save()
    parity = compare_runs(run_a.run_dir, server).parity
    assert parity.identical and (parity.by_hash, parity.by_tokens) == (0, 4)

    records[1]["prompt_tokens"] += 1  # e.g. a template that appends " /no_think"
    save()
    comparison = compare_runs(run_a.run_dir, server)
    count = records[1]["prompt_tokens"]
    assert comparison.parity.mismatches == [
        ("capital", f"prompt token counts differ ({count - 1} vs {count})")
    ]


def test_different_conversations_and_missing_ids(
    make_settings: Callable[..., Settings],
    hf_backend: ModelBackend,
    baseline_run: EvaluationResult,
    tmp_path: Path,
) -> None:
    run_a = baseline_run
    other = write_prompts(
        tmp_path / "other.jsonl",
        [dict(PROMPTS[0], messages="What is 5 + 5?"), PROMPTS[1], {"id": "new", "messages": "Hi"}],
    )
    run_b = run_evaluation(
        make_settings(run_name="b", prompts=other), backend=hf_backend, progress=False
    )
    comparison = compare_runs(run_a.run_dir, run_b.run_dir / "outputs.jsonl")
    parity = comparison.parity
    assert parity.mismatches == [("add", "different conversations under the same id")]
    assert parity.only_a == ["recall", "poem"] and parity.only_b == ["new"]
    assert "only in A (2): `recall`, `poem`" in comparison.markdown
    assert "only in B (1): `new`" in comparison.markdown
    assert "| new | - | _(not run)_ |" in comparison.markdown


def test_compare_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not an evaluation run"):
        load_run(tmp_path)


# -- different models and template modes ---------------------------------------------------------


def test_runs_record_the_model_and_its_template_mode(baseline_run: EvaluationResult) -> None:
    manifest = json.loads((baseline_run.run_dir / "run.json").read_text())
    assert manifest["template_mode"] == "hybrid"
    assert baseline_run.summary["template_mode"] == "hybrid"
    records = [json.loads(line) for line in baseline_run.outputs_path.read_text().splitlines()]
    assert {(r["model"], r["template_mode"]) for r in records} == {(manifest["model"], "hybrid")}


def test_an_instruct_2507_run_against_a_hybrid_run_says_so_at_the_top(
    make_settings: Callable[..., Settings], baseline_run: EvaluationResult
) -> None:
    instruct = str(tiny_checkpoint("tiny", template="instruct-2507"))
    settings = make_settings(run_name="instruct").replace(model=instruct)
    with create_backend(settings) as backend:
        run_b = run_evaluation(settings, backend=backend, progress=False)
    assert json.loads((run_b.run_dir / "run.json").read_text())["template_mode"] == "non-thinking"
    comparison = compare_runs(baseline_run.run_dir, run_b.run_dir)
    head = comparison.markdown.split("## Summary", 1)[0]
    assert "**Different template modes**: A `hybrid`, B `non-thinking`" in head
    assert "**Different models?**" in head  # two local paths: sameness cannot be shown
    assert comparison.parity.not_checked and not comparison.parity.identical
    assert comparison.parity.mismatches == []  # no silent mismatch list across modes
    assert "**not checked**: the runs used different template modes" in comparison.markdown
    assert "| template mode | hybrid | non-thinking |" in comparison.markdown


def _as_server_run(source: Path, target: Path, **fields: Any) -> Path:
    """A copy of a real run whose manifest and records carry ``fields`` instead."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "run.json").read_text())
    (target / "run.json").write_text(json.dumps({**manifest, **fields}), encoding="utf-8")
    lines = (target / "outputs.jsonl").read_text().splitlines()
    records = [{**json.loads(line), **fields, "prompt_sha256": None} for line in lines]
    text = "".join(json.dumps(record) + "\n" for record in records)
    (target / "outputs.jsonl").write_text(text, encoding="utf-8")
    return target


def test_hf_against_ollama_of_two_releases_names_both_models(
    baseline_run: EvaluationResult, tmp_path: Path
) -> None:
    hybrid = FAMILIES["qwen3-4b"]
    instruct = FAMILIES["qwen3-4b-instruct-2507"]
    run_a = _as_server_run(baseline_run.run_dir, tmp_path / "hf", backend="hf", model=hybrid.hf)
    run_b = _as_server_run(
        baseline_run.run_dir,
        tmp_path / "ollama",
        backend="ollama",
        model=instruct.ollama,
        template_mode="non-thinking",
    )
    comparison = compare_runs(run_a, run_b)
    assert len(comparison.warnings) == 2
    first = comparison.markdown.splitlines()[2]
    assert first.startswith("> **Different models**: A ran Qwen3-4B (`Qwen/Qwen3-4B`), B ran ")
    assert "Qwen3-4B-Instruct-2507 (`qwen3:4b-instruct-2507-q4_K_M`)" in first
    # the same release on two runtimes (different names per runtime) is no warning
    same = _as_server_run(
        baseline_run.run_dir, tmp_path / "ollama-hybrid", backend="ollama", model=hybrid.ollama
    )
    comparison = compare_runs(run_a, same)
    assert comparison.warnings == ()
    assert comparison.markdown.splitlines()[2].startswith("- **A**")
    assert comparison.parity.identical
