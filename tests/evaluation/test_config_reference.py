"""docs/configuration.md is generated from the Settings model and must not go stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel

from qwen_backends.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "generate_config_reference.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_config_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_is_current() -> None:
    module = generator()
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == module.render_reference(), (
        "docs/configuration.md is stale: run `python scripts/generate_config_reference.py`"
    )


def test_every_setting_has_a_row_with_variable_type_and_default() -> None:
    text = generator().render_reference()
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")
    }
    expected = []
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            expected += [f"{name}.{child}" for child in info.annotation.model_fields]
        else:
            expected.append(name)
    assert sorted(rows) == sorted(f"`{key}`" for key in expected)
    sample = rows["`evaluation.output_dir`"]
    assert "`QWEN_EVALUATION__OUTPUT_DIR`" in sample and "`runs/evaluation`" in sample
    assert "| path |" in sample and "one folder per run" in sample
    assert "integer (>= 1)" in rows["`hf.max_context`"]
    assert "one of `auto`, `bfloat16`, `float16`, `float32`" in rows["`hf.dtype`"]


def test_check_mode_reports_stale_files(tmp_path: Path, capsys) -> None:
    module = generator()
    target = tmp_path / "configuration.md"
    assert module.main(["--check", "--output", str(target)]) == 1
    assert module.main(["--output", str(target)]) == 0
    assert module.main(["--check", "--output", str(target)]) == 0
    assert "up to date" in capsys.readouterr().out
