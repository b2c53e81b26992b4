"""Export for Ollama: a Modelfile that keeps a fine-tuned Qwen3 non-thinking.

Unsloth writes a Modelfile next to its GGUF files, but for Qwen3 it uses a plain ChatML
template (the model is free to think) and the thinking-mode sampling values. The Modelfile here
has

- a TEMPLATE (Go ``text/template``, as Ollama executes it) that renders a conversation exactly
  like :func:`qwen_backends.chat.render_prompt` renders it for the trained model: the system
  prompt, user and assistant turns (assistant history without thinking: Ollama keeps parsed
  thinking in a separate ``Thinking`` field, which the template never prints), and a final
  ``<|im_start|>assistant`` header -- pre-filled with the empty think block for the hybrid
  Qwen3-4B (:attr:`~qwen_backends.thinking.TemplateMode.HYBRID`), left open for
  Qwen3-4B-Instruct-2507, which never thinks
  (:attr:`~qwen_backends.thinking.TemplateMode.NON_THINKING`);
- PARAMETERs with Qwen3's non-thinking values (those of :class:`~qwen_backends.SamplingParams`)
  and both ChatML stop tokens.

Scope: plain chat. Tool definitions and tool calls are not templated, so Ollama reports the
model as not supporting tools rather than rendering them differently from the chat template.
Like every Ollama template, it sees messages after Ollama's collation: all system messages are
joined into ``.System`` and consecutive messages of one role are merged.

Create the model with ``ollama create NAME -f Modelfile`` in the Modelfile's folder. The ollama
backend uses the same TEMPLATE to build the hybrid Qwen3-4B's Ollama model from a hub GGUF
(:meth:`qwen_backends.backends.ollama.OllamaBackend.ensure_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen_backends.sampling import SamplingParams
from qwen_backends.thinking import EMPTY_THINK_BLOCK, TemplateMode

__all__ = [
    "INSTRUCT_TEMPLATE",
    "NON_THINKING_TEMPLATE",
    "STOP_TOKENS",
    "modelfile_parameters",
    "modelfile_template",
    "modelfile_text",
    "write_modelfile",
]

#: The TEMPLATE's shape. ``$last`` marks the final message; an assistant message there is a
#: pre-filled answer to continue (no end-of-turn), anything else gets the generation header,
#: followed by ``{prefill}`` (the empty think block for the hybrid, nothing for Instruct-2507).
_TEMPLATE = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if $last }}{prefill}{{ end }}{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{prefill}{{ end }}
{{- end }}"""


def modelfile_template(mode: TemplateMode = TemplateMode.HYBRID) -> str:
    """The Modelfile TEMPLATE for a model whose chat template has ``mode``.

    The hybrid Qwen3-4B gets the empty think block pre-filled after the generation header;
    Instruct-2507 (``NON_THINKING``) does not, exactly as its own chat template renders.

    Raises
    ------
    ThinkingModeError
        For ``THINKING_ONLY``: no template can keep such a model from thinking.
    """
    from qwen_backends.errors import ThinkingModeError

    if mode is TemplateMode.THINKING_ONLY:
        raise ThinkingModeError(
            "a thinking-only model (Qwen3-4B-Thinking-2507) cannot be exported non-thinking; "
            "fine-tune the hybrid Qwen3-4B or Qwen3-4B-Instruct-2507 instead"
        )
    prefill = EMPTY_THINK_BLOCK if mode is TemplateMode.HYBRID else ""
    return _TEMPLATE.replace("{prefill}", prefill)


#: The TEMPLATE of the hybrid Qwen3-4B (empty think block pre-filled).
NON_THINKING_TEMPLATE = modelfile_template(TemplateMode.HYBRID)
#: The TEMPLATE of Qwen3-4B-Instruct-2507 (no think block: the model cannot think).
INSTRUCT_TEMPLATE = modelfile_template(TemplateMode.NON_THINKING)

#: Stop strings: end of turn, and the start of a new turn should the model skip the former.
STOP_TOKENS = ("<|im_end|>", "<|im_start|>")


def modelfile_parameters(num_ctx: int | None = None) -> dict[str, Any]:
    """The Modelfile PARAMETERs: Qwen3's non-thinking sampling values and both stop tokens.

    The same values go into a Modelfile and into an ``/api/create`` request (``parameters``).
    """
    defaults = SamplingParams()
    parameters: dict[str, Any] = {
        "temperature": defaults.temperature,
        "top_p": defaults.top_p,
        "top_k": defaults.top_k,
        "min_p": defaults.min_p,
        "repeat_penalty": defaults.repetition_penalty,
        "stop": list(STOP_TOKENS),
    }
    if num_ctx is not None:
        parameters["num_ctx"] = num_ctx
    return parameters


def modelfile_text(
    source: str, *, num_ctx: int | None = None, mode: TemplateMode = TemplateMode.HYBRID
) -> str:
    """The text of a non-thinking Qwen3 Modelfile.

    Parameters
    ----------
    source
        The ``FROM`` line's target: a GGUF file or a safetensors folder, relative to the
        Modelfile's folder (``./model.Q4_K_M.gguf``, ``./merged``) or absolute.
    num_ctx
        Context window to request (``PARAMETER num_ctx``); ``None`` leaves Ollama's default.
    mode
        The template mode of the model's own chat template (see :func:`modelfile_template`).
    """
    lines = [
        "# Qwen3 fine-tuned with qwen-backends: always non-thinking.",
        "# Create it with:  ollama create NAME -f Modelfile",
        f"FROM {source}",
        "",
        f'TEMPLATE """{modelfile_template(mode)}"""',
        "",
    ]
    for name, value in modelfile_parameters(num_ctx).items():
        values = value if isinstance(value, list) else [value]
        lines += [f"PARAMETER {name} {_parameter(item)}" for item in values]
    return "\n".join(lines) + "\n"


def write_modelfile(
    directory: str | Path,
    source: str,
    *,
    num_ctx: int | None = None,
    mode: TemplateMode = TemplateMode.HYBRID,
) -> Path:
    """Write ``directory/Modelfile`` (replacing one Unsloth may have written) and return it."""
    target = Path(directory) / "Modelfile"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(modelfile_text(source, num_ctx=num_ctx, mode=mode), encoding="utf-8")
    return target


def _parameter(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return _number(value)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return str(int(value)) if float(value).is_integer() else repr(value)
