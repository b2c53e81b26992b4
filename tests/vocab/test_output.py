"""The output directory: escaping, and the report without matplotlib."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from qwen_backends.vocab import extract_english_tokens
from qwen_backends.vocab.output import escape_text, format_summary_table, write_output


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b" world", " world"),
        (b"a\tb\nc\rd", "a\\tb\\nc\\rd"),
        (b"back\\slash", "back\\\\slash"),
        (b"\x00\x1b[", "\\x00\\x1b["),
        ("café —".encode(), "café —"),
        (b"\xe4\xbd", "\\xe4\\xbd"),
        (b"\\\xe4", "\\\\\\xe4"),  # a real backslash stays distinguishable from a byte escape
    ],
)
def test_escape_text_keeps_one_line_and_exact_bytes(data: bytes, text: str) -> None:
    assert escape_text(data) == text


def test_without_matplotlib_the_report_says_so(
    offline_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    vocab = extract_english_tokens(offline_tokenizer, "strict")
    files = write_output(vocab, tmp_path / "out", tokenizer=offline_tokenizer)
    assert "chart" not in files and not (tmp_path / "out" / "categories.png").exists()
    report = files["report"].read_text(encoding="utf-8")
    assert "Chart skipped: matplotlib is not installed" in report
    assert "## Validation" not in report
    summary = json.loads(files["summary"].read_text(encoding="utf-8"))
    assert summary["tier"] == "strict" and "validation" not in summary
    assert summary["tier_size"] == summary["tiers"]["strict"]["count"]


def test_summary_table_lists_every_category_and_tier(offline_tokenizer: Any) -> None:
    summary = extract_english_tokens(offline_tokenizer, "ascii").summary()
    table = format_summary_table(summary)
    for name in [*summary["categories"], *summary["tiers"]]:
        assert f"\n{name} " in table
    assert "ascii                    94,329    62.19  <- extracted" in table
