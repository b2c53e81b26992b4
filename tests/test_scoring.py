"""The shared half of scoring (qwen_backends.scoring): windows, pair splitting, row reduction.

The runtimes' half and ``score()`` end to end are tested in tests/backends/test_scoring_rows.py
and the conformance suite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.results import Score, ScoredToken
from qwen_backends.scoring import Span, check_top, reduce_rows, rolling_windows, split_pair


@pytest.mark.parametrize(("n_tokens", "window"), [(1, 4), (10, 4), (12, 4), (13, 5), (3, 1)])
def test_rolling_windows_are_lm_evals(n_tokens: int, window: int) -> None:
    lm_eval_utils = pytest.importorskip("lm_eval.utils", reason="lm-eval is in the dev extra")
    tokens = list(range(100, 100 + n_tokens))
    prefix = 7
    theirs = [
        lm_eval_utils.make_disjoint_window(pair)
        for pair in lm_eval_utils.get_rolling_token_windows(tokens, prefix, window, 1)
    ]
    sequence = [prefix, *tokens]
    ours = []
    for lo, first, stop in rolling_windows(n_tokens, window):
        span = Span(tuple(sequence[lo : stop + 1]), first + 1 - lo)
        ours.append((list(span.ids[: span.start]), list(span.ids[span.start :])))
        assert span.rows <= window  # never more inputs than the window
    assert ours == theirs
    scored = [token for _, continuation in ours for token in continuation]
    assert scored == tokens  # every token exactly once, in order


def test_rolling_windows_refuse_an_empty_window() -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        rolling_windows(5, 0)


def test_split_pair_moves_trailing_space_to_the_continuation(offline_tokenizer: Any) -> None:
    context, continuation = split_pair(offline_tokenizer, "Two plus two is ", "four")
    assert offline_tokenizer.decode(context) == "Two plus two is"
    assert offline_tokenizer.decode(continuation) == " four"
    whole = offline_tokenizer("Two plus two is four", add_special_tokens=False)["input_ids"]
    assert context + continuation == whole


def test_reduce_rows_gives_target_greedy_and_sorted_top() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 50)).astype(np.float32)
    rows = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = np.array([3, int(rows[1].argmax()), 7, 8, int(rows[4].argmax())])
    logprobs, greedy, tops = reduce_rows(rows, targets, 4)
    assert logprobs == pytest.approx([rows[i, t] for i, t in enumerate(targets)])
    assert greedy == [int(rows[i].argmax()) == t for i, t in enumerate(targets)]
    assert greedy[1] and greedy[4]
    for i, best in enumerate(tops):
        assert [token for token, _ in best] == list(np.argsort(-rows[i])[:4])
    one = reduce_rows(rows, None, 1)[2]
    assert [best[0][0] for best in one] == list(rows.argmax(axis=1))


@pytest.mark.parametrize("top", [-1, 21, 2.0, True, "3"])
def test_check_top_refuses_out_of_range(top: Any) -> None:
    with pytest.raises(ConfigurationError, match="0 to 20"):
        check_top(top)


def test_score_sums_and_perplexity() -> None:
    tokens = (ScoredToken("a", 1, -1.0, True), ScoredToken("b", 2, -3.0, False))
    score = Score(tokens)
    assert score.logprob == -4.0 and not score.greedy and score.num_tokens == 2
    assert score.perplexity == pytest.approx(np.exp(2.0))
    data = score.to_dict()
    assert data["logprob"] == -4.0 and data["tokens"][1]["id"] == 2
