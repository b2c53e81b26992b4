"""``export_mlx`` on the tiny checkpoint, loaded back with the mlx backend.

Conversions take 10-30 s on two shared cores; every test has a timeout (MLX on Linux CPU has an
upstream report of hangs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

from qwen_backends import create_backend
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import ConfigurationError, ModelNotFoundError
from qwen_backends.export.mlx import check_mlx_export, export_mlx

pytestmark = [pytest.mark.mlx, pytest.mark.timeout(240)]

QUESTIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
]


@pytest.fixture(scope="module")
def unquantized(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_mlx(tiny_model_dir, tmp_path_factory.mktemp("mlx") / "none", quant="none")


def test_four_bit_export_loads_and_runs(
    tiny_model_dir: Path, tmp_path: Path, offline_tokenizer: Any
) -> None:
    from qwen_backends.cli import main

    target = tmp_path / "q4"
    assert main(["export", "mlx", str(tiny_model_dir), "--output", str(target)]) == 0
    config = json.loads((target / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    weights = (target / "model.safetensors").stat().st_size
    assert weights < (tiny_model_dir / "model.safetensors").stat().st_size / 4
    with create_backend(backend="mlx", model=str(target)) as backend:
        assert backend.prompt_ids("Hello") == render_prompt_ids(offline_tokenizer, "Hello")
        result = backend.generate("Hello", {"max_new_tokens": 6, "seed": 0})
    assert (result.finish_reason, result.completion_tokens) == ("length", 6)


def test_unquantized_export_answers_like_hf(unquantized: Path, tiny_model_dir: Path) -> None:
    assert "quantization" not in json.loads((unquantized / "config.json").read_text())
    check = check_mlx_export(unquantized, tiny_model_dir, QUESTIONS, max_new_tokens=8)
    assert check.prompts_checked == 2 and check.matched == 2 and check.agreement == 1.0


def test_a_changed_template_fails_the_check_clearly(
    unquantized: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(unquantized, tampered)
    template = tampered / "chat_template.jinja"
    text = template.read_text()
    assert text.count("+ content + '<|im_end|>'") >= 1
    template.write_text(text.replace("+ content + '<|im_end|>'", "+ content + ' <|im_end|>'", 1))
    with pytest.raises(ConfigurationError, match="renders a different prompt than its source"):
        check_mlx_export(tampered, tiny_model_dir, QUESTIONS, max_new_tokens=4)


def test_export_refuses_bad_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="not empty"):
        export_mlx(tiny_model_dir, tmp_path / "used")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_mlx(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ConfigurationError, match="unknown MLX quantization"):
        export_mlx(tiny_model_dir, tmp_path / "out", quant="3bit")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_export_leaves_nothing_and_the_rerun_works(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module = importlib.import_module("mlx_lm.convert")  # mlx_lm.convert is also a function
    real_convert = module.convert

    def interrupted(*args: Any, mlx_path: str, **kwargs: Any) -> None:
        Path(mlx_path).mkdir()
        (Path(mlx_path) / "config.json").write_text("{")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_mlx(tiny_model_dir, tmp_path / "out", quant="none")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a partial folder
    monkeypatch.setattr(module, "convert", real_convert)
    written = export_mlx(tiny_model_dir, tmp_path / "out", quant="none")
    assert written == tmp_path / "out" and (written / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
