"""``qwen-backends finetune``: a real (short) run, and one-line errors for mistakes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qwen_backends.cli import main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "cpu_smoke.yaml"


def _one_line(stderr: str, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert lines[0].startswith("qwen-backends: error: ")


def test_finetune_runs_the_config_and_prints_where_things_are(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    status = main(
        [
            "finetune",
            "--config",
            str(SMOKE),
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "trained 2 steps on 9 examples" in printed
    assert f"merged model: {out / 'merged'}" in printed
    assert f"cd {out} && ollama create qwen3-smoke -f Modelfile" in printed
    assert (out / "merged" / "config.json").is_file()


def test_a_missing_config_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["finetune", "--config", str(tmp_path / "nope.yaml")]) == 2
    _one_line(capsys.readouterr().err, "does not exist")


def test_a_missing_smoke_checkpoint_says_how_to_build_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the config's default model ./runs/tiny-qwen3 does not exist in the test's empty cwd
    assert main(["finetune", "--config", str(SMOKE)]) == 1
    _one_line(capsys.readouterr().err, "qwen-backends make-test-model ./runs/tiny-qwen3")


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth installed")
def test_the_unsloth_engine_without_unsloth_names_the_extra(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["finetune", "--config", str(SMOKE), "--engine", "unsloth"]) == 2
    _one_line(capsys.readouterr().err, "pip install 'qwen-backends[unsloth]'")
