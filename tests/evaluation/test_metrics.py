"""Answer scoring, percentiles and run summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwen_backends.evaluation import (
    contains_match,
    exact_match,
    format_summary,
    normalize_answer,
    percentile,
    summarize,
)


@pytest.mark.parametrize(
    ("text", "expected", "exact", "contains"),
    [
        ("Paris", ["Paris"], True, True),
        ("  paris.\n", ["Paris"], True, True),
        ("The capital is Paris.", ["Paris"], False, True),
        ("Parisian food", ["Paris"], False, False),
        ("42", ["4"], False, False),
        ("It is 14.", ["4"], False, False),
        ("It is 4.", ["4"], False, True),
        ("Muchas   GRACIAS!", ["muchas gracias"], True, True),
        ("北京。", ["北京", "北京市"], True, True),
        ("答案是北京", ["北京"], False, True),
        ("北京大学", ["北京"], False, True),
        ("```python\ns[::-1]\n```", ["s[::-1]"], False, True),
        ("blue", ["red", "Blue"], True, True),
    ],
)
def test_exact_and_contains(text: str, expected: list[str], exact: bool, contains: bool) -> None:
    assert exact_match(text, expected) is exact
    assert contains_match(text, expected) is contains


def test_normalize_answer() -> None:
    assert normalize_answer(' "Hello,\tWorld!" ') == "hello, world"
    assert normalize_answer("Cafe\u0301") == "café"


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [0.31, 2.0, 0.05, 1.5, 0.7, 0.7, 9.25]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0


def record(seconds: float, completion: int, reason: str, exact: bool | None, contains: bool | None):
    return {
        "seconds": seconds,
        "prompt_tokens": 10,
        "completion_tokens": completion,
        "finish_reason": reason,
        "exact_match": exact,
        "contains_match": contains,
    }


def test_summarize_and_table() -> None:
    records = [
        record(1.0, 10, "stop", True, True),
        record(2.0, 20, "length", False, True),
        record(1.0, 30, "stop", None, None),
        record(4.0, 40, "stop", False, False),
    ]
    summary = summarize(records, total_prompts=5)
    assert summary["completed"] == 4 and summary["total_prompts"] == 5
    assert summary["prompt_tokens"] == 40 and summary["completion_tokens"] == 100
    assert summary["tokens_per_second"] == pytest.approx(100 / 8)
    assert summary["latency_seconds"]["p50"] == pytest.approx(1.5)
    assert summary["latency_seconds"]["p90"] == pytest.approx(np.percentile([1, 2, 1, 4], 90))
    assert summary["latency_seconds"]["max"] == 4.0
    assert summary["finish_reasons"] == {"stop": 3, "length": 1}
    assert summary["scored"] == 3
    assert summary["exact_match_rate"] == pytest.approx(1 / 3)
    assert summary["contains_match_rate"] == pytest.approx(2 / 3)
    table = format_summary(summary, title="run x")
    assert table.splitlines()[0] == "run x"
    assert "4 / 5" in table and "12.50" in table
    assert "33.3% of 3" in table and "66.7% of 3" in table
    assert "length 1, stop 3" in table


def test_summary_of_nothing_is_json_safe() -> None:
    summary = summarize([], total_prompts=3)
    assert summary["latency_seconds"] == dict.fromkeys(("mean", "p50", "p90", "p99", "max"))
    assert summary["exact_match_rate"] is None and summary["tokens_per_second"] == 0.0
    assert "exact match              -" in format_summary(summary)
