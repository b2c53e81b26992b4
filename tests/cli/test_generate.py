"""``qwen-backends generate`` and ``chat`` on the tiny checkpoint (subprocess, pexpect, main())."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from qwen_backends.chat import render_prompt_ids
from qwen_backends.cli import main

#: Greedy with a presence penalty: deterministic and a different token at every step.
FLAGS = ("--temperature", "0", "--presence-penalty", "2", "--max-new-tokens", "6")


def test_generate_json_through_the_installed_entry_point(
    tiny_model_dir: Path, offline_tokenizer: Any
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_backends.cli",
            "generate",
            "Hello",
            "--json",
            "--model",
            str(tiny_model_dir),
            "--system",
            "Be brief.",
            *FLAGS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QWEN_BACKEND": "hf"},
    )
    assert result.returncode == 0, result.stderr
    generation = json.loads(result.stdout)
    assert set(generation) == {
        "text",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "seconds",
        "tool_calls",
        "parsed",
        "logprobs",
        "cached_tokens",
    }
    assert generation["logprobs"] is None and generation["cached_tokens"] == 0
    assert generation["completion_tokens"] == 6 and generation["finish_reason"] == "length"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert generation["prompt_tokens"] == len(render_prompt_ids(offline_tokenizer, messages))
    assert generation["text"]


def test_generate_streams_the_same_text_as_json(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "Hello", "--model", str(tiny_model_dir), *FLAGS]
    assert main([*args, "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["text"]
    assert main(args) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_reports_a_missing_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "Hi", "--model", str(tmp_path / "missing")]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "does not exist" in error


def _chat(model: Path) -> Any:
    """``qwen-backends chat`` on ``model`` under a pseudo-terminal."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "qwen_backends.cli", "chat", "--model", str(model), *FLAGS],
        encoding="utf-8",
        timeout=300,
        env={**os.environ, "QWEN_BACKEND": "hf"},
    )


def _turn(child: Any, message: str) -> str:
    """Send ``message`` and return the answer printed before the next prompt."""
    child.sendline(message)
    child.expect(">>> ")
    return str(child.before).replace("\r\n", "\n").split("\n", 1)[1].strip()


def test_chat_keeps_history_resets_and_exits(tiny_model_dir: Path) -> None:
    child = _chat(tiny_model_dir)
    try:
        child.expect(">>> ")
        first = _turn(child, "Hello")
        second = _turn(child, "Hello")  # the history now holds the first exchange: another prompt
        assert first and second and first != second
        child.sendline("/reset")
        child.expect("history cleared")
        child.expect(">>> ")
        assert _turn(child, "Hello") == first  # same conversation again after the reset
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_ctrl_c_at_the_prompt_keeps_the_session_and_its_history(tiny_model_dir: Path) -> None:
    child = _chat(tiny_model_dir)
    try:
        child.expect(">>> ")
        first = _turn(child, "Hello")
        child.send("half a line")
        child.sendintr()
        child.expect("Ctrl-C: line dropped")
        child.expect(">>> ")
        after_interrupt = _turn(child, "Hello")  # answered with the first exchange in the history
        child.sendline("/reset")
        child.expect(">>> ")
        assert _turn(child, "Hello") == first
        assert _turn(child, "Hello") == after_interrupt  # the same history, never interrupted
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_ends_cleanly_at_end_of_input(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n\n"))
    assert main(["chat", "--model", str(tiny_model_dir), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert out.count(">>> ") == 3 and "Traceback" not in out
