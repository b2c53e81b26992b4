"""``qwen-backends serve`` as a user runs it: flags, the bind rule, SIGTERM mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from ollama_server import INSTRUCT_TAG, OllamaServer

from qwen_backends.cli import build_parser, main
from qwen_backends.errors import ConfigurationError
from qwen_backends.serve.app import check_bind

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cli"))

from cli_runner import assert_one_line_error, cli

KEY = "test-key-7f3a9c"
SERVE = [sys.executable, "-m", "qwen_backends.cli", "serve"]


def test_serve_is_a_subcommand_with_its_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--backend", "ollama", "--host", "::1", "--port", "9", "--api-key", "k"]
    )
    assert (args.backend, args.host, args.port, args.api_key) == ("ollama", "::1", 9, "k")
    assert args.handler.__module__ == "qwen_backends.cli.serve"


def test_a_non_loopback_host_needs_an_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "ollama", "--host", "0.0.0.0"]) == 2
    message = capsys.readouterr().err.strip()
    assert "QWEN_SERVE__API_KEY" in message and "\n" not in message
    check_bind("0.0.0.0", "a-key")
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    with pytest.raises(ConfigurationError):
        check_bind("192.168.1.5", None)


def test_bad_settings_are_one_line_errors() -> None:
    result = cli("serve", "--backend", "ollama", env={"QWEN_SERVE__MAX_QUEUE": "-1"})
    assert_one_line_error(result, "max_queue")


def wait_healthy(url: str, process: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early: {process.communicate()[1]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("serve did not come up")


@pytest.mark.timeout(300)
def test_sigterm_mid_stream_ends_the_stream_cleanly_and_frees_the_backend(
    ollama_server: OllamaServer,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "QWEN_OLLAMA__HOST": ollama_server.url,
        "QWEN_SERVE__API_KEY": KEY,
        "QWEN_SERVE__SHUTDOWN_TIMEOUT": "1",
    }
    process = subprocess.Popen(
        [*SERVE, "--backend", "ollama", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        body = {
            "model": INSTRUCT_TAG,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 100_000 // 25,
            "temperature": 0,
            "presence_penalty": 2.0,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {KEY}"}
        events: list[str] = []
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 3:
                    break
            process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            events.extend(line[6:] for line in lines if line.startswith("data: "))
        assert time.monotonic() - stopped < 30
        # Finished within the grace period, or cancelled with a final error event: either way
        # the stream ends with [DONE], never a cut connection.
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        if "error" in last:
            assert last["error"]["code"] == "server_shutdown"
        else:
            assert last["choices"][0]["finish_reason"] in ("stop", "length")
        # uvicorn shuts down cleanly, then re-raises the signal it caught (as process managers
        # expect): the exit status is "terminated by SIGTERM", not a crash.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 10
        while ollama_server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ollama_server.in_flight == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)
    assert KEY not in stderr
    assert "Traceback" not in stderr, stderr
    assert "serving" in stderr
    assert "Application shutdown complete" in stderr


def test_info_reports_the_serve_extra() -> None:
    from qwen_backends.cli.info import collect
    from qwen_backends.settings import Settings

    report = collect(Settings())
    assert report["extras"]["serve"] is True
    assert report["settings"]["serve"]["host"] == "127.0.0.1"
