"""Multiple-choice prompt sets scored by log-likelihood (qwen_backends.evaluation.choices)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eval_data import write_prompts

from qwen_backends.backends.base import ModelBackend
from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation import compare_runs, load_prompts, run_evaluation
from qwen_backends.evaluation.choices import predictions
from qwen_backends.settings import Settings

QUESTIONS: list[dict[str, Any]] = [
    {"id": "sky", "messages": "What colour is the sky?", "choices": ["Blue.", "Green.", "A"]},
    {"id": "cat", "messages": "How many legs has a cat?", "choices": ["Four", "Two"], "answer": 0},
    {"id": "sum", "messages": "2+2?", "choices": ["3", "4", "five"], "answer": "4"},
]


def test_predictions_are_lm_evals_acc_and_acc_norm() -> None:
    # "a" has the higher total, "long answer" the higher per-character log-likelihood.
    assert predictions(("a", "long answer"), [-1.0, -2.0]) == (0, 1)
    assert predictions(("x", "y"), [-1.0, -1.0]) == (0, 0)  # the first of equal ones


def test_a_choice_set_is_scored_not_generated_and_resumes(
    hf_backend: ModelBackend,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    prompts = write_prompts(tmp_path / "choices.jsonl", QUESTIONS)
    settings = make_settings(prompts=prompts, run_name="choices")
    result = run_evaluation(settings, backend=hf_backend, progress=False)
    assert result.generated == 3
    records = {record["id"]: record for record in result.records}
    for question in QUESTIONS:
        record = records[question["id"]]
        scores = hf_backend.score_batch(
            [(question["messages"], choice) for choice in question["choices"]]
        )
        assert record["choice_logprobs"] == pytest.approx([s.logprob for s in scores])
        assert record["choice_tokens"] == [s.num_tokens for s in scores]
        best, best_norm = predictions(tuple(question["choices"]), record["choice_logprobs"])
        assert (record["prediction"], record["prediction_norm"]) == (best, best_norm)
        assert record["text"] == question["choices"][best]
        assert record["finish_reason"] == "scored" and record["completion_tokens"] == 0
    assert records["sky"]["correct"] is None  # no answer given: ranked, not scored
    assert records["sum"]["answer"] == 1
    scored = [records["cat"], records["sum"]]
    summary = result.summary
    assert summary["choice_scored"] == 2
    assert summary["accuracy"] == sum(r["correct"] for r in scored) / 2
    assert summary["accuracy_norm"] == sum(r["correct_norm"] for r in scored) / 2
    saved = json.loads(result.summary_path.read_text())
    assert saved["accuracy"] == summary["accuracy"]
    again = run_evaluation(settings, backend=hf_backend, progress=False)
    assert (again.generated, again.skipped) == (0, 3)
    report = compare_runs(result.run_dir, again.run_dir).markdown
    assert "| accuracy |" in report and "log-likelihoods" in report


def test_eval_compare_across_backends_for_choices(
    hf_backend: ModelBackend, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")
    from qwen_backends import create_backend
    from qwen_backends.testing import tiny_gguf

    prompts = write_prompts(tmp_path / "choices.jsonl", QUESTIONS)
    hf_run = run_evaluation(
        make_settings(prompts=prompts, run_name="hf"), backend=hf_backend, progress=False
    )
    gguf = str(tiny_gguf("f16"))
    settings = Settings(
        backend="llamacpp",
        model=gguf,
        llamacpp={"n_ctx": 1024, "n_threads": 1, "n_threads_batch": 1},
        sampling=hf_backend.settings.sampling,
        evaluation={"prompts": prompts, "output_dir": tmp_path / "runs", "run_name": "llama"},
    )
    with create_backend(settings) as llama:
        llama_run = run_evaluation(settings, backend=llama, progress=False)
    for ours, theirs in zip(hf_run.records, llama_run.records, strict=True):
        assert theirs["choice_logprobs"] == pytest.approx(ours["choice_logprobs"], abs=5e-3)
        assert theirs["prediction"] == ours["prediction"]
    comparison = compare_runs(hf_run.run_dir, llama_run.run_dir)
    assert comparison.parity.identical
    assert "| accuracy |" in comparison.markdown


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"choices": ["a"]}, "two or more"),
        ({"choices": ["a", "a"]}, "two or more"),
        ({"choices": ["a", ""]}, "two or more"),
        ({"choices": ["a", "b"], "answer": 2}, r"index \(0-1\)"),
        ({"choices": ["a", "b"], "answer": "c"}, r"index \(0-1\)"),
        ({"choices": ["a", "b"], "answer": True}, r"index \(0-1\)"),
        ({"answer": 0}, "answer needs choices"),
        ({"choices": ["a", "b"], "expected": "a"}, "not both"),
    ],
)
def test_bad_choice_rows_name_the_line(tmp_path: Path, row: dict[str, Any], words: str) -> None:
    path = write_prompts(tmp_path / "p.jsonl", [{"id": "q", "messages": "Hi", **row}])
    with pytest.raises(ConfigurationError, match=words) as caught:
        load_prompts(path)
    assert f"{path}:1:" in str(caught.value) and "\n" not in str(caught.value)


def test_editing_the_choices_changes_the_digest(tmp_path: Path) -> None:
    base = {"id": "q", "messages": "Hi", "choices": ["a", "b"], "answer": 0}
    first = load_prompts(write_prompts(tmp_path / "a.jsonl", [base]))[0]
    second = load_prompts(write_prompts(tmp_path / "b.jsonl", [{**base, "answer": 1}]))[0]
    plain = load_prompts(write_prompts(tmp_path / "c.jsonl", [{"id": "q", "messages": "Hi"}]))[0]
    assert len({first.digest, second.digest, plain.digest}) == 3
