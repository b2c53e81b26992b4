"""Convert a Hugging Face / merged Qwen3 checkpoint to GGUF, then check it in llama.cpp itself.

Conversion uses llama.cpp's own ``convert_hf_to_gguf.py`` (never a hand-written converter). The
script, its ``conversion/`` package and ``gguf-py`` are not in the llama-cpp-python wheel, only
in its source distribution under ``vendor/llama.cpp/``; :func:`converter_dir` extracts them once
from the cached sdist (``<cache_dir>/sdist``, downloaded with ``pip download`` when missing) into
``<cache_dir>/llama.cpp-converter/``. The same llama-cpp-python version as the backend's pin is
used, so the converter and the runtime agree on the format.

- ``f32`` / ``f16`` / ``bf16`` / ``q8_0``: written directly by the converter (it runs in a
  subprocess with this Python; it needs torch and transformers).
- k-quants and the other llama.cpp types (``q4_k_m``, ``q5_k_m``, ``q6_k``, ``q4_0`` ...): an f16
  intermediate from the converter, then ``llama_cpp.llama_model_quantize`` (no ``llama-quantize``
  binary is built). k-quants need tensor widths that are multiples of 256; llama.cpp falls back
  to q5_0/q8_0 for narrower tensors (tiny test models), Qwen3-4B's widths are fine.

:func:`verify_gguf` loads the result with the ``llamacpp`` backend and checks what breaks most
often: the embedded chat template renders exactly the prompt ids of
:func:`~qwen_backends.chat.render_prompt_ids`, ``<|im_end|>`` ends generation, and the answers
the model was trained on come back (greedy).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends._cache import build_once, cache_dir
from qwen_backends._files import ensure_directory, write_failure
from qwen_backends.errors import (
    ChatTemplateError,
    ConfigurationError,
    DiskFullError,
    ExportError,
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    ThinkingModeError,
)
from qwen_backends.export.answers import Answer, ask, conversation_tools
from qwen_backends.export.gguf_tensors import label_mismatch

if TYPE_CHECKING:
    from qwen_backends.chat import Message

__all__ = [
    "CONVERTER_TYPES",
    "GGUF_TYPES",
    "LLAMA_CPP_VERSION",
    "VerifyReport",
    "convert_to_gguf",
    "converter_dir",
    "verify_gguf",
]

logger = logging.getLogger(__name__)

#: The llama-cpp-python release whose converter (and runtime) the project pins.
LLAMA_CPP_VERSION = "0.3.36"
#: Types ``convert_hf_to_gguf.py`` writes itself (``--outtype``).
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
#: Types made from an f16 intermediate with ``llama_model_quantize`` -> llama.cpp ftype name.
_QUANTIZED = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
#: Every quantization type accepted by :func:`convert_to_gguf` (lower case).
GGUF_TYPES: tuple[str, ...] = (*CONVERTER_TYPES, *_QUANTIZED)
#: Types that lose (almost) nothing against 16-bit weights: their greedy answers must match.
_NEAR_LOSSLESS = frozenset({"f32", "f16", "bf16", "q8_0"})
_SDIST = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
_VENDOR = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"


def normalize_type(quant: str) -> str:
    """``quant`` in the lower-case spelling of :data:`GGUF_TYPES`.

    Raises
    ------
    ConfigurationError
        For a type llama.cpp cannot write here, listing the ones it can.
    """
    name = quant.strip().lower().replace("-", "_")
    if name not in GGUF_TYPES:
        from qwen_backends.errors import did_you_mean

        raise ConfigurationError(
            f"unknown GGUF quantization {quant!r}; {did_you_mean(name, GGUF_TYPES)}"
            f"choose one of {', '.join(GGUF_TYPES)}"
        )
    return name


# -- the converter ---------------------------------------------------------------------------------


def sdist_path() -> Path:
    """The cached llama-cpp-python source distribution, downloaded with pip when missing.

    Raises
    ------
    MissingDependencyError
        When pip cannot download it (no network): says where to put the file.
    """
    target = cache_dir() / "sdist" / _SDIST
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            "-d",
            tmp,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        found = Path(tmp) / _SDIST
        if done.returncode != 0 or not found.is_file():
            reason = (done.stderr.strip().splitlines() or ["no file written"])[-1]
            raise MissingDependencyError(
                f"GGUF conversion needs llama.cpp's converter from the llama-cpp-python "
                f"{LLAMA_CPP_VERSION} source distribution, and pip could not download it "
                f"({reason}); put {_SDIST} into {target.parent} (or run scripts/setup.sh online)"
            )
        found.replace(target)
    return target


def converter_dir() -> Path:
    """Folder with ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/`` (extracted once)."""
    target = cache_dir() / "llama.cpp-converter" / LLAMA_CPP_VERSION
    return build_once(target, _extract_converter)


def _extract_converter(directory: Path) -> None:
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(sdist_path()) as archive:
        members = []
        for member in archive.getmembers():
            relative = member.name.removeprefix(_VENDOR)
            if relative != member.name and relative.startswith(wanted):
                member.name = relative
                members.append(member)
        archive.extractall(directory, members=members, filter="data")
    if not (directory / "convert_hf_to_gguf.py").is_file():
        raise ExportError(
            f"{_SDIST} has no vendor/llama.cpp/convert_hf_to_gguf.py; delete "
            f"{cache_dir() / 'sdist' / _SDIST} so it is downloaded again"
        )


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ModelNotFoundError(
            f"model folder {str(model_dir)!r} does not exist; give a Hugging Face checkpoint "
            "folder (config.json, *.safetensors, tokenizer files), e.g. a fine-tuning run's merged/"
        )
    missing = [
        name
        for name in ("config.json", "tokenizer_config.json")
        if not (model_dir / name).is_file()
    ]
    if missing or (not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin"))):
        what = ", ".join(missing) if missing else "weights (*.safetensors)"
        raise ModelNotFoundError(
            f"{model_dir} is not a Hugging Face checkpoint folder (no {what}); save it with "
            "save_pretrained (model and tokenizer) first"
        )


def _run_converter(model_dir: Path, output: Path, outtype: str) -> None:
    """Run ``convert_hf_to_gguf.py`` in a subprocess with this Python."""
    for module in ("torch", "transformers"):
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"GGUF conversion needs {module}; pip install 'qwen-backends[hf]'"
            )
    source = converter_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(source / "gguf-py"), str(source), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.setdefault("NO_LOCAL_GGUF", "")
    command = [
        sys.executable,
        str(source / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(output),
        "--outtype",
        outtype,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not output.is_file():
        cause = _failure_line(done.stderr) or f"exit status {done.returncode}"
        if "No space left" in cause or "Disk quota" in cause:
            raise DiskFullError(
                f"the disk is full: cannot write {output.parent} ({cause}); free some space "
                "and run the export again"
            )
        raise ExportError(
            f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir} ({cause}); check that it "
            "is a Qwen3 checkpoint saved with save_pretrained"
        )


def _failure_line(stderr: str) -> str:
    """The line of a tool's stderr that names its failure: the last error line, never a
    progress bar (tqdm's ``%|`` lines) or an INFO line."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and "%|" not in line and not line.lstrip().startswith("INFO")
    ]
    errors = [line for line in lines if "Error" in line or "error" in line.split(":", 1)[0]]
    return (errors or lines or [""])[-1]


def _quantize(source: Path, output: Path, quant: str, threads: int | None) -> None:
    """k-quants and friends through ``llama_cpp.llama_model_quantize``."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(
            f"GGUF type {quant} is made with llama.cpp's quantizer, which needs "
            "llama-cpp-python; pip install 'qwen-backends[llamacpp]' (see README: llama.cpp)"
        ) from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _QUANTIZED[quant])
    params.nthread = threads or 0
    with _quiet_stderr() as log:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(output).encode(), llama_cpp.byref(params)
        )
    if status != 0 or not output.is_file():
        lines = log
        raise ExportError(
            f"llama.cpp could not quantize {source.name} to {quant} (status {status}"
            + (f": {lines[-1].strip()}" if lines else "")
            + "); try q8_0, or check free disk space"
        )


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[list[str]]:
    """Send file descriptor 2 (llama.cpp's C logging) to a temporary file for the block.

    Yields a list that holds the captured lines once the block has ended.
    """
    captured: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode(errors="replace")
        captured.extend(line for line in text.splitlines() if line.strip())


def convert_to_gguf(
    model_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    quant: str = "q8_0",
    *,
    threads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model_dir`` (a Hugging Face Qwen3 checkpoint folder) as one GGUF file.

    Parameters
    ----------
    model_dir
        A folder written by ``save_pretrained`` (model and tokenizer), e.g. ``merged/``.
    output
        The ``.gguf`` file to write (its folder is created). It is written under a temporary
        name beside it and renamed when complete, so a failed or interrupted export leaves
        nothing behind.
    quant
        One of :data:`GGUF_TYPES` (case-insensitive): ``q8_0`` by default.
    threads
        Threads for ``llama_model_quantize`` (``None``: llama.cpp's choice).
    overwrite
        Replace an existing ``output`` (``--force``); otherwise it is refused.

    Raises
    ------
    ConfigurationError
        For an unknown type, an output that does not end in ``.gguf``, an existing output
        without ``overwrite``, or ``threads`` below 1.
    ModelNotFoundError
        When ``model_dir`` is not a checkpoint folder.
    ExportError
        When llama.cpp's converter or quantizer fails (its last line is quoted).

    Notes
    -----
    A quantized file holding no tensor of its type (llama.cpp falls back for tensor widths the
    type cannot take, as in tiny test models) is logged as a warning naming what it holds.
    """
    quant = normalize_type(quant)
    model = Path(model_dir).expanduser()
    target = Path(output).expanduser()
    if target.suffix.lower() != ".gguf":
        raise ConfigurationError(
            f"output {str(target)!r} must be a .gguf file name, e.g. model.{quant.upper()}.gguf"
        )
    if threads is not None and threads < 1:
        raise ConfigurationError(f"threads={threads} must be 1 or more (or None: llama.cpp's)")
    if target.is_dir():
        raise ConfigurationError(f"output {target} is a folder; give a .gguf file name")
    if target.exists() and not overwrite:
        raise ConfigurationError(
            f"output {target} already exists; choose another name, or pass --force "
            "(overwrite=True) to replace it"
        )
    _check_model_dir(model)
    ensure_directory(target.parent, "the GGUF file", "--output")
    started = time.perf_counter()
    try:  # an unwritable output folder is reported as such, not as the converter failing
        workspace = tempfile.TemporaryDirectory(prefix=".gguf-", dir=target.parent)
    except OSError as exc:
        raise write_failure(exc, target, "the GGUF file", "run it again") from exc
    with workspace as tmp:
        partial = Path(tmp) / target.name
        if quant in CONVERTER_TYPES:
            _run_converter(model, partial, quant)
        else:
            intermediate = Path(tmp) / "f16.gguf"
            _run_converter(model, intermediate, "f16")
            _quantize(intermediate, partial, quant, threads)
            mismatch = label_mismatch(partial, quant)
            if mismatch is not None:
                logger.warning("%s", mismatch.replace(partial.name, target.name, 1))
        partial.replace(target)
    logger.info("wrote %s (%s) in %.1f s", target, quant, time.perf_counter() - started)
    return target


# -- checked in a real engine ---------------------------------------------------------------------

#: Conversations whose prompts must render identically (system, multi-turn, unicode).
PROBE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "hi"},),
    (
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ),
    (
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, in French: « rouge » ou «\u00a0vert »?"},
    ),
)


@dataclass
class VerifyReport:
    """What :func:`verify_gguf` checked.

    Attributes
    ----------
    prompts_checked
        Conversations whose prompt ids matched :func:`~qwen_backends.chat.render_prompt_ids`.
    answers
        ``(expected, got)`` for each trained answer asked, as :meth:`Answer.shown` lines.
    matched
        How many trained answers came back exactly (text and tool calls, turn ended).
    reference_matched
        How many the merged model answered exactly through the hf backend (``None`` if not
        measured).
    """

    prompts_checked: int = 0
    answers: list[tuple[str, str]] = field(default_factory=list)
    matched: int = 0
    reference_matched: int | None = None


def verify_gguf(
    gguf: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    trained: Sequence[tuple[list[Message], str]] = (),
    reference_matched: int | None = None,
    quant: str | None = None,
    threads: int = 1,
) -> VerifyReport:
    """Load ``gguf`` with the llamacpp backend and check it behaves like the checkpoint.

    Checks, in order:

    1. the GGUF's embedded chat template renders the same prompt ids as
       :func:`~qwen_backends.chat.render_prompt_ids` with the checkpoint's tokenizer
       (``tokenizer_dir``; default the offline Qwen3-4B tokenizer) for
       :data:`PROBE_CONVERSATIONS` and every conversation in ``trained``;
    2. ``<|im_end|>`` is an end-of-generation token of the GGUF;
    3. the trained answers come back greedy, asked with the conversation's trained tools (text
       and tool calls compared, :mod:`qwen_backends.export.answers`), each ending its turn: at
       least ``reference_matched`` of them (how many the
       merged model gets right) for f32/f16/bf16/q8_0, at least half of that for lower-bit types;
       without a reference, at least half of them.

    Parameters
    ----------
    gguf
        The file to check.
    tokenizer_dir
        Folder of the checkpoint's tokenizer (what training rendered with).
    trained
        ``(conversation, trained answer)`` pairs; the conversation ends with the user turn.
    reference_matched
        How many of ``trained`` the merged model answers exactly (hf backend), if measured.
    quant
        The GGUF's type (decides how strict check 3 is); read from the file name if ``None``.
    threads
        llama.cpp threads for the check.

    Raises
    ------
    ExportError
        Naming the check that failed and what to do.
    """
    from qwen_backends.backends.llamacpp import LlamaCppBackend, gguf_tokenizer
    from qwen_backends.chat import render_prompt_ids
    from qwen_backends.factory import create_backend
    from qwen_backends.tokenizer import load_tokenizer

    path = Path(gguf)
    reference_tokenizer = load_tokenizer(str(tokenizer_dir) if tokenizer_dir else "offline")
    report = VerifyReport(reference_matched=reference_matched)
    try:
        backend = create_backend(
            backend="llamacpp",
            model=str(path.resolve()),
            llamacpp={"n_threads": threads, "n_threads_batch": threads, "n_ctx": 4096},
        )
    except (ModelNotFoundError, ChatTemplateError, ThinkingModeError) as exc:
        raise ExportError(
            f"{path.name} does not load as a non-thinking Qwen3 in llama.cpp: {exc}"
        ) from exc
    assert isinstance(backend, LlamaCppBackend)
    with backend:
        template = backend.embedded_template
        # A tokenizer folder beside the GGUF would hide its template: check the template itself.
        embedded = (
            backend.tokenizer
            if backend.tokenizer_source == "embedded"
            else gguf_tokenizer(template, str(tokenizer_dir) if tokenizer_dir else "offline")
        )
        conversations = [list(c) for c in PROBE_CONVERSATIONS] + [m for m, _ in trained]
        for messages in conversations:
            # A fine-tuning chat with tools (finetune.data.Chat) was trained with them rendered.
            tools = conversation_tools(messages)
            options: dict[str, Any] = {"tools": tools} if tools else {}
            expected = render_prompt_ids(reference_tokenizer, messages, **options)
            try:
                got = render_prompt_ids(embedded, messages, **options)
            except QwenBackendsError as exc:
                raise ExportError(
                    f"{path.name}: the chat template embedded in the GGUF cannot render a "
                    f"non-thinking prompt ({exc}); export from a folder whose "
                    "tokenizer_config.json holds Qwen3's official chat template"
                ) from exc
            if got != expected:
                raise ExportError(
                    f"{path.name}: the chat template embedded in the GGUF renders "
                    f"{len(got)} prompt tokens for {messages[-1]['content'][:40]!r} where the "
                    f"checkpoint's template renders {len(expected)}, so llama.cpp and Ollama "
                    "would prompt the model differently from training; export from a folder "
                    "whose tokenizer_config.json holds Qwen3's official chat template"
                    + ("" if template else " (the GGUF has no chat template)")
                )
            report.prompts_checked += 1
        if not backend.is_end_of_generation(backend.im_end_id):
            raise ExportError(
                f"{path.name}: llama.cpp does not end generation on <|im_end|>, so answers "
                "would run on; export from a folder whose generation_config.json / "
                "tokenizer_config.json name <|im_end|> as the eos token"
            )
        if not trained:
            return report
        kind = (quant or _type_from_name(path.name) or "").lower()
        for messages, answer in trained:
            budget = answer_budget(reference_tokenizer, answer)
            trained_answer = Answer.trained(answer, tools=conversation_tools(messages) is not None)
            answered = ask(backend, messages, budget)
            report.answers.append((trained_answer.shown(), answered.shown()))
            report.matched += answered.matches(trained_answer)
    total = len(trained)
    if reference_matched is None:
        required = math.ceil(total / 2)
    elif kind in _NEAR_LOSSLESS:
        required = reference_matched
    else:
        required = math.ceil(reference_matched / 2)
    if report.matched < required:
        wrong = next((pair for pair in report.answers if pair[0] != pair[1]), None)
        example = f" (asked for {wrong[0]!r}, got {wrong[1]!r})" if wrong else ""
        raise ExportError(
            f"{path.name}: only {report.matched}/{total} trained answers came back greedy "
            f"through llama.cpp, {required} required"
            + (f" (the merged model gets {reference_matched})" if reference_matched else "")
            + f"{example}; the GGUF does not behave like the trained model: try q8_0, or set "
            "export.verify_gguf: false to keep it unchecked"
        )
    return report


def answer_budget(tokenizer: Any, answer: str) -> int:
    """New tokens a trained ``answer`` may take when asked again: its own length plus 8."""
    return len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 8


def _type_from_name(name: str) -> str | None:
    lowered = name.lower()
    for quant in sorted(GGUF_TYPES, key=len, reverse=True):
        if f".{quant}." in lowered or lowered.endswith(f"-{quant}.gguf"):
            return quant
    return None


def gguf_file_name(stem: str, quant: str) -> str:
    """The file name used for exports: ``<stem>.<QUANT>.gguf`` (``model.Q8_0.gguf``)."""
    return f"{stem}.{normalize_type(quant).upper()}.gguf"
