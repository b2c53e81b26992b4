"""Scoring and summary statistics of a run (pure Python, no numpy).

Matching is deliberately lenient about form and strict about content: both sides are
case-folded, NFC-normalised, their whitespace collapsed and surrounding punctuation trimmed.
*Exact match* compares the whole answer; *contains match* looks for the expected answer as a
whole phrase (not inside a longer word or number: ``"4"`` does not match ``"14"``; no such
boundary applies to Chinese or Japanese characters, which are written without spaces).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import regex

__all__ = [
    "choice_summary",
    "contains_match",
    "exact_match",
    "format_summary",
    "normalize_answer",
    "percentile",
    "summarize",
]

_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]")
_EDGE_PUNCTUATION = " \t\n.,;:!?¡¿\"'`()[]{}*_。，！？：；“”‘’"


def normalize_answer(text: str) -> str:
    """Case-fold, NFC-normalise, collapse whitespace and trim surrounding punctuation."""
    text = unicodedata.normalize("NFC", text).casefold()
    return " ".join(text.split()).strip(_EDGE_PUNCTUATION)


def exact_match(text: str, expected: Iterable[str]) -> bool:
    """True when the normalised ``text`` equals any normalised expected answer."""
    answer = normalize_answer(text)
    return any(answer == normalize_answer(option) for option in expected)


def contains_match(text: str, expected: Iterable[str]) -> bool:
    """True when any expected answer occurs in ``text`` as a whole phrase (after normalising)."""
    answer = normalize_answer(text)
    for option in expected:
        wanted = normalize_answer(option)
        if not wanted:
            continue
        # Scripts written without spaces (Chinese, Japanese) have no word boundaries to check.
        before = "" if _UNSPACED.match(wanted[0]) else r"(?<!\w)"
        after = "" if _UNSPACED.match(wanted[-1]) else r"(?!\w)"
        if regex.search(before + regex.escape(wanted) + after, answer):
            return True
    return False


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    Returns ``nan`` for an empty sequence.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(records: Sequence[Mapping[str, Any]], total_prompts: int) -> dict[str, Any]:
    """Summary statistics of a run's output records.

    Parameters
    ----------
    records
        Output records (``seconds``, ``prompt_tokens``, ``completion_tokens``,
        ``finish_reason`` and, when scored, ``exact_match`` / ``contains_match``).
    total_prompts
        Prompts in the set, so a partial run shows how far it got.

    Returns
    -------
    dict
        ``completed``, token totals (``cached_prompt_tokens``: prompt tokens served by the
        backend's prompt cache), ``tokens_per_second`` (generated tokens over summed
        generation time), ``latency_seconds`` (mean, p50, p90, p99, max), ``finish_reasons``,
        and ``scored`` / ``exact_match_rate`` / ``contains_match_rate``. Values that do not
        exist yet (latency of an empty run, a rate with nothing scored) are ``None``.
    """
    latencies = [float(record["seconds"]) for record in records]
    completion = sum(int(record["completion_tokens"]) for record in records)
    seconds = sum(latencies)
    scored = [record for record in records if record.get("exact_match") is not None]
    return {
        "total_prompts": total_prompts,
        "completed": len(records),
        "prompt_tokens": sum(int(record["prompt_tokens"]) for record in records),
        # Records written before prompt caching existed carry no count.
        "cached_prompt_tokens": sum(int(record.get("cached_tokens") or 0) for record in records),
        "completion_tokens": completion,
        "generation_seconds": seconds,
        "tokens_per_second": completion / seconds if seconds > 0 else 0.0,
        "latency_seconds": {
            "mean": seconds / len(latencies) if latencies else None,
            "p50": percentile(latencies, 50) if latencies else None,
            "p90": percentile(latencies, 90) if latencies else None,
            "p99": percentile(latencies, 99) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
        "finish_reasons": dict(Counter(str(record["finish_reason"]) for record in records)),
        "scored": len(scored),
        "exact_match_rate": _rate(scored, "exact_match"),
        "contains_match_rate": _rate(scored, "contains_match"),
        **choice_summary(records),
    }


def choice_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Multiple-choice statistics: ``choice_scored`` (records with a known answer),
    ``accuracy`` and ``accuracy_norm`` (length-normalised; lm-eval's ``acc`` / ``acc_norm``),
    ``None`` when no such record exists."""
    scored = [record for record in records if record.get("correct") is not None]
    return {
        "choice_scored": len(scored),
        "accuracy": _rate(scored, "correct"),
        "accuracy_norm": _rate(scored, "correct_norm"),
    }


def _rate(scored: Sequence[Mapping[str, Any]], key: str) -> float | None:
    if not scored:
        return None
    return sum(1 for record in scored if record.get(key)) / len(scored)


def format_summary(summary: Mapping[str, Any], title: str = "") -> str:
    """A small aligned text table of a :func:`summarize` result, for the terminal."""
    latency = summary["latency_seconds"]
    rows = [
        ("prompts", f"{summary['completed']} / {summary['total_prompts']}"),
        ("prompt tokens", _with_cached(summary)),
        ("completion tokens", str(summary["completion_tokens"])),
        ("tokens/s", f"{summary['tokens_per_second']:.2f}"),
        (
            "latency p50 / p90 / p99",
            f"{_secs(latency['p50'])} / {_secs(latency['p90'])} / {_secs(latency['p99'])}",
        ),
        ("latency mean / max", f"{_secs(latency['mean'])} / {_secs(latency['max'])}"),
        (
            "finish reasons",
            ", ".join(f"{k} {v}" for k, v in sorted(summary["finish_reasons"].items())) or "-",
        ),
        ("exact match", format_rate(summary["exact_match_rate"], summary["scored"])),
        ("contains match", format_rate(summary["contains_match_rate"], summary["scored"])),
    ]
    if summary.get("choice_scored"):
        rows += [
            ("accuracy", format_rate(summary["accuracy"], summary["choice_scored"])),
            (
                "accuracy (length-normalised)",
                format_rate(summary["accuracy_norm"], summary["choice_scored"]),
            ),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def format_rate(rate: float | None, scored: int) -> str:
    """``"62.5% of 8"`` or ``"-"`` when nothing was scored."""
    return "-" if rate is None else f"{rate:.1%} of {scored}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _with_cached(summary: Mapping[str, Any]) -> str:
    """``"1234"``, or ``"1234 (800 from the prompt cache)"`` when the cache served some."""
    cached = summary.get("cached_prompt_tokens") or 0
    suffix = f" ({cached} from the prompt cache)" if cached else ""
    return f"{summary['prompt_tokens']}{suffix}"
