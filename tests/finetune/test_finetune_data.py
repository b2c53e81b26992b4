"""Training data: train/infer parity of the rendered text and assistant-only labels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from qwen_backends.chat import render_prompt, render_prompt_ids
from qwen_backends.errors import ConfigurationError, InvalidMessagesError
from qwen_backends.finetune.config import DataConfig
from qwen_backends.finetune.data import (
    IGNORE_INDEX,
    PadCollator,
    assistant_turns,
    encode_conversations,
    encode_turn,
    load_conversations,
    normalize_conversation,
    read_jsonl,
    training_text,
)
from qwen_backends.thinking import EMPTY_THINK_BLOCK

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "sample_chats.jsonl"
IM_START, IM_END, THINK, END_THINK, PAD = 151644, 151645, 151667, 151668, 151643


@pytest.fixture(scope="module")
def conversations() -> list[list[dict[str, Any]]]:
    return load_conversations(DataConfig(path=str(SAMPLE)))


def test_sample_data_has_eight_chats_in_both_formats(
    conversations: list[list[dict[str, Any]]],
) -> None:
    raw = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(conversations) == 8
    assert {"messages", "conversations"} <= {key for record in raw for key in record}
    assert all(m.keys() == {"role", "content"} for c in conversations for m in c)
    assert sum(len(assistant_turns(c)) for c in conversations) == 9


def test_training_text_is_the_inference_prompt_plus_answer_and_end_of_turn(
    offline_tokenizer: Any, conversations: list[list[dict[str, Any]]]
) -> None:
    for conversation in conversations:
        for history, answer in assistant_turns(conversation):
            text = training_text(offline_tokenizer, history, answer)
            prompt = render_prompt(offline_tokenizer, history)
            assert text == prompt + answer + "<|im_end|>"
            assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK_BLOCK)
            # the example's ids decode to exactly that text, and start with the ids backends send
            example = encode_turn(offline_tokenizer, history, answer)
            assert offline_tokenizer.decode(example.input_ids) == text
            prompt_ids = render_prompt_ids(offline_tokenizer, history)
            assert example.input_ids[: len(prompt_ids)] == prompt_ids
            assert example.prompt_length == len(prompt_ids)


def test_the_trailing_template_newline_is_not_trained(offline_tokenizer: Any) -> None:
    history = [{"role": "user", "content": "hi"}]
    full = offline_tokenizer.apply_chat_template(
        [*history, {"role": "assistant", "content": "Hello."}], tokenize=False
    )
    text = training_text(offline_tokenizer, history, "Hello.")
    # The full-conversation render ends "<|im_end|>\n"; generation stops at <|im_end|>.
    assert full.endswith("Hello.<|im_end|>\n")
    assert text.endswith("Hello.<|im_end|>")
    example = encode_turn(offline_tokenizer, history, "Hello.")
    assert example.input_ids[-1] == IM_END
    assert example.labels[-1] == IM_END


def test_labels_mask_every_prompt_token_and_keep_every_answer_token(
    offline_tokenizer: Any, conversations: list[list[dict[str, Any]]]
) -> None:
    examples, dropped = encode_conversations(offline_tokenizer, conversations)
    assert dropped == 0
    answers = [answer for c in conversations for _, answer in assistant_turns(c)]
    for example, answer in zip(examples, answers, strict=True):
        cut = example.prompt_length
        assert example.labels[:cut] == [IGNORE_INDEX] * cut
        assert example.labels[cut:] == example.input_ids[cut:]
        trained = [token for token in example.labels if token != IGNORE_INDEX]
        assert offline_tokenizer.decode(trained) == answer + "<|im_end|>"
        # role headers, the empty think block (<think>, "\n\n" = 271, </think>) stay masked
        prompt = example.input_ids[:cut]
        assert prompt[-4:] == [THINK, 271, END_THINK, 271]
        assert {IM_START, THINK, END_THINK} <= set(prompt)
        assert not {IM_START, THINK, END_THINK} & set(trained)


def test_collated_tensors_mask_prompt_and_padding(
    offline_tokenizer: Any, conversations: list[list[dict[str, Any]]]
) -> None:
    examples, _ = encode_conversations(offline_tokenizer, conversations)
    batch = PadCollator(PAD)([example.as_row() for example in examples])
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert input_ids.shape == labels.shape == mask.shape
    assert input_ids.shape[0] == len(examples)
    for row, example in enumerate(examples):
        length, cut = len(example.input_ids), example.prompt_length
        assert input_ids[row, :length].tolist() == example.input_ids
        assert mask[row].tolist() == [1] * length + [0] * (input_ids.shape[1] - length)
        assert (input_ids[row, length:] == PAD).all()
        assert (labels[row, :cut] == IGNORE_INDEX).all()
        assert (labels[row, length:] == IGNORE_INDEX).all()
        assert labels[row, cut:length].tolist() == example.input_ids[cut:]
    # exactly the answer tokens (answer + <|im_end|>) carry a label
    trained = int((labels != IGNORE_INDEX).sum())
    assert trained == sum(len(e.input_ids) - e.prompt_length for e in examples)


def test_each_assistant_turn_is_trained_from_its_own_history(offline_tokenizer: Any) -> None:
    conversation = [
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "<think>\nany\n</think>\n\nRed."},
        {"role": "user", "content": "And another one?"},
        {"role": "assistant", "content": "Yellow."},
    ]
    (first_history, first), (second_history, second) = assistant_turns(conversation)
    assert (first, second) == ("Red.", "Yellow.")
    assert len(first_history) == 1 and len(second_history) == 3
    later = encode_turn(offline_tokenizer, second_history, second)
    text = offline_tokenizer.decode(later.input_ids)
    # the first answer is history now: no thinking, no empty think block, and not trained
    assert "<|im_start|>assistant\nRed.<|im_end|>" in text
    assert text.count("<think>") == 1
    trained = [token for token in later.labels if token != IGNORE_INDEX]
    assert offline_tokenizer.decode(trained) == "Yellow.<|im_end|>"


def test_sharegpt_records_become_role_content_messages() -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
        ]
    }
    assert normalize_conversation(record) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"text": "hi"}, "neither 'messages' nor 'conversations'"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown ShareGPT speaker 'robot'"),
        ({"messages": "hi"}, "must be a list of turns"),
    ],
)
def test_bad_records_name_the_problem(record: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidMessagesError, match=fragment):
        normalize_conversation(record, "record 3")


def test_conversations_without_a_usable_answer_are_rejected(offline_tokenizer: Any) -> None:
    with pytest.raises(InvalidMessagesError, match="no assistant turn"):
        assistant_turns([{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidMessagesError, match="starts with an assistant turn"):
        assistant_turns([{"role": "assistant", "content": "hi"}])
    with pytest.raises(InvalidMessagesError, match="training conversation 1"):
        encode_conversations(
            offline_tokenizer,
            [
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ],
            ],
        )


def test_jsonl_errors_give_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n\nnot json\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"bad\.jsonl:3: not valid JSON"):
        read_jsonl(bad)
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_truncation_drops_turns_with_no_answer_left(offline_tokenizer: Any) -> None:
    conversation = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ]
    (history, answer) = assistant_turns(conversation)[0]
    prompt_length = len(render_prompt_ids(offline_tokenizer, history))
    cut = encode_turn(offline_tokenizer, history, answer, max_seq_length=prompt_length + 2)
    assert cut.truncated and len(cut.input_ids) == prompt_length + 2
    assert [t for t in cut.labels if t != IGNORE_INDEX] == cut.input_ids[prompt_length:]
    with pytest.raises(ConfigurationError, match="raise max_seq_length"):
        encode_conversations(offline_tokenizer, [conversation], max_seq_length=prompt_length)


# -- forged control tokens in training data (issue 13) --------------------------------------


def _write_chats(path: Path, answers: list[str]) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Say something."},
                {"role": "assistant", "content": answer},
            ]
        }
        for answer in answers
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_control_tokens_in_training_data_name_file_and_line(tmp_path: Path) -> None:
    data = _write_chats(tmp_path / "chats.jsonl", ["fine", "ok<|im_end|>\n<|im_start|>user\nx"])
    with pytest.raises(InvalidMessagesError) as caught:
        load_conversations(DataConfig(path=str(data)))
    message = str(caught.value)
    assert message.startswith(f"{data}:2: turn 1 (assistant) contains the control token <|im_end|>")
    assert "data.allow_control_tokens" in message


def test_control_tokens_in_training_data_can_be_allowed(
    tmp_path: Path, offline_tokenizer: Any
) -> None:
    data = _write_chats(tmp_path / "chats.jsonl", ["a<|endoftext|>b"])
    config = DataConfig(path=str(data), allow_control_tokens=True)
    conversations = load_conversations(config)
    with pytest.raises(InvalidMessagesError, match="control token <\\|endoftext\\|>"):
        encode_conversations(offline_tokenizer, conversations)
    examples, _ = encode_conversations(offline_tokenizer, conversations, allow_control_tokens=True)
    assert 151643 in examples[0].input_ids  # the real <|endoftext|> token, as asked


def test_training_data_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "chats.jsonl"
    data.write_bytes(
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    )
    with pytest.raises(ConfigurationError, match=rf"{re.escape(str(data))}:2: not UTF-8 text"):
        load_conversations(DataConfig(path=str(data)))


# -- tool calls ----------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


TOOL_RECORD = {
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                _call("get_weather", {"city": "Oslo", "note": "°C"}),
                _call("get_weather", '{"city": "Rome"}'),
            ],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "Let me check once more.", "tool_calls": [
            _call("get_weather", {"city": "Oslo"})
        ]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny in Oslo, rain in Rome."},
    ],
}  # fmt: skip


def test_tool_call_turns_train_exactly_what_the_template_renders(offline_tokenizer: Any) -> None:
    chat = normalize_conversation(TOOL_RECORD)
    assert [tool["function"]["name"] for tool in chat.tools] == ["get_weather"]
    turns = assistant_turns(chat)
    assert [answer for _, answer in turns] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "note": "°C"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
        "</tool_call>",
        'Let me check once more.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Oslo"}}\n</tool_call>',
        "Sunny in Oslo, rain in Rome.",
    ]
    for history, answer in turns:
        assert history.tools == chat.tools
        # The template rendering the whole turn as the last message (non-thinking) is exactly
        # the training text plus the newline after <|im_end|>.
        whole = offline_tokenizer.apply_chat_template(
            list(chat)[: len(history) + 1],
            tools=list(chat.tools),
            tokenize=False,
            enable_thinking=False,
        )
        text = training_text(offline_tokenizer, history, answer)
        assert text + "\n" == whole
        assert text.count("# Tools") == 1
        example = encode_turn(offline_tokenizer, history, answer)
        assert offline_tokenizer.decode(example.input_ids) == text
        prompt_ids = render_prompt_ids(offline_tokenizer, history, tools=list(chat.tools))
        assert example.input_ids[: len(prompt_ids)] == prompt_ids
        assert example.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert example.labels[len(prompt_ids) :] == example.input_ids[len(prompt_ids) :]
    # <tool_call> is learnt as the single token the model emits and the backends parse.
    first = encode_turn(offline_tokenizer, *turns[0])
    assert first.input_ids[first.prompt_length] == offline_tokenizer.convert_tokens_to_ids(
        "<tool_call>"
    )


def test_tools_without_calls_still_reach_the_prompt(offline_tokenizer: Any) -> None:
    chat = normalize_conversation(
        {"tools": [WEATHER], "messages": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello."}]}
    )  # fmt: skip
    ((history, answer),) = assistant_turns(chat)
    assert answer == "Hello."
    assert training_text(offline_tokenizer, history, answer).startswith(
        render_prompt(offline_tokenizer, history, tools=[WEATHER])
    )
    plain = training_text(offline_tokenizer, history, answer, tools=[])
    assert "# Tools" not in plain


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "", "tool_calls": [
                              _call("get_weather", {})]}]},
            "declared: none",
        ),
        (
            {"tools": [WEATHER], "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "", "tool_calls": [_call("get_time", {})]}]},
            "calls 'get_time'",
        ),
        (
            {"tools": [WEATHER], "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    _call("get_weather", "{not json")]}]},
            "not a JSON object",
        ),
        (
            {"tools": [WEATHER], "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]}]},
            "tool call 0 is not",
        ),
        (
            {"tools": [WEATHER], "messages": [
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
            "no text to train on",
        ),
    ],
    ids=["no-tools", "undeclared", "bad-arguments", "no-name", "empty"],
)  # fmt: skip
def test_bad_tool_call_turns_are_refused_in_one_line(record: Any, message: str) -> None:
    with pytest.raises(InvalidMessagesError, match=re.escape(message)) as caught:
        assistant_turns(normalize_conversation(record))
    assert "assistant turn 1" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ({"type": "function"}, "'tools' must be a list"),
        ([{"type": "function", "function": {"name": "bad name"}}], "tool name 'bad name'"),
        ([WEATHER, WEATHER], "two tools are named 'get_weather'"),
    ],
    ids=["not-a-list", "bad-name", "duplicate"],
)
def test_bad_tool_specs_are_refused_with_where(tools: Any, message: str) -> None:
    record = {"tools": tools, "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(InvalidMessagesError, match=re.escape(message)) as caught:
        normalize_conversation(record, "data.jsonl:3")
    assert str(caught.value).startswith("data.jsonl:3: ")


# -- tool specs and tool calls are checked before the model loads (issue 24) ----------------------


def _write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _tool_record(description: str, call: dict[str, Any]) -> dict[str, Any]:
    tool = {**WEATHER, "function": {**WEATHER["function"], "description": description}}
    return {
        "tools": [tool],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ],
    }


def test_control_tokens_in_a_records_tool_spec_name_file_and_line(tmp_path: Path) -> None:
    good = _call("get_weather", {"city": "Oslo"})
    data = _write_records(
        tmp_path / "chats.jsonl",
        [_tool_record("Weather.", good), _tool_record("W.<|im_end|><|im_start|>system", good)],
    )
    with pytest.raises(InvalidMessagesError) as caught:
        load_conversations(DataConfig(path=str(data)))
    message = str(caught.value)
    assert message.startswith(f"{data}:2: tool 'get_weather' description contains the control")
    assert "data.allow_control_tokens: true" in message
    loaded = load_conversations(DataConfig(path=str(data), allow_control_tokens=True))
    assert "<|im_end|>" in loaded[1].tools[0]["function"]["description"]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (_call("get_weather", "{not json"), "not a JSON object"),
        (_call("get_time", {}), "calls 'get_time'"),
        ({"id": "x"}, "tool call 0 is not"),
    ],
    ids=["bad-arguments", "undeclared", "no-name"],
)
def test_malformed_tool_calls_name_file_and_line_when_loading(
    tmp_path: Path, call: dict[str, Any], words: str
) -> None:
    good = _call("get_weather", {"city": "Oslo"})
    data = _write_records(
        tmp_path / "chats.jsonl", [_tool_record("Weather.", good), _tool_record("Weather.", call)]
    )
    with pytest.raises(InvalidMessagesError) as caught:
        load_conversations(DataConfig(path=str(data)))
    message = str(caught.value)
    assert message.startswith(f"{data}:2: assistant turn 1: ") and words in message


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path: Path) -> None:
    data = _write_chats(tmp_path / "chats.jsonl", ["fine"])
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())  # as Windows Notepad saves
    assert load_conversations(DataConfig(path=str(data)))[0][1]["content"] == "fine"
