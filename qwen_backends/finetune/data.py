"""Training data: read conversations, and turn each assistant turn into one training example.

Train/infer parity is the point of this module. An assistant turn that follows ``history`` is
trained as exactly the token sequence the model sees and produces at inference time::

    render_prompt_ids(tokenizer, history)  +  ids(answer)  +  [<|im_end|>]

so the training *text* is ``render_prompt(tokenizer, history) + answer + "<|im_end|>"``: the
non-thinking prompt that every backend renders (for the hybrid Qwen3-4B it ends with the empty
think block; for Qwen3-4B-Instruct-2507 at ``<|im_start|>assistant\n``, as its template has no
think block), the answer, and the end-of-turn token at which generation stops. The template's
newline after ``<|im_end|>`` is not part of the example: inference stops before it, so nothing
would learn to produce it. Labels are ``-100`` on every prompt token (system, user, earlier
turns, the role header and, for the hybrid, the empty think block) and equal the ids on the
answer and ``<|im_end|>``.

A conversation with several assistant turns gives one example per turn, each rendered from its
own history, because the chat template renders earlier assistant turns *without* the empty think
block: one long sequence would train turns in a format inference never shows.

**Tool calls.** A record may carry a conversation-level ``tools`` list (OpenAI-style function
specs, checked by :func:`qwen_backends.tools.normalize_tools`); it is kept on the
:class:`Chat` (``chat.tools``) and every prompt of that conversation is rendered with it
(``render_prompt(tokenizer, history, tools=tools)``, the template's ``<tools>`` system block, as
every backend renders ``generate(messages, tools=...)``). An assistant turn with ``tool_calls``
is trained as the template renders such a turn: its text (if any), then one
``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`` block per call (separated by
a newline), then ``<|im_end|>`` (:func:`assistant_answer`); so the model learns to write exactly
the blocks the backends parse into ``Generation.tool_calls``. Tool results follow as
``{"role": "tool", "content": ...}`` turns, and the assistant turn after them is trained on its
text like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.chat import (
    Message,
    find_control_token,
    render_prompt,
    render_prompt_ids,
    validate_messages,
)
from qwen_backends.errors import ConfigurationError, InvalidMessagesError, first_line
from qwen_backends.jsonl import iter_jsonl_objects
from qwen_backends.thinking import strip_thinking

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.finetune.config import DataConfig

__all__ = [
    "END_OF_TURN",
    "IGNORE_INDEX",
    "Chat",
    "EncodedExample",
    "PadCollator",
    "assistant_answer",
    "assistant_turns",
    "encode_conversations",
    "encode_turn",
    "load_conversations",
    "normalize_conversation",
    "read_jsonl",
    "training_text",
]

#: Label value that the loss ignores (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
#: The token that ends an assistant turn (Qwen3's chat EOS).
END_OF_TURN = "<|im_end|>"

#: How a training config opts in to control-token text.
_OPT_IN = "data.allow_control_tokens: true"
#: ShareGPT ``from`` values and the chat role each one means.
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "tool": "tool",
    "function_response": "tool",
    "observation": "tool",
}


class Chat(list[Message]):
    """A conversation (a list of messages) with the ``tools`` its prompts are rendered with.

    Parameters
    ----------
    messages
        The messages.
    tools
        OpenAI-style function specs (already normalised); empty for a chat without tools.
    """

    def __init__(self, messages: Iterable[Message] = (), tools: Sequence[Message] = ()) -> None:
        super().__init__(messages)
        self.tools: tuple[Message, ...] = tuple(tools)


def _tools_of(messages: Sequence[Mapping[str, Any]]) -> tuple[Message, ...]:
    tools = getattr(messages, "tools", ())
    return tuple(tools) if tools else ()


def _template_kwargs(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"tools": [dict(tool) for tool in tools]} if tools else {}


@dataclass(frozen=True)
class EncodedExample:
    """One training example: token ids and labels of the same length.

    Attributes
    ----------
    input_ids
        Prompt ids followed by answer ids and the ``<|im_end|>`` id.
    labels
        :data:`IGNORE_INDEX` on the prompt, the ids themselves on answer and end of turn.
    prompt_length
        How many leading tokens are prompt (masked).
    truncated
        Whether the example was cut to ``max_seq_length``.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated: bool = False

    def as_row(self) -> dict[str, list[int]]:
        """The columns a trainer dataset needs."""
        return {"input_ids": self.input_ids, "labels": self.labels}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file (blank lines are skipped).

    Raises
    ------
    ConfigurationError
        If the file is missing or a line is not a JSON object (with its line number).
    """
    file = Path(path)
    records = [record for _, record in _read_jsonl_lines(file)]
    if not records:
        raise ConfigurationError(f"training data {file} is empty; add conversations")
    return records


def normalize_conversation(
    record: Mapping[str, Any], where: str = "record", *, allow_control_tokens: bool = False
) -> Chat:
    """Return the ``role``/``content`` messages of one dataset record, with its tools.

    Accepts ``{"messages": [{"role", "content"}, ...]}`` and ShareGPT
    ``{"conversations": [{"from", "value"}, ...]}`` (``human``/``gpt``/``system``/...), either
    with an optional ``"tools": [function spec, ...]`` list for the whole conversation.

    Parameters
    ----------
    record
        One dataset record.
    where
        Where it comes from, for messages (``FILE:LINE``).
    allow_control_tokens
        Accept control-token text in the tool specs (``data.allow_control_tokens``); the
        template renders them into every prompt, so they are checked as message text is.

    Raises
    ------
    InvalidMessagesError
        If the record has neither shape, a turn has an unknown speaker, or a tool spec is
        malformed or holds control-token text.
    """
    if "messages" in record:
        turns = record["messages"]
        kind = "messages"
    elif "conversations" in record:
        turns = record["conversations"]
        kind = "conversations"
    else:
        raise InvalidMessagesError(
            f"{where} has neither 'messages' nor 'conversations' (keys: "
            f"{', '.join(map(str, record)) or 'none'}); use one of the two formats"
        )
    if not isinstance(turns, Sequence) or isinstance(turns, str | bytes):
        raise InvalidMessagesError(f"{where}: '{kind}' must be a list of turns")
    messages = Chat(tools=_record_tools(record, where, allow_control_tokens))
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise InvalidMessagesError(f"{where}, turn {index}: each turn must be an object")
        if "from" in turn or "value" in turn:
            speaker = str(turn.get("from", "")).lower()
            role = _SHAREGPT_ROLES.get(speaker)
            if role is None:
                raise InvalidMessagesError(
                    f"{where}, turn {index}: unknown ShareGPT speaker {turn.get('from')!r}; use "
                    f"one of {', '.join(sorted(_SHAREGPT_ROLES))}"
                )
            messages.append({"role": role, "content": turn.get("value")})
        else:
            messages.append(dict(turn))
    return messages


def _record_tools(
    record: Mapping[str, Any], where: str, allow_control_tokens: bool
) -> tuple[Message, ...]:
    from qwen_backends.tools import normalize_tools

    tools = record.get("tools")
    if tools is None:
        return ()
    if not isinstance(tools, list) or not all(isinstance(tool, Mapping) for tool in tools):
        raise InvalidMessagesError(
            f"{where}: 'tools' must be a list of function specs "
            '({"type": "function", "function": {"name", "description", "parameters"}})'
        )
    try:
        return normalize_tools(tools, allow_control_tokens=allow_control_tokens, opt_in=_OPT_IN)
    except ConfigurationError as exc:
        raise InvalidMessagesError(f"{where}: {exc}") from None


def assistant_answer(message: Mapping[str, Any], tool_names: Iterable[str] = ()) -> str:
    """What the model must generate for an assistant turn, as Qwen3's template renders it.

    The text (thinking removed), then for each of ``tool_calls`` a
    ``<tool_call>\n{"name": NAME, "arguments": JSON}\n</tool_call>`` block, a newline before
    each block that follows text or another block (the template's rule; ``arguments`` as
    ``tojson`` writes a dict, or the string as given). ``<|im_end|>`` is not included.

    Parameters
    ----------
    message
        The assistant message.
    tool_names
        The tools the conversation declares; a call to another name is refused (empty: no
        tools, so any call is refused).

    Raises
    ------
    InvalidMessagesError
        If the message has neither text nor calls, or a call is malformed or names an
        undeclared tool.
    """
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise InvalidMessagesError("content must be a string")
    text = strip_thinking(content)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidMessagesError("tool_calls must be a list of calls")
    if not text.strip() and not calls:
        raise InvalidMessagesError("it has no text to train on")
    names = set(tool_names)
    parts = [text] if text.strip() else []
    for number, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidMessagesError(
                f"tool call {number} is not {{'type': 'function', 'function': {{'name', "
                "'arguments'}}}}"
            )
        if name not in names:
            declared = ", ".join(sorted(names)) or "none"
            raise InvalidMessagesError(
                f"tool call {number} calls {name!r}, which the conversation's 'tools' do not "
                f"declare (declared: {declared}); add its spec to the record's 'tools'"
            )
        assert isinstance(function, Mapping)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                raise InvalidMessagesError(
                    f"tool call {number} ({name}): arguments {arguments!r} is not a JSON object"
                )
        elif isinstance(arguments, Mapping):
            arguments = json.dumps(dict(arguments), ensure_ascii=False)
        else:
            raise InvalidMessagesError(
                f"tool call {number} ({name}): arguments must be an object (or a JSON string)"
            )
        block = f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'
        parts.append(block)
    return "\n".join(parts)


def assistant_turns(messages: Sequence[Mapping[str, Any]]) -> list[tuple[Chat, str]]:
    """Split a conversation into ``(history, answer)`` pairs, one per assistant turn.

    ``history`` is everything before the turn (it must end with a user or tool message, as at
    inference), a :class:`Chat` carrying the conversation's ``tools``; ``answer`` is what the
    model must generate for the turn (:func:`assistant_answer`: the text with any thinking
    removed, and its ``<tool_call>`` blocks).

    Raises
    ------
    InvalidMessagesError
        If the conversation has no assistant turn, a turn has neither text nor tool calls, a
        tool call names a tool the conversation does not declare, or a history is not a valid
        conversation.
    """
    tools = _tools_of(messages)
    names = [tool["function"]["name"] for tool in tools]
    pairs: list[tuple[Chat, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        try:
            answer = assistant_answer(message, names)
        except InvalidMessagesError as exc:
            raise InvalidMessagesError(f"assistant turn {index}: {exc}") from None
        if index == 0:
            raise InvalidMessagesError(
                "the conversation starts with an assistant turn; it must follow a user message"
            )
        pairs.append((Chat((dict(m) for m in messages[:index]), tools), answer))
    if not pairs:
        raise InvalidMessagesError("the conversation has no assistant turn to learn from")
    return pairs


def training_text(
    tokenizer: PreTrainedTokenizerBase,
    history: Sequence[Mapping[str, Any]],
    answer: str,
    *,
    allow_control_tokens: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The text an assistant turn is trained as: ``render_prompt(history) + answer + <|im_end|>``.

    This is the one rendering function of fine-tuning; it is the inference prompt (non-thinking:
    ending with the empty think block for the hybrid, at the assistant header for
    Instruct-2507; with ``tools``, default ``history.tools``, in the template's ``<tools>``
    block) followed by what the model should generate.
    """
    specs = _tools_of(history) if tools is None else tools
    prompt = render_prompt(
        tokenizer,
        list(history),
        allow_control_tokens=allow_control_tokens,
        **_template_kwargs(specs),
    )
    return prompt + strip_thinking(answer) + END_OF_TURN


def encode_turn(
    tokenizer: PreTrainedTokenizerBase,
    history: Sequence[Mapping[str, Any]],
    answer: str,
    max_seq_length: int | None = None,
    *,
    allow_control_tokens: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> EncodedExample:
    """Token ids and assistant-only labels of one turn (see the module docs).

    The prompt is tokenized exactly as backends tokenize it (:func:`render_prompt_ids`, with
    ``tools``, default ``history.tools``) and the answer separately, so the prompt ids are a
    prefix of the example whatever the answer starts with; decoding ``input_ids`` gives
    :func:`training_text`. Control-token text in the history or the answer is refused unless
    ``allow_control_tokens``.
    """
    if not allow_control_tokens:
        token = find_control_token(answer)
        if token is not None:
            raise InvalidMessagesError(
                f"the answer contains the control token {token}; remove it, or set "
                "data.allow_control_tokens: true if it is meant"
            )
    specs = _tools_of(history) if tools is None else tools
    prompt_ids = render_prompt_ids(
        tokenizer,
        list(history),
        allow_control_tokens=allow_control_tokens,
        **_template_kwargs(specs),
    )
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        raise ConfigurationError(f"the tokenizer has no {END_OF_TURN} token; use Qwen3's tokenizer")
    answer_ids = list(tokenizer(strip_thinking(answer), add_special_tokens=False)["input_ids"])
    input_ids = [*prompt_ids, *answer_ids, end_id]
    labels = [IGNORE_INDEX] * len(prompt_ids) + [*answer_ids, end_id]
    truncated = max_seq_length is not None and len(input_ids) > max_seq_length
    if truncated:
        input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
    return EncodedExample(input_ids, labels, len(prompt_ids), truncated)


def encode_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Iterable[Sequence[Mapping[str, Any]]],
    max_seq_length: int | None = None,
    *,
    progress: bool = False,
    allow_control_tokens: bool = False,
) -> tuple[list[EncodedExample], int]:
    """Encode every assistant turn of every conversation.

    ``allow_control_tokens`` lets text hold Qwen3 control-token text (see
    :func:`qwen_backends.chat.validate_messages`).

    Returns
    -------
    examples, dropped
        The examples, and how many turns were dropped because truncation to
        ``max_seq_length`` left no answer token.
    """
    from tqdm.auto import tqdm

    examples: list[EncodedExample] = []
    dropped = 0
    items = list(conversations)
    for index, conversation in enumerate(
        tqdm(items, desc="Encoding conversations", disable=not progress, unit="conv")
    ):
        try:
            turns = assistant_turns(conversation)
            for history, answer in turns:
                example = encode_turn(
                    tokenizer,
                    history,
                    answer,
                    max_seq_length,
                    allow_control_tokens=allow_control_tokens,
                )
                if all(label == IGNORE_INDEX for label in example.labels):
                    dropped += 1
                else:
                    examples.append(example)
        except InvalidMessagesError as exc:
            raise InvalidMessagesError(f"training conversation {index}: {exc}") from None
    if not examples:
        raise ConfigurationError(
            "no training example is left (every answer was cut off by max_seq_length "
            f"{max_seq_length}); raise max_seq_length"
        )
    return examples, dropped


def load_conversations(config: DataConfig) -> list[Chat]:
    """The conversations a :class:`~qwen_backends.finetune.config.DataConfig` names.

    Raises
    ------
    ConfigurationError
        If the file or dataset cannot be read.
    InvalidMessagesError
        If a record is neither a ``messages`` nor a ShareGPT ``conversations`` record, or holds
        control-token text (``<|im_start|>``) while ``data.allow_control_tokens`` is off; the
        message names ``FILE:LINE`` (or the dataset record).
    """
    located: Iterable[tuple[str, Mapping[str, Any]]]
    if config.path is not None:
        path = config.path
        located = ((f"{path}:{line}", record) for line, record in _read_jsonl_lines(path))
    else:
        name = str(config.hub_dataset)
        records = _hub_records(name, config.split)
        located = ((f"{name} record {index}", record) for index, record in enumerate(records))
    conversations: list[Chat] = []
    for where, record in located:
        if config.limit is not None and len(conversations) >= config.limit:
            break
        messages = normalize_conversation(
            record, where, allow_control_tokens=config.allow_control_tokens
        )
        if not config.allow_control_tokens:
            _refuse_control_tokens(messages, where)
        _check_turns(messages, where, config.allow_control_tokens)
        conversations.append(messages)
    if not conversations:
        source = config.path or config.hub_dataset
        raise ConfigurationError(f"training data {source} is empty; add conversations")
    return conversations


def _read_jsonl_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    return list(
        iter_jsonl_objects(
            path,
            what="training data",
            missing_hint="check data.path",
            fields_hint="'messages' or 'conversations'",
        )
    )


def _check_turns(messages: Chat, where: str, allow_control_tokens: bool) -> None:
    """Check every turn, tool calls included, as encoding will (so bad data fails before the
    model loads, with ``FILE:LINE``)."""
    try:
        for history, _ in assistant_turns(messages):
            validate_messages(history, allow_control_tokens=allow_control_tokens)
    except InvalidMessagesError as exc:
        raise InvalidMessagesError(f"{where}: {exc}") from None


def _refuse_control_tokens(messages: Sequence[Mapping[str, Any]], where: str) -> None:
    for index, message in enumerate(messages):
        token = find_control_token(
            [message.get(key) for key in ("content", "name", "tool_calls", "tool_call_id")]
        )
        if token is not None:
            raise InvalidMessagesError(
                f"{where}: turn {index} ({message.get('role')}) contains the control token "
                f"{token}, which would train the model on a forged turn marker; remove it, or set "
                "data.allow_control_tokens: true if it is meant"
            )


def _hub_records(name: str, split: str) -> Iterable[Mapping[str, Any]]:
    try:
        from datasets import load_dataset
    except ImportError as exc:
        from qwen_backends.errors import MissingDependencyError

        raise MissingDependencyError(
            "datasets is not installed; install it with: pip install 'qwen-backends[finetune]'"
        ) from exc
    try:
        dataset = load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many unrelated types for a bad id or no network
        raise ConfigurationError(
            f"cannot load dataset {name!r} split {split!r} ({first_line(exc)}); check the id and "
            "your network, or use a local JSONL file with data.path"
        ) from exc
    return iter(dataset)


class PadCollator:
    """Batch examples: right-pad ``input_ids`` with the pad id and ``labels`` with -100.

    Parameters
    ----------
    pad_token_id
        The tokenizer's pad id (``<|endoftext|>`` for Qwen3).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """Return ``input_ids``, ``attention_mask`` and ``labels`` tensors of equal shape."""
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            length = len(row["input_ids"])
            input_ids[index, :length] = torch.tensor(list(row["input_ids"]), dtype=torch.long)
            labels[index, :length] = torch.tensor(list(row["labels"]), dtype=torch.long)
            attention_mask[index, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
