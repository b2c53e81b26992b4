"""Converting a Qwen3 checkpoint for another runtime (``qwen-backends export ...``).

- :func:`qwen_backends.export.gguf.convert_to_gguf` -- a GGUF file for llama.cpp and Ollama,
  checked in llama.cpp itself with :func:`qwen_backends.export.gguf.verify_gguf`;
- :func:`qwen_backends.export.mlx.export_mlx` -- an MLX copy (optionally 4- or 8-bit) for the
  mlx backend, checked with :func:`qwen_backends.export.mlx.check_mlx_export`.

Heavy imports (llama_cpp, torch, mlx, mlx-lm) happen inside the functions.
"""
