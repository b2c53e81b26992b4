"""Fine-tune Qwen3-4B with LoRA: one pipeline, two engines, a non-thinking Ollama export.

- :mod:`~qwen_backends.finetune.config` -- :class:`FinetuneConfig`, loaded from YAML;
- :mod:`~qwen_backends.finetune.data` -- conversations to examples with the inference prompt
  (train/infer parity) and assistant-only labels;
- :mod:`~qwen_backends.finetune.engines` -- ``unsloth`` (GPU) and ``peft`` (CPU or GPU);
- :mod:`~qwen_backends.finetune.pipeline` -- :func:`run_finetune`, the shared steps;
- :mod:`~qwen_backends.finetune.ollama` -- the Modelfile with a non-thinking TEMPLATE.

Nothing heavy is imported here: torch, transformers, peft, trl and unsloth load when a run
starts.
"""

from qwen_backends.finetune.config import FinetuneConfig, load_config
from qwen_backends.finetune.pipeline import FinetuneResult, run_finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "load_config", "run_finetune"]
