"""qwen-backends: Qwen3-4B behind one interface on every runtime, always non-thinking.

Runtimes: transformers, Ollama, llama.cpp, MLX, Unsloth and vLLM (:mod:`qwen_backends.registry`).

The data path::

    messages --chat.validate_messages--> chat.render_prompt (non-thinking)
             --> backends/<runtime>.py --> thinking.py (nothing of it reaches you) --> Generation

Quick start::

    from qwen_backends import create_backend
    with create_backend() as backend:          # QWEN_BACKEND picks the runtime
        print(backend.generate("What is 2+2?").text)

Importing this package loads no heavy library (torch, transformers, ollama, unsloth, openai);
each backend imports its own when it is built.
"""

from qwen_backends.backends.base import Capabilities, ModelBackend
from qwen_backends.chat import render_prompt, validate_messages
from qwen_backends.errors import QwenBackendsError
from qwen_backends.factory import create_backend
from qwen_backends.results import Generation, Score, ScoredToken, ToolCall
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings
from qwen_backends.structured import ResponseFormat
from qwen_backends.thinking import strip_thinking
from qwen_backends.tokenizer import load_tokenizer

__all__ = [
    "Capabilities",
    "Generation",
    "ModelBackend",
    "QwenBackendsError",
    "ResponseFormat",
    "SamplingParams",
    "Score",
    "ScoredToken",
    "Settings",
    "ToolCall",
    "create_backend",
    "load_tokenizer",
    "render_prompt",
    "strip_thinking",
    "validate_messages",
]

__version__ = "0.1.0"
