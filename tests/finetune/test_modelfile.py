"""The exported Ollama Modelfile: its TEMPLATE renders what render_prompt renders, for the hybrid
Qwen3-4B (empty think block pre-filled) and for Qwen3-4B-Instruct-2507 (no think block)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gotemplate import ollama_values, render

from qwen_backends.chat import render_prompt
from qwen_backends.errors import ThinkingModeError
from qwen_backends.finetune.ollama import (
    INSTRUCT_TEMPLATE,
    NON_THINKING_TEMPLATE,
    STOP_TOKENS,
    modelfile_template,
    modelfile_text,
    write_modelfile,
)
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint
from qwen_backends.thinking import EMPTY_THINK_BLOCK, TemplateMode, template_mode

MODES = {"hybrid": TemplateMode.HYBRID, "instruct-2507": TemplateMode.NON_THINKING}

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "system", "content": "Answer briefly.\nUse British spelling."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red.", "thinking": "The user wants one colour."},
        {"role": "user", "content": "Another, with a line break:\n  indented"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Merci — et en français ? 你好"},
    ],
]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    """The chat templates of the hybrid and of Instruct-2507 (on the offline tokenizer)."""
    from transformers import AutoTokenizer

    return {
        name: AutoTokenizer.from_pretrained(tiny_checkpoint("tiny", template=name))
        for name in MODES
    }


def _template_of(modelfile: str) -> str:
    match = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.DOTALL | re.MULTILINE)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_template_renders_exactly_render_prompt(
    offline_tokenizer: Any, conversation: list[dict[str, str]]
) -> None:
    template = _template_of(modelfile_text("./model.gguf"))
    rendered = render(template, ollama_values(conversation))
    assert rendered == render_prompt(offline_tokenizer, conversation)
    assert rendered.endswith("<|im_start|>assistant\n" + EMPTY_THINK_BLOCK)


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system", "multi-turn"])
@pytest.mark.parametrize("name", list(MODES))
def test_each_mode_renders_its_own_render_prompt(
    tokenizers: dict[str, Any], name: str, conversation: list[dict[str, str]]
) -> None:
    tokenizer = tokenizers[name]
    mode = template_mode(tokenizer)
    assert mode is MODES[name]
    template = _template_of(modelfile_text("./model.gguf", mode=mode))
    rendered = render(template, ollama_values(conversation))
    assert rendered == render_prompt(tokenizer, conversation)
    if mode is TemplateMode.HYBRID:
        assert rendered.endswith("<|im_start|>assistant\n" + EMPTY_THINK_BLOCK)
    else:
        assert rendered.endswith("<|im_start|>assistant\n")
        assert "<think>" not in rendered


def test_only_the_hybrid_template_prefills_the_think_block() -> None:
    assert modelfile_template(TemplateMode.HYBRID) == NON_THINKING_TEMPLATE
    assert modelfile_template(TemplateMode.NON_THINKING) == INSTRUCT_TEMPLATE
    assert "<think>" in NON_THINKING_TEMPLATE and "<think>" not in INSTRUCT_TEMPLATE
    instruct = modelfile_text("./m", mode=TemplateMode.NON_THINKING)
    assert "<think>" not in instruct
    assert _parameters(instruct) == _parameters(modelfile_text("./m"))
    with pytest.raises(ThinkingModeError, match="thinking-only"):
        modelfile_template(TemplateMode.THINKING_ONLY)


def _parameters(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^PARAMETER (\w+) (.+)$", text, re.MULTILINE)


def test_thinking_in_history_is_dropped(offline_tokenizer: Any) -> None:
    conversation = CONVERSATIONS[2]
    rendered = render(NON_THINKING_TEMPLATE, ollama_values(conversation))
    assert "one colour" not in rendered
    assert rendered.count("<think>") == 1  # only the pre-filled empty block at the end


def test_a_final_assistant_message_is_continued_not_closed() -> None:
    conversation = [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "One, two,"},
    ]
    rendered = render(NON_THINKING_TEMPLATE, ollama_values(conversation))
    assert rendered.endswith("<|im_start|>assistant\n" + EMPTY_THINK_BLOCK + "One, two,")


def test_parameters_are_the_non_thinking_values() -> None:
    text = modelfile_text("./merged", num_ctx=8192)
    parameters = re.findall(r"^PARAMETER (\w+) (.+)$", text, re.MULTILINE)
    values = {name: value for name, value in parameters if name != "stop"}
    defaults = SamplingParams()
    assert float(values["temperature"]) == defaults.temperature == 0.7
    assert float(values["top_p"]) == defaults.top_p == 0.8
    assert int(values["top_k"]) == defaults.top_k == 20
    assert float(values["min_p"]) == defaults.min_p == 0.0
    assert float(values["repeat_penalty"]) == 1.0
    assert values["num_ctx"] == "8192"
    stops = [value.strip('"') for name, value in parameters if name == "stop"]
    assert stops == list(STOP_TOKENS) == ["<|im_end|>", "<|im_start|>"]
    assert re.search(r"^FROM \./merged$", text, re.MULTILINE)
    assert "num_ctx" not in modelfile_text("./merged")


def test_write_modelfile_replaces_an_existing_one(tmp_path: Any) -> None:
    (tmp_path / "Modelfile").write_text("FROM ./x.gguf\nTEMPLATE {{ .Prompt }}\n")
    path = write_modelfile(tmp_path, "./model.Q4_K_M.gguf")
    assert path == tmp_path / "Modelfile"
    assert path.read_text(encoding="utf-8") == modelfile_text("./model.Q4_K_M.gguf")


def test_the_renderer_refuses_what_it_does_not_implement() -> None:
    with pytest.raises(SyntaxError, match="not in the supported subset"):
        render("{{ printf .System }}", {"System": "x"})
    with pytest.raises(SyntaxError, match="missing"):
        render("{{ if .System }}x", {"System": "x"})


#: Executes templates with Go's own text/template, the way Ollama does (missingkey=zero, a map
#: with System / Messages / Tools / Response, messages as structs).
GO_PROGRAM = """
package main

import (
\t"encoding/json"
\t"os"
\t"strings"
\t"text/template"
)

type Message struct {
\tRole     string
\tContent  string
\tThinking string
}

type Case struct {
\tSystem   string
\tMessages []*Message
}

func main() {
\tvar input struct {
\t\tTemplate string
\t\tCases    []Case
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
\t\tpanic(err)
\t}
\ttmpl := template.Must(template.New("").Option("missingkey=zero").Parse(input.Template))
\tvar rendered []string
\tfor _, c := range input.Cases {
\t\tvar out strings.Builder
\t\tdata := map[string]any{"System": c.System, "Messages": c.Messages, "Tools": nil, "Response": ""}
\t\tif err := tmpl.Execute(&out, data); err != nil {
\t\t\tpanic(err)
\t\t}
\t\trendered = append(rendered, out.String())
\t}
\tjson.NewEncoder(os.Stdout).Encode(rendered)
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain here")
@pytest.mark.parametrize("name", list(MODES))
def test_go_text_template_itself_renders_render_prompt(
    tokenizers: dict[str, Any], name: str, tmp_path: Path
) -> None:
    tokenizer = tokenizers[name]
    template = modelfile_template(MODES[name])
    program = tmp_path / "render.go"
    program.write_text(GO_PROGRAM, encoding="utf-8")
    cases = [ollama_values(conversation) for conversation in CONVERSATIONS]
    request = json.dumps({"Template": template, "Cases": cases})
    done = subprocess.run(
        ["go", "run", str(program)], input=request, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    for conversation, text in zip(CONVERSATIONS, rendered, strict=True):
        assert text == render_prompt(tokenizer, conversation)
        assert text == render(template, ollama_values(conversation))
