"""Readiness probes of the server backends (qwen_backends/backends/probe.py) stand alone: no CLI.

The verdicts on a live server (key sent, credentials masked) are in tests/cli/test_cli.py
(``qwen-backends info`` shows them).
"""

from __future__ import annotations

import socket
import subprocess
import sys

from qwen_backends.backends.probe import probe_server


def test_the_backends_probe_without_importing_the_cli() -> None:
    code = (
        "import sys\n"
        "from qwen_backends.backends.ollama import OllamaBackend\n"
        "from qwen_backends.backends.vllm import VLLMBackend\n"
        "from qwen_backends.settings import Settings\n"
        "settings = Settings(ollama={'host': 'http://127.0.0.1:9'},"
        " vllm={'base_url': 'http://127.0.0.1:9/v1'})\n"
        "print(OllamaBackend.readiness(settings))\n"
        "print(VLLMBackend.readiness(settings))\n"
        "print(sorted(name for name in sys.modules if name.startswith('qwen_backends.cli')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ollama, vllm, cli = out.stdout.splitlines()
    assert ollama.startswith("installed; no server at http://127.0.0.1:9/api/version")
    assert vllm.startswith("installed; no server at http://127.0.0.1:9/v1/models")
    assert cli == "[]"


def test_an_address_where_nothing_listens_says_how_to_start_a_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    verdict = probe_server(f"http://user:secret@127.0.0.1:{port}/api/version", "ollama serve")
    assert verdict.startswith(f"installed; no server at http://***@127.0.0.1:{port}/api/version")
    assert verdict.endswith("start one with `ollama serve`") and "secret" not in verdict
