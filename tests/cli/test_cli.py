"""The CLI through a subprocess: info, make-test-model, and one-line errors for user mistakes."""

from __future__ import annotations

import base64
import http.server
import io
import json
import sys
import threading
from pathlib import Path

import pytest
from cli_runner import assert_one_line_error, cli

from qwen_backends.cli import main


def test_info_reports_settings_extras_and_backends() -> None:
    result = cli(
        "info",
        "--json",
        env={
            "QWEN_HF__TOKEN": "hf_topsecret",
            "QWEN_BACKEND": "ollama",
            "QWEN_OLLAMA__HOST": "http://127.0.0.1:9",
            "QWEN_HF__PROMPT_CACHE_MB": "0",
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
    caches = report["prompt_cache"]
    assert caches["hf"] == "off (QWEN_HF__PROMPT_CACHE_MB=0)"
    assert caches["ollama"].startswith("none in this library (the server keeps its own")


def test_info_human_output() -> None:
    result = cli("info", "--backend", "vllm", "--model", "served-name")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backend: vllm  model: served-name")
    assert "prompt cache: on, 1,024 MiB (QWEN_HF__PROMPT_CACHE_MB; 0 turns it off)" in (
        result.stdout
    )


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


# -- failures from outside the library, --debug, secrets (issue 13) ---------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("backend: [hf\n", ("bad.yaml:2:1:", "not valid YAML")),
        ("- hf\n- ollama\n", ("bad.yaml:", "must be a mapping", "got a list")),
    ],
)
def test_broken_config_file_is_one_line(
    tmp_path: Path, text: str, fragments: tuple[str, ...]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    assert_one_line_error(cli("info", "--config", str(config)), *fragments)


def test_shared_dotenv_does_not_break_commands() -> None:
    # The autouse fixture made a fresh working directory; the subprocess inherits it.
    Path(".env").write_text(
        "OPENAI_API_KEY=sk-x\nDATABASE_URL=postgres://u:p@db/app\nQWEN_BACKEND=vllm\n",
        encoding="utf-8",
    )
    result = cli("info", "--json", env={"QWEN_VLLM__BASE_URL": "http://127.0.0.1:9/v1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["settings"]["backend"] == "vllm"


def test_info_masks_credentials_in_server_urls() -> None:
    result = cli(
        "info",
        env={
            "QWEN_VLLM__BASE_URL": "http://bob:hunter2@127.0.0.1:9/v1",
            "QWEN_OLLAMA__HOST": "http://ann:s3cret@127.0.0.1:9",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "http://***@127.0.0.1:9/v1" in result.stdout


def test_url_without_scheme_is_refused_before_any_request() -> None:
    result = cli("info", env={"QWEN_VLLM__BASE_URL": "127.0.0.1:8000/v1"})
    assert_one_line_error(result, "vllm.base_url", "http:// or https://")


def test_output_paths_that_are_files_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    assert_one_line_error(cli("make-test-model", str(blocker)), "is a file")
    assert_one_line_error(cli("make-test-model", str(blocker / "m")), "cannot create")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "messages": "hi"}\n', encoding="utf-8")
    result = cli("eval", "--output-dir", str(blocker), "--prompts", str(prompts))
    assert_one_line_error(result, f"{blocker} is a file, not a directory for evaluation runs")


def test_closed_or_binary_stdin_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["generate", "-"]) == 2
    assert "standard input, which is closed" in capsys.readouterr().err
    assert main(["chat"]) == 2
    assert "standard input is closed" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait")))
    assert main(["generate", "-"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "<stdin>:1: the prompt is not UTF-8 text" in err


def test_unexpected_failures_are_one_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwen_backends.cli import info

    def broken(args: object) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(info, "run", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "qwen-backends: error: unexpected RuntimeError: boom (run with --debug for the traceback)\n"
    )
    for argv in (["--debug", "info"], ["info", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and 'raise RuntimeError("boom' in err
        assert err.endswith("qwen-backends: error: unexpected RuntimeError: boom\n")


def test_debug_also_shows_where_a_library_error_came_from(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backend: [hf\n", encoding="utf-8")
    result = cli("info", "--config", str(config), "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "load_yaml_mapping" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("qwen-backends: error: ")


def test_probe_sends_the_configured_key_and_masks_the_url() -> None:
    from qwen_backends.backends.vllm import VLLMBackend
    from qwen_backends.cli.info import probe_server
    from qwen_backends.settings import Settings

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            ok = seen[-1] in ("Bearer sk-right", "Basic " + base64.b64encode(b"u:pw").decode())
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b'{"data": []}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        base = f"http://127.0.0.1:{port}/v1"
        right = Settings(vllm={"base_url": base, "api_key": "sk-right"})
        assert VLLMBackend.readiness(right).startswith("ready")
        assert seen[-1] == "Bearer sk-right"
        wrong = Settings(vllm={"base_url": base, "api_key": "sk-wrong"})
        verdict = VLLMBackend.readiness(wrong)
        assert "refuses the credentials (HTTP 401); set QWEN_VLLM__API_KEY" in verdict
        verdict = probe_server(f"http://u:pw@127.0.0.1:{port}/api/version", "ollama serve")
        assert verdict == f"ready (server answers at http://***@127.0.0.1:{port}/api/version)"
    finally:
        server.shutdown()
        server.server_close()


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
