"""The CLI through a subprocess: info, make-test-model, and one-line errors for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import assert_one_line_error, cli


def test_info_reports_settings_extras_and_backends() -> None:
    result = cli(
        "info",
        "--json",
        env={
            "QWEN_HF__TOKEN": "hf_topsecret",
            "QWEN_BACKEND": "ollama",
            "QWEN_OLLAMA__HOST": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["backend"] == "ollama"
    assert report["settings"]["hf"]["token"] == "**********"
    assert "hf_topsecret" not in result.stdout
    assert report["extras"]["hf"] is True
    assert report["accelerators"]["cuda"] is False
    assert report["backends"]["hf"] == "ready"
    assert "no server at http://127.0.0.1:9/api/version" in report["backends"]["ollama"]
    assert "ollama serve" in report["backends"]["ollama"]


def test_info_human_output() -> None:
    result = cli("info", "--backend", "vllm", "--model", "served-name")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backend: vllm  model: served-name")


@pytest.mark.parametrize(
    ("env", "args", "fragment"),
    [
        ({"QWEN_SAMPLING__TOP_P": "3"}, ("info",), "top_p=3.0 is out of range"),
        ({"QWEN_BACKEND": "olama"}, ("info",), "did you mean 'ollama'"),
        ({"QWEN_ENABLE_THINKING": "1"}, ("info",), "thinking mode"),
        ({"QWEN_CONFIG": "/nonexistent/config.yaml"}, ("info",), "QWEN_CONFIG names"),
        ({}, ("info", "--config", "/nonexistent.yaml"), "does not exist"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    env: dict[str, str], args: tuple[str, ...], fragment: str
) -> None:
    assert_one_line_error(cli(*args, env=env), fragment)


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = cli("frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_make_test_model_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = cli("make-test-model", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == tmp_path / "m"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }


def test_info_shows_the_family_and_every_backend_model() -> None:
    result = cli("info", "--json", env={"QWEN_FAMILY": "qwen3-4b-instruct-2507"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["family"]["name"] == "qwen3-4b-instruct-2507"
    assert report["family"]["mode"] == "non-thinking"
    assert report["models"]["hf"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert report["models"]["ollama"] == "qwen3:4b-instruct-2507-q4_K_M"
    assert report["models"]["unsloth"] == "unsloth/Qwen3-4B-Instruct-2507"
    human = cli("info", "--family", "qwen3-4b", "--backend", "vllm")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("backend: vllm  model: Qwen/Qwen3-4B\n")
    assert "family: qwen3-4b -- Qwen3-4B (hybrid" in human.stdout
    assert "ollama   model qwen3-4b-nothink:q4_K_M:" in human.stdout


def test_make_test_model_with_the_thinking_template_is_refused_by_generate(
    tmp_path: Path,
) -> None:
    made = cli("make-test-model", str(tmp_path / "t"), "--template", "thinking-2507")
    assert made.returncode == 0, made.stderr
    result = cli("generate", "hi", "--backend", "hf", "--model", str(tmp_path / "t"))
    assert_one_line_error(result, "thinking-only", "Qwen/Qwen3-4B-Instruct-2507")
