"""Export for Ollama: a Modelfile that keeps a fine-tuned Qwen3 non-thinking.

Unsloth writes a Modelfile next to its GGUF files, but for Qwen3 it uses a plain ChatML
template (the model is free to think) and the thinking-mode sampling values. The Modelfile here
has

- a TEMPLATE (Go ``text/template``, as Ollama executes it) that renders a conversation exactly
  like :func:`qwen_backends.chat.render_prompt`: the system prompt, user and assistant turns
  (assistant history without thinking: Ollama keeps parsed thinking in a separate ``Thinking``
  field, which the template never prints), and a final ``<|im_start|>assistant`` header
  pre-filled with the empty think block, so the model answers without thinking;
- PARAMETERs with Qwen3's non-thinking values (those of :class:`~qwen_backends.SamplingParams`)
  and both ChatML stop tokens.

Scope: plain chat. Tool definitions and tool calls are not templated, so Ollama reports the
model as not supporting tools rather than rendering them differently from the chat template.
Like every Ollama template, it sees messages after Ollama's collation: all system messages are
joined into ``.System`` and consecutive messages of one role are merged.

Create the model with ``ollama create NAME -f Modelfile`` in the Modelfile's folder.
"""

from __future__ import annotations

from pathlib import Path

from qwen_backends.sampling import SamplingParams

__all__ = ["NON_THINKING_TEMPLATE", "STOP_TOKENS", "modelfile_text", "write_modelfile"]

#: The Modelfile TEMPLATE. ``$last`` marks the final message; an assistant message there is a
#: pre-filled answer to continue (no end-of-turn), anything else gets the generation header
#: with the empty think block.
NON_THINKING_TEMPLATE = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if $last }}<think>

</think>

{{ end }}{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
<think>

</think>

{{ end }}
{{- end }}"""

#: Stop strings: end of turn, and the start of a new turn should the model skip the former.
STOP_TOKENS = ("<|im_end|>", "<|im_start|>")


def modelfile_text(source: str, *, num_ctx: int | None = None) -> str:
    """The text of a non-thinking Qwen3 Modelfile.

    Parameters
    ----------
    source
        The ``FROM`` line's target: a GGUF file or a safetensors folder, relative to the
        Modelfile's folder (``./model.Q4_K_M.gguf``, ``./merged``) or absolute.
    num_ctx
        Context window to request (``PARAMETER num_ctx``); ``None`` leaves Ollama's default.
    """
    defaults = SamplingParams()
    lines = [
        "# Qwen3 fine-tuned with qwen-backends: always non-thinking.",
        "# Create it with:  ollama create NAME -f Modelfile",
        f"FROM {source}",
        "",
        f'TEMPLATE """{NON_THINKING_TEMPLATE}"""',
        "",
        f"PARAMETER temperature {_number(defaults.temperature)}",
        f"PARAMETER top_p {_number(defaults.top_p)}",
        f"PARAMETER top_k {defaults.top_k}",
        f"PARAMETER min_p {_number(defaults.min_p)}",
        f"PARAMETER repeat_penalty {_number(defaults.repetition_penalty)}",
    ]
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    if num_ctx is not None:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def write_modelfile(directory: str | Path, source: str, *, num_ctx: int | None = None) -> Path:
    """Write ``directory/Modelfile`` (replacing one Unsloth may have written) and return it."""
    target = Path(directory) / "Modelfile"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(modelfile_text(source, num_ctx=num_ctx), encoding="utf-8")
    return target


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
