"""Run prompt sets through any backend and compare runs: the evaluation runner.

Data path::

    prompts.jsonl --prompts.load_prompts--> runner.run_evaluation (any backend, explicit
    sampling) --> outputs.jsonl + summary.json --compare.compare_runs--> markdown report

Configured by the ``evaluation`` section of :class:`qwen_backends.settings.Settings`
(:class:`~qwen_backends.settings.EvaluationSettings`), so a YAML file, ``QWEN_EVALUATION__*``
environment variables and keyword arguments all work. Importing this package loads no heavy
library; the backend is built only when prompts are left to answer.
"""

from qwen_backends.evaluation.compare import Comparison, ParityCheck, compare_runs, load_run
from qwen_backends.evaluation.metrics import (
    contains_match,
    exact_match,
    format_summary,
    normalize_answer,
    percentile,
    summarize,
)
from qwen_backends.evaluation.prompts import PromptCase, load_prompts
from qwen_backends.evaluation.runner import EvaluationResult, run_evaluation
from qwen_backends.settings import EvaluationSettings

__all__ = [
    "Comparison",
    "EvaluationResult",
    "EvaluationSettings",
    "ParityCheck",
    "PromptCase",
    "compare_runs",
    "contains_match",
    "exact_match",
    "format_summary",
    "load_prompts",
    "load_run",
    "normalize_answer",
    "percentile",
    "run_evaluation",
    "summarize",
]
