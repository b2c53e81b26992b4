"""``qwen-backends generate --json-schema FILE`` on the tiny checkpoint (in-process main())."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qwen_backends.cli import main

SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["colour", "count"],
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine thrashes with two threads per process
    yield
    torch.set_num_threads(threads)


def test_the_validated_json_is_printed(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    args = ["generate", "Pick.", "--model", str(tiny_model_dir), "--json-schema", str(schema_file)]
    assert main([*args, "--seed", "3", "--max-new-tokens", "40"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"colour", "count"} and printed["colour"] in ("red", "green")
    assert main([*args, "--seed", "3", "--max-new-tokens", "40", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["parsed"] == printed and json.loads(whole["text"]) == printed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the JSON schema file"),
        ("{not json", "schema.json:1: the JSON schema file is not JSON"),
        ("[1, 2]", "holds a list; a JSON schema is an object"),
        ('{"type": "nope"}', "not a valid JSON schema"),
    ],
)
def test_a_bad_schema_file_is_one_line_before_any_model_loads(
    content: str | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_file = tmp_path / "schema.json"
    if content is not None:
        schema_file.write_text(content)
    missing_model = str(tmp_path / "no-model")
    assert main(["generate", "x", "--model", missing_model, "--json-schema", str(schema_file)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and message in error
