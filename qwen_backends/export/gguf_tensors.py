"""What a GGUF file holds, read from its header (no llama.cpp needed): its metadata
(:func:`read_metadata`, e.g. the trained context) and the types its weights are stored as.

llama.cpp's quantizer falls back to another type for a tensor whose width does not fit the
asked type (k-quants need multiples of 256): a tiny model "quantized to Q4_K_M" may hold no Q4_K
tensor at all. :func:`label_mismatch` says so, so a file's name never claims weights it lacks.

The header layout (GGUF v2/v3): ``GGUF``, version (u32), tensor count (u64), metadata count
(u64), the metadata key/value pairs, then per tensor its name, dimensions, type (u32) and
offset.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from qwen_backends.errors import ExportError

__all__ = ["GGML_TYPE_NAMES", "label_mismatch", "read_metadata", "tensor_types"]

#: ggml type ids of the types the export writes.
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    6: "Q5_0",
    8: "Q8_0",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    30: "BF16",
}
#: The tensor type an export label promises (the main type of the mix).
_PROMISED = {
    "q4_0": "Q4_0",
    "q5_0": "Q5_0",
    "q2_k": "Q2_K",
    "q3_k_m": "Q3_K",
    "q4_k_s": "Q4_K",
    "q4_k_m": "Q4_K",
    "q5_k_s": "Q5_K",
    "q5_k_m": "Q5_K",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
}
#: Sizes of fixed-size metadata value types (u8, i8, u16, i16, u32, i32, f32, bool, u64, i64,
#: f64); 8 is a string, 9 an array.
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: struct layouts of those types.
_LAYOUT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_LAYOUT.update({11: "<q", 12: "<d"})


def read_metadata(path: str | os.PathLike[str]) -> dict[str, int | float | bool | str]:
    """The GGUF file's scalar and string metadata (``{"qwen3.context_length": 40960, ...}``);
    arrays (the vocabulary) are skipped.

    Raises
    ------
    ExportError
        If the file is not a GGUF file this reader understands.
    """
    file = Path(path)
    values: dict[str, int | float | bool | str] = {}
    with file.open("rb") as stream:
        try:
            _, entries = _header(stream, file)
            for _ in range(entries):
                key = _read_string(stream)
                (kind,) = _unpack(stream, "<I")
                if kind in _LAYOUT:
                    (values[key],) = _unpack(stream, _LAYOUT[kind])
                elif kind == 8:
                    values[key] = _read_string(stream)
                else:
                    _skip_value(stream, kind)
        except (struct.error, UnicodeDecodeError) as exc:
            raise ExportError(f"{file} is a truncated or damaged GGUF file ({exc})") from None
    return values


def tensor_types(path: str | os.PathLike[str]) -> Counter[str]:
    """How many tensors of each type the GGUF file at ``path`` holds (``{"Q4_K": 145, ...}``).

    Raises
    ------
    ExportError
        If the file is not a GGUF file this reader understands.
    """
    file = Path(path)
    with file.open("rb") as stream:
        try:
            tensors, entries = _header(stream, file)
            for _ in range(entries):
                _skip_string(stream)
                (kind,) = _unpack(stream, "<I")
                _skip_value(stream, kind)
            counts: Counter[str] = Counter()
            for _ in range(tensors):
                _skip_string(stream)
                (dims,) = _unpack(stream, "<I")
                stream.seek(8 * dims, os.SEEK_CUR)
                (kind,) = _unpack(stream, "<I")
                stream.seek(8, os.SEEK_CUR)
                counts[GGML_TYPE_NAMES.get(kind, f"type {kind}")] += 1
            return counts
        except struct.error as exc:
            raise ExportError(f"{file} is a truncated or damaged GGUF file ({exc})") from None


def label_mismatch(path: str | os.PathLike[str], quant: str) -> str | None:
    """A sentence saying that ``path``, exported as ``quant``, holds no tensor of that type.

    ``None`` when it holds some (or ``quant`` promises no single type, such as f16).
    """
    promised = _PROMISED.get(quant.lower())
    if promised is None:
        return None
    counts = tensor_types(path)
    if counts.get(promised):
        return None
    held = ", ".join(f"{count} {name}" for name, count in counts.most_common())
    return (
        f"{Path(path).name} is labelled {quant.upper()} but holds no {promised} tensor ({held}): "
        "llama.cpp fell back to other types because the model's tensor widths do not fit "
        f"{promised} (k-quants need multiples of 256, as in Qwen3-4B); the file works, but its "
        "label does not describe its weights"
    )


def _header(stream: BinaryIO, file: Path) -> tuple[int, int]:
    """``(tensor count, metadata count)`` after checking the magic and version."""
    if stream.read(4) != b"GGUF":
        raise ExportError(f"{file} is not a GGUF file (no GGUF magic)")
    (version,) = _unpack(stream, "<I")
    if version < 2:
        raise ExportError(f"{file} is GGUF version {version}; only 2 and 3 are read")
    tensors, entries = _unpack(stream, "<QQ")
    return tensors, entries


def _read_string(stream: BinaryIO) -> str:
    (length,) = _unpack(stream, "<Q")
    return stream.read(length).decode("utf-8")


def _unpack(stream: BinaryIO, layout: str) -> tuple[Any, ...]:
    size = struct.calcsize(layout)
    return struct.unpack(layout, stream.read(size))


def _skip_string(stream: BinaryIO) -> None:
    (length,) = _unpack(stream, "<Q")
    stream.seek(length, os.SEEK_CUR)


def _skip_value(stream: BinaryIO, kind: int) -> None:
    if kind in _SCALAR:
        stream.seek(_SCALAR[kind], os.SEEK_CUR)
    elif kind == 8:
        _skip_string(stream)
    elif kind == 9:
        item, count = _unpack(stream, "<IQ")
        if item in _SCALAR:
            stream.seek(_SCALAR[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(stream, item)
    else:
        raise struct.error(f"unknown metadata value type {kind}")
