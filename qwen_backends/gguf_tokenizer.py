"""A GGUF's own tokenizer, without transformers or torch: :func:`tokenizer_from_gguf`.

A Qwen3 GGUF carries its whole tokenizer: the byte-level BPE tokens and merges
(``tokenizer.ggml.tokens`` / ``tokenizer.ggml.merges``), each token's type (control tokens such
as ``<|im_end|>``, user-defined ones such as ``<tool_call>``, unused padding rows), and the chat
template (``tokenizer.chat_template``). :func:`read_gguf_metadata` reads that header (the GGUF
format: little-endian typed key/value pairs before the tensors); :func:`tokenizer_from_gguf`
builds the ``tokenizers`` library's tokenizer from it with Qwen's pre-tokenizer (the split
pattern, byte-level, NFC), byte-exact with the Hugging Face tokenizer, and wraps it in
:class:`LightTokenizer`: the part of the Hugging Face tokenizer API the project uses (encode,
decode, the chat template through jinja2, vocabulary look-ups), so the llamacpp backend needs
neither transformers nor torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from qwen_backends.errors import ConfigurationError, MissingDependencyError, ModelNotFoundError

__all__ = ["LightTokenizer", "read_gguf_metadata", "tokenizer_from_gguf"]

#: The tokenizer.ggml.model value llama.cpp writes for every byte-level BPE vocabulary, Qwen's too.
BYTE_LEVEL_BPE = "gpt2"  # tokenizer.ggml.model

#: GGUF value types: struct format of the fixed-size ones (8 = string, 9 = array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_TOKENS, _MERGES = "tokenizer.ggml.tokens", "tokenizer.ggml.merges"
#: ``tokenizer.ggml.token_type`` values.
_CONTROL, _USER_DEFINED, _UNUSED = 3, 4, 5


def read_gguf_metadata(
    path: str | Path, prefix: str = "", skip: Iterable[str] = ()
) -> dict[str, Any]:
    """The metadata of a GGUF file whose keys start with ``prefix`` (arrays as lists), less the
    keys in ``skip``.

    Raises
    ------
    ModelNotFoundError
        If the file is not a GGUF (or is cut short).
    """
    skipped = frozenset(skip)
    metadata: dict[str, Any] = {}
    with _header(path) as entries:
        for key, kind, stream in entries:
            keep = key.startswith(prefix) and key not in skipped
            value = _value(stream, kind, keep=keep)
            if keep:
                metadata[key] = value
    return metadata


@contextlib.contextmanager
def _header(path: str | Path) -> Iterator[Iterator[tuple[str, int, BinaryIO]]]:
    """The GGUF header's entries as ``(key, value type, stream)``, the stream at the value (which
    the consumer must read or skip before the next entry)."""
    with open(path, "rb") as stream:
        if stream.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{path} is not a GGUF file (no GGUF magic bytes)")

        def entries() -> Iterator[tuple[str, int, BinaryIO]]:
            version, _tensors, count = struct.unpack("<IQQ", stream.read(20))
            if version < 2:
                raise ModelNotFoundError(f"{path} is GGUF version {version}; convert it again")
            for _ in range(count):
                key = _string(stream)
                (kind,) = struct.unpack("<I", stream.read(4))
                yield key, kind, stream

        try:
            yield entries()
        except (struct.error, UnicodeDecodeError) as exc:
            raise ModelNotFoundError(f"{path} has a damaged GGUF header ({exc})") from exc


def _write_bpe_files(
    path: str | Path, types: Sequence[int], named: set[int], vocab: Path, merges: Path
) -> dict[int, str]:
    """Stream the GGUF's tokens into ``vocab`` (the BPE's ``vocab.json``: every token that is not
    an added or unused row) and its merges into ``merges`` (``merges.txt``); return the texts of
    the ``named`` token ids."""
    texts: dict[int, str] = {}
    with _header(path) as entries:
        for key, kind, stream in entries:
            if key == _TOKENS and kind == _ARRAY:
                count = _string_array(stream, path, key)
                if count != len(types):
                    raise ModelNotFoundError(
                        f"{path} has {count} tokens but {len(types)} token types; convert it again"
                    )
                with vocab.open("w", encoding="utf-8") as out:
                    out.write("{")
                    first = True
                    for index in range(count):
                        token = _string(stream)
                        if index in named:
                            texts[index] = token
                        if types[index] in (_CONTROL, _USER_DEFINED, _UNUSED):
                            continue
                        out.write(("" if first else ",") + json.dumps(token) + f":{index}")
                        first = False
                    out.write("}")
            elif key == _MERGES and kind == _ARRAY:
                count = _string_array(stream, path, key)
                with merges.open("wb") as raw:
                    for _ in range(count):
                        (length,) = struct.unpack("<Q", stream.read(8))
                        raw.write(stream.read(length) + b"\n")
            else:
                _value(stream, kind, keep=False)
    if not vocab.is_file():
        raise ModelNotFoundError(f"{path} has no {_TOKENS} array; convert it again")
    merges.touch()
    return texts


def _string_array(stream: BinaryIO, path: str | Path, key: str) -> int:
    """Read an array's header; its length, once it is known to hold strings."""
    item, count = struct.unpack("<IQ", stream.read(12))
    if item != _STRING:
        raise ModelNotFoundError(f"{path}: {key} holds values of GGUF type {item}, not strings")
    return int(count)


def _string(stream: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", stream.read(8))
    return stream.read(length).decode("utf-8")


def _value(stream: BinaryIO, kind: int, *, keep: bool) -> Any:
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", stream.read(12))
        if item in _SCALARS:
            size = struct.calcsize(_SCALARS[item])
            data = stream.read(size * count)
            return list(struct.unpack(f"<{count}{_SCALARS[item]}", data)) if keep else None
        return (
            [_value(stream, item, keep=keep) for _ in range(count)]
            if keep
            else _skip(stream, item, count)
        )
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]
    raise struct.error(f"unknown GGUF value type {kind}")


def _skip(stream: BinaryIO, item: int, count: int) -> None:
    for _ in range(count):
        _value(stream, item, keep=False)


def tokenizer_from_gguf(path: str | Path, template: str | None = None) -> LightTokenizer:
    """The tokenizer embedded in a Qwen GGUF (see the module docs).

    Parameters
    ----------
    template
        A chat template to use instead of the GGUF's ``tokenizer.chat_template``.

    Raises
    ------
    ModelNotFoundError
        If the GGUF has no byte-level BPE vocabulary of Qwen's kind.
    """
    try:
        from tokenizers import (
            AddedToken,
            Regex,
            Tokenizer,
            decoders,
            models,
            normalizers,
            pre_tokenizers,
            processors,
        )
    except ImportError as exc:
        raise MissingDependencyError(
            "the GGUF's tokenizer needs the tokenizers library; pip install tokenizers"
        ) from exc
    from qwen_backends.tokenizer import ADDED_TOKENS, QWEN_SPLIT_PATTERN

    big = (_TOKENS, _MERGES)
    meta = read_gguf_metadata(path, prefix="tokenizer.", skip=big)
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    types = meta.get("tokenizer.ggml.token_type")
    if model != BYTE_LEVEL_BPE or pre not in ("qwen2", "qwen3") or not types:
        raise ModelNotFoundError(
            f"{path} has no Qwen byte-level BPE vocabulary (tokenizer.ggml.model {model!r}, "
            f"pre {pre!r}); this backend runs Qwen3 GGUFs only"
        )
    added = {i for i, kind in enumerate(types) if kind in (_CONTROL, _USER_DEFINED)}
    eos = meta.get("tokenizer.ggml.eos_token_id")
    pad = meta.get("tokenizer.ggml.padding_token_id")
    named = added | {index for index in (eos, pad) if isinstance(index, int)}
    with tempfile.TemporaryDirectory(prefix="qwen-gguf-tokenizer-") as folder:
        # The 151k tokens and merges go from the GGUF to vocab.json / merges.txt and from there
        # into the Rust BPE, never into Python objects: 90 MB less peak memory.
        vocab, merges = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        tokens = _write_bpe_files(path, types, named, vocab, merges)
        backend = Tokenizer(
            models.BPE.from_file(
                str(vocab), str(merges), fuse_unk=False, byte_fallback=False, ignore_merges=True
            )
        )
    # llama.cpp's converter marks <|fim_prefix|> & co. as control tokens; Qwen's own tokenizer
    # does not count them as special (decode(skip_special_tokens=True) keeps them).
    known = dict(ADDED_TOKENS)
    special = {i for i in added if known.get(tokens[i], types[i] == _CONTROL)}
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    for index in sorted(added):
        token = AddedToken(tokens[index], special=index in special, normalized=False)
        (backend.add_special_tokens if index in special else backend.add_tokens)([token])
        if backend.token_to_id(tokens[index]) != index:
            raise ModelNotFoundError(
                f"{path}: the added token {tokens[index]!r} is not at id {index} after the "
                "vocabulary; this GGUF's vocabulary is not laid out as Qwen's"
            )
    return LightTokenizer(
        backend,
        chat_template=template if template is not None else meta.get("tokenizer.chat_template"),
        eos_token=tokens[eos] if isinstance(eos, int) else None,
        pad_token=tokens[pad] if isinstance(pad, int) else None,
        name_or_path=str(path),
    )


class AddedToken:
    """An added token's text and whether it is special (``added_tokens_decoder`` values)."""

    __slots__ = ("content", "special")

    def __init__(self, content: str, special: bool) -> None:
        self.content = content
        self.special = special

    def __str__(self) -> str:
        return self.content


class Encoding(dict[str, Any]):
    """An encoded text: a dict whose keys are attributes too (``encoding.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class LightTokenizer:
    """A ``tokenizers.Tokenizer`` with the Hugging Face tokenizer methods the project uses.

    Encoding, decoding and vocabulary look-ups are the ``tokenizers`` library's (what Hugging
    Face fast tokenizers run); :meth:`apply_chat_template` renders the template with jinja2 the
    way transformers does (``trim_blocks``, ``lstrip_blocks``, ``tojson`` without ASCII escapes,
    ``raise_exception``), so prompts are byte-identical.

    Parameters
    ----------
    backend
        The ``tokenizers.Tokenizer``.
    chat_template
        The Jinja chat template, or ``None``.
    eos_token, pad_token
        The end-of-sequence and padding tokens' text.
    name_or_path
        Where it came from (messages).
    """

    bos_token: str | None = None
    unk_token_id: int | None = None

    def __init__(
        self,
        backend: Any,
        *,
        chat_template: str | None,
        eos_token: str | None,
        pad_token: str | None,
        name_or_path: str,
    ) -> None:
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.name_or_path = name_or_path
        self.added_tokens_decoder = {
            index: AddedToken(token.content, token.special)
            for index, token in backend.get_added_tokens_decoder().items()
        }

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-sequence token's id."""
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        """The padding token's id."""
        return self._id(self.pad_token)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the special added tokens."""
        return sorted(i for i, token in self.added_tokens_decoder.items() if token.special)

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> Encoding:
        """``{"input_ids": [...], "attention_mask": [...]}`` for ``text`` (keys readable as
        attributes too, like transformers' ``BatchEncoding``)."""
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        return Encoding(input_ids=ids, attention_mask=[1] * len(ids))

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        """The token ids of ``text`` (Qwen adds no special tokens either way)."""
        encoding = self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return list(encoding.ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, **_: Any) -> str:
        """The text of ``ids``."""
        text = self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return str(text)

    def batch_decode(
        self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False, **_: Any
    ) -> list[str]:
        """The text of each id sequence."""
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> Any:
        """Id of a token string (``None`` if unknown), or a list of them."""
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> Any:
        """Token string of an id, or a list of them."""
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """The text of token strings (byte-level decoded)."""
        return str(self.backend_tokenizer.decoder.decode(list(tokens)))

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id, added tokens included."""
        return dict(self.backend_tokenizer.get_vocab(with_added_tokens=True))

    def get_added_vocab(self) -> dict[str, int]:
        """Added token string -> id."""
        return {token.content: i for i, token in self.added_tokens_decoder.items()}

    def apply_chat_template(
        self,
        conversation: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Render ``conversation`` with the chat template (text, or ids with ``tokenize``).

        Raises
        ------
        ConfigurationError
            If there is no chat template.
        """
        if not self.chat_template:
            raise ConfigurationError(f"{self.name_or_path} has no chat template")
        rendered = _compiled_template(self.chat_template).render(
            messages=list(conversation),
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
            eos_token=self.eos_token,
            pad_token=self.pad_token,
            bos_token=self.bos_token,
            **kwargs,
        )
        return self.encode(rendered, add_special_tokens=False) if tokenize else rendered

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        found = self.backend_tokenizer.token_to_id(token)
        return None if found is None else int(found)


@functools.lru_cache(maxsize=8)
def _compiled_template(source: str) -> Any:
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise MissingDependencyError(
            "rendering a chat template needs jinja2; pip install jinja2"
        ) from exc
    from jinja2 import TemplateError

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(format: str) -> str:
        import datetime

        return datetime.datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(source)
