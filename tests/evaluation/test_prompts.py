"""Reading JSONL prompt sets: the committed sample set, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation import load_prompts
from qwen_backends.evaluation.prompts import messages_digest

REPO = Path(__file__).resolve().parents[2]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_sample_prompt_set_is_valid_and_partly_scored() -> None:
    cases = load_prompts(REPO / "configs" / "evaluation" / "prompts.jsonl")
    assert 8 <= len(cases) <= 12
    assert len({case.id for case in cases}) == len(cases)
    scored = [case for case in cases if case.expected]
    assert 0 < len(scored) < len(cases)
    assert any(len(case.messages) > 2 for case in cases), "a multi-turn conversation"
    assert any(case.messages[0]["role"] == "system" for case in cases)


def test_fields_lines_and_string_messages(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        json.dumps({"id": "a", "messages": "Hi there", "expected": "hello"}),
        "",
        json.dumps(
            {
                "id": 7,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Name a colour."},
                ],
                "expected": ["red", "blue"],
            }
        ),
        json.dumps({"id": "c", "messages": [{"role": "user", "content": "Free text."}]}),
    )
    first, second, third = load_prompts(path)
    assert (first.id, first.line, first.expected) == ("a", 1, ("hello",))
    assert first.messages == ({"role": "user", "content": "Hi there"},)
    assert (second.id, second.line, second.expected) == ("7", 3, ("red", "blue"))
    assert [m["role"] for m in second.messages] == ["system", "user"]
    assert third.expected == ()
    assert first.digest == messages_digest([{"role": "user", "content": "Hi there"}])
    assert first.digest != third.digest


GOOD = json.dumps({"id": "ok", "messages": "fine"})


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ('{"id": "x", "messages": [', "p.jsonl:2: not valid JSON"),
        ('["id", "x"]', "p.jsonl:2: expected a JSON object"),
        ('{"id": "x", "messages": "hi", "solution": "a"}', "p.jsonl:2: unknown key(s) solution"),
        ('{"id": "x", "messages": "hi", "answer": "a"}', "p.jsonl:2: answer needs choices"),
        ('{"messages": "hi"}', "p.jsonl:2: id must be a non-empty string"),
        ('{"id": "x"}', "p.jsonl:2: messages is missing"),
        (
            '{"id": "x", "messages": [{"role": "robot", "content": "hi"}]}',
            "p.jsonl:2: message 0 has role 'robot'",
        ),
        (
            '{"id": "x", "messages": [{"role": "user", "content": "a"}, '
            '{"role": "assistant", "content": "b"}]}',
            "p.jsonl:2: the last message is from assistant",
        ),
        ('{"id": "x", "messages": "hi", "expected": 4}', "p.jsonl:2: expected must be"),
        ('{"id": "x", "messages": "hi", "expected": []}', "p.jsonl:2: expected must be"),
        ('{"id": "ok", "messages": "again"}', "p.jsonl:2: id 'ok' is already used on line 1"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, bad_line: str, fragment: str) -> None:
    path = write_lines(tmp_path / "p.jsonl", GOOD, bad_line, GOOD.replace("ok", "later"))
    with pytest.raises(ConfigurationError) as info:
        load_prompts(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"prompt set .*nope\.jsonl does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigurationError, match="is empty"):
        load_prompts(write_lines(tmp_path / "empty.jsonl", "", "  "))


def test_prompt_set_that_is_not_utf8_or_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"id": "a", "messages": "hi"}\n{"id": "b", "messages": "\xff"}\n')
    with pytest.raises(ConfigurationError, match=r"prompts\.jsonl:2: not UTF-8 text \(byte 0xff"):
        load_prompts(prompts)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigurationError, match=r"cannot read prompt set .*check its permissions"):
        load_prompts(prompts)


def test_control_tokens_in_a_prompt_set_name_file_and_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "messages": "hi"}, {"id": "b", "messages": "x<|im_start|>system"}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"prompts\.jsonl:2: message 0 \(user\) contains"):
        load_prompts(prompts)
    assert len(load_prompts(prompts, allow_control_tokens=True)) == 2
