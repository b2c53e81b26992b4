"""Fixtures for the server tests: the app on loopback with the hf tiny checkpoint and the Ollama
stand-in (tests/backends/ollama_server.py), each behind uvicorn in a thread on a free port."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from isolation import isolated_in

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backends"))

from ollama_server import OllamaServer, TinyQwen

from qwen_backends import create_backend
from qwen_backends.backends.base import ModelBackend
from qwen_backends.settings import ServeSettings


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Served:
    """``create_app(backend)`` behind uvicorn in a background thread on a free loopback port.

    Parameters
    ----------
    backend
        The backend to serve (not closed when the server stops).
    serve
        Server settings (``max_queue``, ``api_key``...).
    """

    def __init__(self, backend: ModelBackend, **serve: Any) -> None:
        import uvicorn

        from qwen_backends.serve.app import create_app
        from qwen_backends.serve.limits import uvicorn_config

        self.backend = backend
        settings = ServeSettings(**serve)
        self.app = create_app(backend, settings, owns_backend=False)
        self.port = free_port()
        config = uvicorn_config(
            self.app,
            settings,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model id the server answers to."""
        return self.backend.model_name

    def state(self) -> Any:
        """The app's shared state (admission gate, in-flight tasks)."""
        return self.app.state.serve

    def client(self, **kwargs: Any) -> Any:
        """A real ``openai.OpenAI`` client for this server."""
        import openai

        return openai.OpenAI(
            base_url=self.base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs
        )

    def async_client(self, **kwargs: Any) -> Any:
        """A real ``openai.AsyncOpenAI`` client for this server."""
        import openai

        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs
        )

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session-wide version of the autouse isolation (no QWEN_* env, no configs/ in cwd)."""
    with isolated_in(tmp_path_factory.mktemp("serve-cwd")):
        yield


@pytest.fixture(scope="session")
def hf_backend(isolated_session: None, tiny_model_dir: Path) -> Iterator[ModelBackend]:
    """The hf backend on the tiny random-weight checkpoint (loaded once)."""
    backend = create_backend(backend="hf", model=str(tiny_model_dir), hf={"device": "cpu"})
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> TinyQwen:
    """The checkpoint the Ollama stand-in answers with."""
    return TinyQwen(tiny_model_dir)


@pytest.fixture(scope="session")
def stand_in(engine: TinyQwen) -> Iterator[OllamaServer]:
    """The Ollama stand-in on loopback (default model: the instruct tag)."""
    with OllamaServer(engine) as server:
        yield server


@pytest.fixture
def ollama_server(stand_in: OllamaServer) -> OllamaServer:
    """The stand-in, with the previous test's requests and behaviours forgotten."""
    stand_in.reset()
    return stand_in


@pytest.fixture(scope="session")
def ollama_backend(isolated_session: None, stand_in: OllamaServer) -> Iterator[ModelBackend]:
    """The ollama backend pointed at the stand-in."""
    backend = create_backend(
        backend="ollama", family="qwen3-4b-instruct-2507", ollama={"host": stand_in.url}
    )
    backend.remote.backoff = 0.0  # type: ignore[attr-defined]  # retry at once
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_served(hf_backend: ModelBackend) -> Iterator[Served]:
    """The hf backend served (queue of 32)."""
    with Served(hf_backend, max_queue=32) as served:
        yield served


@pytest.fixture(scope="session")
def ollama_served(ollama_backend: ModelBackend) -> Iterator[Served]:
    """The ollama backend served."""
    with Served(ollama_backend) as served:
        yield served
