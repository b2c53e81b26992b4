"""``qwen-backends serve``: an OpenAI-compatible endpoint over any backend, always non-thinking.

- :mod:`qwen_backends.serve.app` -- the ASGI app (:func:`~qwen_backends.serve.app.create_app`);
- :mod:`qwen_backends.serve.openai_schema` -- OpenAI requests to the library and back, errors;
- :mod:`qwen_backends.serve.concurrency` -- the per-backend admission policy.

Needs the ``serve`` extra (starlette, uvicorn); importing this package imports neither. See
docs/serve.md.
"""

from __future__ import annotations
