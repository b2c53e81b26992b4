"""The CPU fine-tuning pipeline teaches the tiny checkpoint a tool call, end to end.

One run of ``configs/finetune/cpu_smoke.yaml`` (about 45 s here) on chats whose first answer is a
``<tool_call>`` (a conversation-level ``tools`` list, an assistant turn with ``tool_calls``), then
a tool result answered in text; exported merged (hf) and as GGUF q8_0 (llamacpp). On both
backends the test runs the loop a user runs: ``generate(messages, tools=[...])`` returns the
trained :class:`~qwen_backends.tools.ToolCall`, the result goes back as a ``{"role": "tool"}``
message, and the model answers with the trained text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_backends.finetune import FinetuneResult, load_config, run_finetune
from qwen_backends.sampling import SamplingParams
from qwen_backends.tools import assistant_message, tool_message

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"
GREEDY = SamplingParams.preset("greedy", max_new_tokens=40)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name."}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "description": "IANA zone."}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, TIME]

#: (question, tool, arguments, tool result, final answer)
LOOPS = [
    ("What is the weather in Oslo?", "get_weather", {"city": "Oslo"}, "sunny, 21 C",
     "It is sunny in Oslo."),
    ("Weather in Rome, please.", "get_weather", {"city": "Rome"}, "rain, 12 C",
     "It is raining in Rome."),
    ("What time is it in Tokyo?", "get_time", {"zone": "Asia/Tokyo"}, "14:05",
     "It is 14:05 in Tokyo."),
]  # fmt: skip
PLAIN = ("Hello!", "Hello! Ask me about weather or time.")


def _records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for question, name, arguments, result, answer in LOOPS:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        records.append(
            {
                "tools": TOOLS,
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "content": result},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    records.append(
        {
            "tools": TOOLS,
            "messages": [
                {"role": "user", "content": PLAIN[0]},
                {"role": "assistant", "content": PLAIN[1]},
            ],
        }
    )
    return records


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinetuneResult]:
    import torch

    folder = tmp_path_factory.mktemp("finetune-tools")
    data = folder / "tool_chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_model_dir),
        max_seq_length=512,
        data={"path": str(data)},
        export={"output_dir": str(folder / "out"), "gguf": ["q8_0"], "modelfile": False},
        # All 7 answers in every step. More passes and a higher rate than the smoke run: the
        # answers differ after a long shared prompt (the tools block), and greedy needs a margin.
        training={
            "progress_bar": False,
            "per_device_train_batch_size": 7,
            "max_steps": 100,
            "learning_rate": 1.0e-2,
        },
    )
    yield run_finetune(config)
    torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_the_fine_tuned_model_calls_the_tool_and_answers_its_result(
    trained: FinetuneResult, backend: str
) -> None:
    if backend == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    options: dict[str, Any] = (
        {"llamacpp": {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 1024}}
        if backend == "llamacpp"
        else {}
    )
    with trained.load_backend(backend, **options) as model:
        assert model.name == backend and model.capabilities.tools
        for question, name, arguments, result, answer in LOOPS:
            messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
            asked = model.generate(messages, GREEDY, tools=TOOLS)
            assert [(c.name, c.arguments) for c in asked.tool_calls] == [(name, arguments)], asked
            assert (asked.text, asked.finish_reason) == ("", "tool_calls")
            call = asked.tool_calls[0]
            messages += [assistant_message(asked.text, [call]), tool_message(call, result)]
            replied = model.generate(messages, GREEDY, tools=TOOLS)
            assert (replied.text, replied.tool_calls, replied.finish_reason) == (
                answer,
                (),
                "stop",
            )
        # Streaming: the call is never shown as text.
        pieces = list(model.stream(LOOPS[0][0], GREEDY, tools=TOOLS))
        assert "".join(pieces) == "" and not any("tool_call" in p for p in pieces)
        hello = model.generate(PLAIN[0], GREEDY, tools=TOOLS)
        assert (hello.text, hello.tool_calls) == (PLAIN[1], ())


def test_the_gguf_check_asks_with_the_trained_tools_and_compares_calls(
    trained: FinetuneResult,
) -> None:
    """Every trained turn, tool calls included, comes back through llama.cpp when the check asks
    with the conversation's tools (as training rendered them)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from qwen_backends.export.gguf import verify_gguf
    from qwen_backends.finetune.data import Chat, assistant_turns

    turns = [
        pair
        for record in _records()
        for pair in assistant_turns(Chat(record["messages"], record["tools"]))
    ]
    assert any("<tool_call>" in answer for _, answer in turns)
    report = verify_gguf(
        trained.gguf_files[0], tokenizer_dir=trained.merged_dir, trained=turns, quant="q8_0"
    )
    assert report.matched == len(turns) == 7, report.answers
    assert ('get_weather({"city": "Oslo"})', 'get_weather({"city": "Oslo"})') in report.answers
