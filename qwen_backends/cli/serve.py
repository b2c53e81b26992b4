"""``qwen-backends serve``: the OpenAI chat API over any backend, always non-thinking.

Starts the configured backend once, then serves it with uvicorn until SIGTERM or Ctrl-C (which
let in-flight requests finish for ``serve.shutdown_timeout`` seconds, then cancel them). See
docs/serve.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Any

from qwen_backends.cli._options import add_backend_options, settings_from_args
from qwen_backends.errors import MissingDependencyError
from qwen_backends.factory import create_backend

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the model behind an OpenAI-compatible API (non-thinking)",
        description="Serve the configured backend at http://HOST:PORT/v1 (chat completions, "
        "streaming, models, tokenize) in non-thinking mode. Binds 127.0.0.1 unless told "
        "otherwise; any other host needs an API key.",
    )
    add_backend_options(parser)
    group = parser.add_argument_group("server (defaults: QWEN_SERVE__* settings)")
    group.add_argument("--host", help="address to bind (default 127.0.0.1)")
    group.add_argument("--port", type=int, help="TCP port (default 8000)")
    group.add_argument(
        "--api-key",
        help="key clients send as 'Authorization: Bearer KEY' (prefer QWEN_SERVE__API_KEY: "
        "command lines are visible to other users)",
    )
    group.add_argument(
        "--max-queue",
        type=int,
        help="in-process backends: requests that may wait for the running one (default 16)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start the backend and serve it until stopped."""
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"serve needs {', '.join(missing)}, which is not installed; install it with: "
            "pip install 'qwen-backends[serve]'"
        )
    import uvicorn

    from qwen_backends.serve.app import check_bind, create_app
    from qwen_backends.serve.limits import uvicorn_config

    settings = settings_from_args(args)
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("host", "port", "api_key", "max_queue")
        if getattr(args, name, None) is not None
    }
    if overrides:
        settings = settings.replace(serve=overrides)
    serve = settings.serve
    key = serve.api_key.get_secret_value() if serve.api_key is not None else None
    check_bind(serve.host, key)
    backend = create_backend(settings)
    app = create_app(backend, serve)
    # The library's own messages (and uvicorn's, configured by uvicorn); other libraries only
    # warn (httpx would log every backend request at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:     %(message)s")
    logging.getLogger("qwen_backends").setLevel(logging.INFO)
    print(
        f"qwen-backends: serving {backend.model_name} ({settings.backend} backend, "
        f"non-thinking) at http://{_url_host(serve.host)}:{serve.port}/v1"
        f"{' (API key required)' if key else ''}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn_config(
        app,
        serve,
        timeout_graceful_shutdown=serve.shutdown_timeout,
        log_level="info",
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
