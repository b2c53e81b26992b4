"""outputs.jsonl: whole-line appends, torn trailing lines cut off, damaged files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation.store import OutputsFile, write_json_atomic


def test_append_then_recover(tmp_path: Path) -> None:
    outputs = OutputsFile(tmp_path / "run" / "outputs.jsonl")
    assert outputs.recover() == []
    outputs.append({"id": "a", "text": "première ligne\nwith a newline"})
    outputs.append({"id": "b", "text": "x"})
    outputs.close()
    outputs.close()
    raw = outputs.path.read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    again = OutputsFile(outputs.path)
    assert [r["id"] for r in again.recover()] == ["a", "b"]
    assert again.recover()[0]["text"] == "première ligne\nwith a newline"
    assert again.dropped_bytes == 0


def test_torn_trailing_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "outputs.jsonl"
    whole = json.dumps({"id": "a", "text": "done"}) + "\n"
    torn = json.dumps({"id": "b", "text": "cut short"})[:12]
    path.write_text(whole + torn, encoding="utf-8")

    peek = OutputsFile(path)
    assert [r["id"] for r in peek.recover(repair=False)] == ["a"]
    assert peek.dropped_bytes == len(torn)
    assert path.read_text(encoding="utf-8") == whole + torn, "repair=False must not write"

    outputs = OutputsFile(path)
    assert [r["id"] for r in outputs.recover()] == ["a"]
    assert path.read_text(encoding="utf-8") == whole
    outputs.append({"id": "b", "text": "again"})
    outputs.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"id": "a"}\nnot json\n{"id": "c"}\n', "outputs.jsonl:2: not an output record"),
        ('{"id": "a"}\n{"text": "no id"}\n', "outputs.jsonl:2: not an output record"),
        ('{"id": "a"}\n{"id": "a"}\n', "outputs.jsonl:2: a second record for id 'a'"),
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "outputs.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError, match="run_name") as info:
        OutputsFile(path).recover()
    assert fragment in str(info.value)


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2, "text": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2, "text": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
