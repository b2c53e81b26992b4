"""A minimal in-process backend, written by docs/adding_a_backend.md's steps (never shipped).

It proves the checklist: one module (this one), its settings section, one registration
(:data:`ECHO`) and the conformance suite (harnesses.py builds it). The "model" repeats the
words of the last message, in order when greedy and drawn with the seed when sampling.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.local import LocalBackend
from qwen_backends.registry import Registration
from qwen_backends.results import Request
from qwen_backends.settings import Section

#: The one registration (``BACKENDS.register("echo", ECHO)``).
ECHO = Registration(
    "echo_backend:EchoBackend",
    "hf",  # its extra: the offline tokenizer is all it needs
    ("transformers",),
    "echoes the last message (a test backend)",
    settings="echo_backend:EchoSettings",
    family_model="hf",
)


class EchoSettings(Section):
    """The echo backend's section (``QWEN_ECHO__...``)."""

    model: str | None = Field(None, min_length=1, description="Ignored: the echo needs none.")
    context_window: int = Field(4096, ge=16, description="Most tokens one call may use.")


class EchoBackend(LocalBackend):
    """Answers with the words of the last message, forever (until a limit ends the answer)."""

    name = "echo"
    runtime = "echo"
    capabilities = Capabilities(renders_locally=True, tools=True)

    def _load(self) -> None:
        from qwen_backends.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer("offline")
        self.vocab_rows = 151_936

    @property
    def context_window(self) -> int:
        """``QWEN_ECHO__CONTEXT_WINDOW``."""
        return self.settings.section(EchoSettings, self.name).context_window

    def _tokens(self, prompt_ids: list[int], request: Request, compiled: Any) -> Iterator[int]:
        said = f" You said: {request.messages[-1]['content']}."
        words = list(self.tokenizer(said, add_special_tokens=False)["input_ids"])
        sampling = request.sampling
        draw = random.Random(sampling.seed if sampling.seed is not None else secrets.randbits(64))
        for step in range(sampling.max_new_tokens):
            yield words[step % len(words)] if sampling.is_greedy else draw.choice(words)
