"""One module per runtime, each named after the library it wraps.

``base`` holds the interface; ``hf``, ``ollama``, ``unsloth`` and ``vllm`` implement it. None of
them is imported here: :mod:`qwen_backends.factory` imports the one the settings select.
"""
