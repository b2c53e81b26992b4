"""Fixtures for evaluation tests: a small prompt set, settings for the tiny checkpoint, one hf
backend on it and one finished run of the prompt set, both shared by the whole session
(loading the model and generating are the slow parts on a small CPU)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eval_data import PROMPTS, SAMPLING, write_prompts
from isolation import isolated_in

from qwen_backends.backends.base import ModelBackend
from qwen_backends.evaluation import EvaluationResult, run_evaluation
from qwen_backends.settings import Settings


def tiny_settings(
    model_dir: Path, sampling: dict[str, Any], evaluation: dict[str, Any]
) -> Settings:
    """Settings for the hf backend on the tiny checkpoint (CPU)."""
    return Settings(
        backend="hf",
        model=str(model_dir),
        hf={"device": "cpu"},
        sampling={**SAMPLING, **sampling},
        evaluation=evaluation,
    )


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    """:data:`PROMPTS` written to a temporary JSONL file."""
    return write_prompts(tmp_path / "prompts.jsonl", PROMPTS)


@pytest.fixture
def make_settings(
    tiny_model_dir: Path, tmp_path: Path, prompt_file: Path
) -> Callable[..., Settings]:
    """Build settings; keyword arguments override ``evaluation`` values (``run_name``,
    ``prompts``, ``limit``), the optional positional dict overrides sampling values."""

    def build(sampling: dict[str, Any] | None = None, **evaluation: Any) -> Settings:
        return tiny_settings(
            tiny_model_dir,
            sampling or {},
            {"prompts": prompt_file, "output_dir": tmp_path / "runs", **evaluation},
        )

    return build


@pytest.fixture(scope="session")
def _hermetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session-wide stand-in for the autouse isolation: no QWEN_* variables, a clean cwd."""
    root = tmp_path_factory.mktemp("evaluation-session")
    with isolated_in(root):
        yield root


@pytest.fixture(scope="session")
def hf_backend(_hermetic: Path, tiny_model_dir: Path) -> Iterator[ModelBackend]:
    """The hf backend on the tiny checkpoint (CPU), built once."""
    from qwen_backends.factory import create_backend

    with create_backend(tiny_settings(tiny_model_dir, {}, {})) as backend:
        yield backend


@pytest.fixture(scope="session")
def baseline_run(
    _hermetic: Path, hf_backend: ModelBackend, tiny_model_dir: Path
) -> EvaluationResult:
    """:data:`PROMPTS` run once with :data:`SAMPLING` (run name ``baseline``); do not modify."""
    prompts = write_prompts(_hermetic / "prompts.jsonl", PROMPTS)
    evaluation = {"prompts": prompts, "output_dir": _hermetic / "runs", "run_name": "baseline"}
    settings = tiny_settings(tiny_model_dir, {}, evaluation)
    return run_evaluation(settings, backend=hf_backend, progress=False)
