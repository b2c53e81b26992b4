"""``qwen-backends vocab english``: writes the directory, prints the table, fails in one line."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_backends.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One in-process run of the command with validation (saves a second tokenizer load)."""
    out = tmp_path_factory.mktemp("vocab") / "english"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["vocab", "english", "--tokenizer", "offline", "--output", str(out)])
    assert status == 0, stderr.getvalue()
    return out, stdout.getvalue()


def test_cli_writes_every_file(run_dir: tuple[Path, str]) -> None:
    out, _ = run_dir
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["tier"] == "english" and summary["vocab_size"] == 151_669
    assert summary["criteria_version"]
    assert summary["files"] == {
        "tokens": "tokens.tsv",
        "token_ids": "token_ids.npy",
        "summary": "summary.json",
        "report": "report.md",
        "chart": "categories.png",
    }
    ids = np.load(out / "token_ids.npy")
    assert ids.dtype == np.int32 and len(ids) == summary["tier_size"]
    assert np.all(np.diff(ids) > 0)
    assert summary["validation"]["lexicon_recall"]["recall"] >= 99.5
    assert (out / "categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "![token categories](categories.png)" in report and "## Validation" in report


def test_tokens_tsv_has_one_exact_line_per_token(
    run_dir: tuple[Path, str],
) -> None:
    out, _ = run_dir
    lines = (out / "tokens.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "id\ttoken\ttext\tbytes_hex\tcategory\ttier"
    assert lines[-1] == ""
    rows = [line.split("\t") for line in lines[1:-1]]
    assert len(rows) == 151_669 and all(len(row) == 6 for row in rows)
    by_id = {int(row[0]): row for row in rows}
    assert by_id[1879] == ["1879", "Ġworld", " world", b" world".hex(), "ascii_word", "strict"]
    assert by_id[271][2] == "\\n\\n" and by_id[271][4] == "whitespace"
    assert by_id[151645][4:] == ["special", "-"]
    partial = next(row for row in rows if row[4] == "partial_utf8")
    assert partial[2].startswith("\\x")
    with pytest.raises(UnicodeDecodeError):
        bytes.fromhex(partial[3]).decode("utf-8")
    tier_ids = set(np.load(out / "token_ids.npy").tolist())
    assert tier_ids == {int(row[0]) for row in rows if row[5] != "-"}


def test_cli_prints_the_summary_table(run_dir: tuple[Path, str]) -> None:
    _, stdout = run_dir
    assert "ascii_word" in stdout and "partial_utf8" in stdout
    assert "<- extracted" in stdout
    assert "total                   151,669" in stdout
    assert "lexicon recall (english)" in stdout


def test_bad_output_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status = main(["vocab", "english", "--tokenizer", "offline", "--output", str(blocker / "d")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "cannot use" in err and "--output" in err


def test_unknown_tokenizer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-tokenizer"
    status = main(["vocab", "english", "--tokenizer", str(missing), "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "does not exist" in err and "offline" in err
    assert "Repo id" not in err  # not transformers' hub-id complaint about a local path


def test_unknown_hub_tokenizer_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["vocab", "english", "--tokenizer", "Qwen/no-such-tokenizer", "--output", "o"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "cannot load the tokenizer" in err and "offline" in err


def test_directory_without_tokenizer_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["vocab", "english", "--tokenizer", str(tmp_path), "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "holds no tokenizer" in err


def test_script_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "extract_english_tokens.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--tier {strict,ascii,english}" in result.stdout and "--output DIR" in result.stdout
