"""Read a JSONL prompt set: one ``{"id", "messages", "expected"?}`` object per line.

``messages`` is a conversation as :func:`qwen_backends.chat.validate_messages` accepts it (a list
of ``{"role", "content"}`` dicts, or a string for one user turn). ``expected`` is an optional
answer (a string, or a list of acceptable strings) that the runner scores outputs against.

A *multiple-choice* prompt has ``choices`` (two or more answers) and optionally ``answer`` (the
right one: its index, or its text) instead of ``expected``: nothing is generated, each choice is
scored as the assistant's answer by log-likelihood (see :mod:`qwen_backends.evaluation.choices`).
Every problem is reported as ``FILE:LINE: what is wrong``, so the line can be fixed directly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen_backends.chat import Message, validate_messages
from qwen_backends.errors import ConfigurationError
from qwen_backends.jsonl import iter_jsonl_objects

__all__ = ["PromptCase", "load_prompts", "messages_digest"]

_KEYS = ("id", "messages", "expected", "choices", "answer")


@dataclass(frozen=True)
class PromptCase:
    """One conversation of a prompt set.

    Attributes
    ----------
    id
        Unique name of the prompt within its set (outputs are keyed by it).
    messages
        The validated conversation.
    expected
        Acceptable answers; empty when the prompt is not scored.
    line
        1-based line number in the prompt file (for error messages).
    choices
        For a multiple-choice prompt: the answers scored by log-likelihood (else empty).
    answer
        The index of the right choice (``None`` when not given or not multiple-choice).
    """

    id: str
    messages: tuple[Message, ...]
    expected: tuple[str, ...]
    line: int
    choices: tuple[str, ...] = ()
    answer: int | None = None

    @property
    def digest(self) -> str:
        """sha256 of the conversation, and of the choices and answer of a multiple-choice
        prompt (detects a prompt edited between resumed runs)."""
        if not self.choices:
            return messages_digest(self.messages)
        extra: Message = {"role": "choices", "content": json.dumps([self.choices, self.answer])}
        return messages_digest([*self.messages, extra])


def messages_digest(messages: tuple[Message, ...] | list[Message]) -> str:
    """sha256 hex digest of a conversation's canonical JSON form."""
    canonical = json.dumps(list(messages), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_prompts(path: str | Path, *, allow_control_tokens: bool = False) -> list[PromptCase]:
    """Read and validate the prompt set at ``path``.

    Blank lines are skipped. Ids must be unique non-empty strings (integers are accepted and
    turned into strings). Messages holding control-token text (``<|im_start|>``) are refused
    unless ``allow_control_tokens`` (see :func:`qwen_backends.chat.validate_messages`).

    Raises
    ------
    ConfigurationError
        When the file is missing or empty, or a line is not valid JSON, has an unknown key, a
        bad id, a bad conversation, a bad ``expected`` value or a duplicate id; the message
        names the file and the line.
    """
    path = Path(path)
    cases: list[PromptCase] = []
    seen: dict[str, int] = {}
    records = iter_jsonl_objects(
        path,
        what="prompt set",
        missing_hint="set evaluation.prompts (or QWEN_EVALUATION__PROMPTS) to a JSONL file with "
        "one {id, messages} object a line",
        fields_hint="id and messages",
    )
    for number, record in records:
        case = _parse_record(record, f"{path}:{number}", number, allow_control_tokens)
        if case.id in seen:
            raise ConfigurationError(
                f"{path}:{number}: id {case.id!r} is already used on line {seen[case.id]}; "
                "give every prompt its own id"
            )
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise ConfigurationError(f"prompt set {path} is empty; add one JSON object a line")
    return cases


def _parse_record(
    record: dict[str, Any], where: str, number: int, allow_control_tokens: bool = False
) -> PromptCase:
    unknown = sorted(set(record) - set(_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_KEYS)}"
        )
    choices, answer = _parse_choices(record, where)
    return PromptCase(
        id=_parse_id(record.get("id"), where),
        messages=_parse_messages(record.get("messages"), where, allow_control_tokens),
        expected=_parse_expected(record.get("expected"), where),
        line=number,
        choices=choices,
        answer=answer,
    )


def _parse_choices(record: dict[str, Any], where: str) -> tuple[tuple[str, ...], int | None]:
    choices, answer = record.get("choices"), record.get("answer")
    if choices is None:
        if answer is not None:
            raise ConfigurationError(
                f'{where}: answer needs choices; add "choices": [...], or use expected for a '
                "generated answer"
            )
        return (), None
    if record.get("expected") is not None:
        raise ConfigurationError(
            f"{where}: give either expected (a generated answer) or choices (scored answers), "
            "not both"
        )
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c.strip() for c in choices)
        or len(set(choices)) != len(choices)
    ):
        raise ConfigurationError(
            f"{where}: choices must be a list of two or more different non-empty strings, got "
            f"{choices!r}"
        )
    if answer is None:
        return tuple(choices), None
    if isinstance(answer, str) and answer in choices:
        return tuple(choices), choices.index(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return tuple(choices), answer
    raise ConfigurationError(
        f"{where}: answer must be the index (0-{len(choices) - 1}) or the text of one of the "
        f"choices, got {answer!r}"
    )


def _parse_id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where}: id must be a non-empty string, got {value!r}")
    return value


def _parse_messages(
    value: Any, where: str, allow_control_tokens: bool = False
) -> tuple[Message, ...]:
    if value is None:
        raise ConfigurationError(
            f'{where}: messages is missing; add "messages": [{{"role": "user", "content": ...}}]'
        )
    try:
        return tuple(validate_messages(value, allow_control_tokens=allow_control_tokens))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _parse_expected(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    answers = [value] if isinstance(value, str) else value
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, str) and a.strip() for a in answers)
    ):
        raise ConfigurationError(
            f"{where}: expected must be a non-empty string or a list of them, got {value!r}"
        )
    return tuple(answers)
