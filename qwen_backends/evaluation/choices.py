"""Multiple-choice prompts scored by log-likelihood, as lm-evaluation-harness scores them.

Each choice is scored as the assistant's answer to the prompt's conversation
(:meth:`~qwen_backends.backends.base.ModelBackend.score_batch`: one batch per prompt, the prompt
run once where the backend shares it). The prediction is the choice with the highest
log-likelihood (lm-eval's ``acc``); the length-normalised prediction divides each by the
choice's length in characters first (lm-eval's ``acc_norm``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.evaluation.prompts import PromptCase
    from qwen_backends.sampling import SamplingParams

__all__ = ["make_choice_record", "predictions"]


def predictions(choices: tuple[str, ...], logprobs: list[float]) -> tuple[int, int]:
    """``(prediction, length-normalised prediction)``: indices of the best choices (the first
    of equal ones)."""
    best = max(range(len(choices)), key=lambda i: logprobs[i])
    normalised = [logprob / len(choice) for logprob, choice in zip(logprobs, choices, strict=True)]
    return best, max(range(len(choices)), key=lambda i: normalised[i])


def make_choice_record(
    backend: ModelBackend,
    case: PromptCase,
    *,
    sampling: SamplingParams,
    prompt_sha256: str | None,
    template_mode: str | None,
) -> dict[str, Any]:
    """Score ``case``'s choices and return its ``outputs.jsonl`` record.

    It has the keys of a generated record (``text`` is the predicted choice, ``finish_reason``
    ``"scored"``, no completion tokens; ``exact_match`` / ``contains_match`` are ``None``) plus
    ``choices``, ``answer``, ``choice_logprobs``, ``choice_tokens``, ``choice_greedy``,
    ``prediction``, ``prediction_norm``, ``correct`` and ``correct_norm`` (``None`` without an
    answer).
    """
    messages = list(case.messages)
    start = time.perf_counter()
    scores = backend.score_batch([(messages, choice) for choice in case.choices])
    seconds = time.perf_counter() - start
    logprobs = [score.logprob for score in scores]
    best, best_norm = predictions(case.choices, logprobs)
    known = case.answer is not None
    return {
        "id": case.id,
        "text": case.choices[best],
        "finish_reason": "scored",
        "prompt_tokens": backend.count_prompt_tokens(messages),
        "completion_tokens": 0,
        "seconds": round(seconds, 6),
        "backend": backend.name,
        "model": backend.model_name,
        "template_mode": template_mode,
        "sampling": sampling.model_dump(mode="json"),
        "expected": [case.choices[case.answer]] if case.answer is not None else None,
        "exact_match": None,
        "contains_match": None,
        "messages_sha256": case.digest,
        "prompt_sha256": prompt_sha256,
        "choices": list(case.choices),
        "answer": case.answer,
        "choice_logprobs": logprobs,
        "choice_tokens": [score.num_tokens for score in scores],
        "choice_greedy": [score.greedy for score in scores],
        "prediction": best,
        "prediction_norm": best_norm,
        "correct": best == case.answer if known else None,
        "correct_norm": best_norm == case.answer if known else None,
    }
