"""``qwen-backends export mlx``: one-line errors before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import assert_one_line_error, cli

pytestmark = pytest.mark.timeout(240)


def test_export_mlx_errors_are_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    result = cli("export", "mlx", str(tiny_model_dir), "--output", str(tmp_path / "used"))
    assert_one_line_error(result, "not empty", "choose a new directory")
    missing = cli("export", "mlx", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "does not exist" in missing.stderr and not (tmp_path / "o").exists()


def test_export_help_lists_mlx_with_its_options() -> None:
    result = cli("export", "mlx", "--help")
    assert result.returncode == 0
    for option in ("--output", "--quant", "4bit", "8bit", "none", "--group-size"):
        assert option in result.stdout
