"""Interleaved pairs of runs, shared by the benchmarks: one option on against off, per token.

The two sides of a pair run in alternating order, so drift on a shared machine hits both alike;
the figure is the median of the per-pair ratios of seconds per generated token.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

#: One side of a pair: runs one call and returns what it generated (a ``Generation``).
Side = Callable[[int], Any]


def per_token_pairs(option: Side, baseline: Side, pairs: int) -> dict[str, float]:
    """Median ms per token of each side and the median ratio option / baseline.

    Each side is called with the pair's index (use it as the seed); one warm-up call each.
    """

    def seconds_per_token(side: Side, index: int) -> float:
        start = time.perf_counter()
        result = side(index)
        return (time.perf_counter() - start) / result.completion_tokens

    seconds_per_token(option, 0)
    seconds_per_token(baseline, 0)
    on, off, ratio = interleaved(
        lambda i: seconds_per_token(option, i), lambda i: seconds_per_token(baseline, i), pairs
    )
    return {
        "option_ms_per_token": 1000 * on,
        "baseline_ms_per_token": 1000 * off,
        "ratio": ratio,
    }


def interleaved(
    first: Callable[[int], float], second: Callable[[int], float], pairs: int
) -> tuple[float, float, float]:
    """``(median of first, median of second, median of the per-pair ratios first / second)``.

    Each side measures one run and is called with the pair's index; which side runs first
    alternates from pair to pair.
    """
    ratios, ones, twos = [], [], []
    for index in range(pairs):
        if index % 2 == 0:
            one, two = first(index), second(index)
        else:
            two, one = second(index), first(index)
        ones.append(one)
        twos.append(two)
        ratios.append(one / two)
    return statistics.median(ones), statistics.median(twos), statistics.median(ratios)
