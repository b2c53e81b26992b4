"""GGUF export with llama.cpp's own converter and quantizer, checked in llama.cpp.

Conversions take ~30 s each on two shared cores; the tiny/bench GGUFs are cached
(``qwen_backends.testing.tiny_gguf``), and only the broken-template case converts here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")

from qwen_backends.errors import ConfigurationError, ExportError, ModelNotFoundError
from qwen_backends.export.gguf import GGUF_TYPES, convert_to_gguf, gguf_file_name, verify_gguf
from qwen_backends.export.gguf_tensors import label_mismatch, tensor_types
from qwen_backends.factory import create_backend
from qwen_backends.testing import tiny_gguf


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m qwen_backends.cli ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "qwen_backends.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


#: Qwen3's chat template as Unsloth's old Ollama export wrote it: ChatML with no think block.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_types_and_file_names() -> None:
    assert {"f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"} <= set(GGUF_TYPES)
    assert gguf_file_name("qwen3-smoke", "Q4_K_M") == "qwen3-smoke.Q4_K_M.gguf"


def test_bad_arguments_are_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'q4_k_m'"):
        convert_to_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_k_mm")
    with pytest.raises(ConfigurationError, match=r"must be a \.gguf file name"):
        convert_to_gguf(tiny_model_dir, tmp_path / "x.bin", "q8_0")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        convert_to_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face checkpoint folder"):
        convert_to_gguf(tmp_path / "empty", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_k_quants_are_written_by_llama_cpps_quantizer() -> None:
    path = tiny_gguf("q4_k_m", "bench")
    with create_backend(
        backend="llamacpp", model=str(path), llamacpp={"n_threads": 1, "n_ctx": 512}
    ) as backend:
        metadata = backend.llama.metadata  # type: ignore[attr-defined]
        assert metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        result = backend.generate("hi", {"temperature": 0, "max_new_tokens": 4})
        assert result.completion_tokens == 4
    assert path.stat().st_size < tiny_gguf("q8_0", "bench").stat().st_size


def test_a_good_gguf_passes_the_check(tiny_model_dir: Path) -> None:
    report = verify_gguf(tiny_gguf("q8_0"), tokenizer_dir=tiny_model_dir)
    assert report.prompts_checked == 3
    assert report.answers == []


def test_a_gguf_whose_template_differs_from_training_fails_the_check(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # The GGUF carries plain ChatML (as Unsloth's old export wrote), training used Qwen3's
    # official template: llama.cpp and Ollama would prompt the model without the think block.
    broken = tmp_path / "chatml"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "chat_template.jinja").write_text(CHATML)
    output = convert_to_gguf(broken, tmp_path / "model.gguf", "q8_0")
    with pytest.raises(ExportError, match="embedded in the GGUF renders") as caught:
        verify_gguf(output, tokenizer_dir=tiny_model_dir)
    assert "Qwen3's official chat template" in str(caught.value)
    # against its own checkpoint it is consistent
    assert verify_gguf(output, tokenizer_dir=broken).prompts_checked == 3


def test_the_cli_writes_a_gguf_that_the_llamacpp_backend_answers_with(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    output = tmp_path / "tiny.F16.gguf"
    result = cli(
        "export", "gguf", str(tiny_model_dir), "--output", str(output), "--quant", "F16",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "checked in llama.cpp: 3 prompts render identically" in result.stdout
    assert f"wrote {output}" in result.stdout
    greedy = {"temperature": 0, "max_new_tokens": 12}
    options = {"n_threads": 1, "n_ctx": 512}
    cached = tiny_gguf("f16")
    with (
        create_backend(backend="llamacpp", model=str(output), llamacpp=options) as ours,
        create_backend(backend="llamacpp", model=str(cached), llamacpp=options) as reference,
    ):
        assert ours.generate("hi", greedy).text == reference.generate("hi", greedy).text


def test_the_cli_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    result = cli("export", "gguf", "x", "--output", "y.gguf", "--quant", "q9")
    assert result.returncode == 2 and "invalid choice: 'q9'" in result.stderr
    result = cli("export", "gguf", str(tmp_path / "missing"), "--output", "y.gguf")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert (
        lines[0].startswith("qwen-backends: error: model folder") and "does not exist" in lines[0]
    )


# -- nothing silent (issue 24) ---------------------------------------------------------------------


def test_an_existing_output_is_kept_unless_forced(tmp_path: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "old.gguf"
    output.write_bytes(b"keep me")
    with pytest.raises(ConfigurationError, match=r"already exists; .* pass --force"):
        convert_to_gguf(tiny_model_dir, output, "q8_0")
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(ConfigurationError, match=r"is a folder; give a \.gguf file name"):
        convert_to_gguf(tiny_model_dir, tmp_path / "folder.gguf", "q8_0")
    result = cli("export", "gguf", str(tiny_model_dir), "--output", str(output))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "--force" in lines[0], result.stderr
    result = cli("export", "gguf", str(tiny_model_dir), "--output", "x.gguf", "--threads", "-4")
    assert result.returncode == 2 and "-4 is not 1 or more" in result.stderr
    assert output.read_bytes() == b"keep me"


def test_a_file_without_tensors_of_its_label_says_so(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert tensor_types(tiny_gguf("q4_k_m", "bench"))["Q4_K"] > 0
    assert label_mismatch(tiny_gguf("q4_k_m", "bench"), "q4_k_m") is None
    assert label_mismatch(tiny_gguf("q8_0"), "q8_0") is None
    with caplog.at_level("WARNING", logger="qwen_backends.export.gguf"):
        path = convert_to_gguf(tiny_model_dir, tmp_path / "tiny.Q4_K_M.gguf", "q4_k_m")
    assert tensor_types(path)["Q4_K"] == 0  # the tiny model's widths are not multiples of 256
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1
    assert warned[0].startswith("tiny.Q4_K_M.gguf is labelled Q4_K_M but holds no Q4_K tensor (")
    assert not list(tmp_path.glob(".gguf-*"))  # the temporary folder is gone


def test_an_unwritable_output_folder_is_named_not_the_model(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    def refused(*args: object, dir: str, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refused)  # root ignores chmod
    with pytest.raises(ConfigurationError) as caught:
        convert_to_gguf(tiny_model_dir, tmp_path / "out.gguf", "q8_0")
    message = str(caught.value)
    assert message.startswith(f"cannot write the GGUF file {tmp_path / 'out.gguf'} (Permission")
    assert str(tiny_model_dir) not in message


def test_a_converter_failure_quotes_its_error_not_a_progress_bar() -> None:
    from qwen_backends.export.gguf import _failure_line

    stderr = (
        "INFO:hf-to-gguf:Loading model: merged\n"
        "Traceback (most recent call last):\n"
        '  File "convert_hf_to_gguf.py", line 9, in <module>\n'
        "OSError: [Errno 28] No space left on device\n"
        "Writing:  40%|████      | 1.00G/2.50G [00:10<00:15, 100MB/s]\r"
        "Writing:  41%|████      | 1.03G/2.50G [00:10<00:15, 100MB/s]\n"
    )
    assert _failure_line(stderr) == "OSError: [Errno 28] No space left on device"
    assert _failure_line("INFO: fine\nsomething went wrong\n") == "something went wrong"


def test_the_header_reader_agrees_with_llama_cpp() -> None:
    from qwen_backends.export.gguf_tensors import read_metadata

    path = tiny_gguf("q8_0")
    metadata = read_metadata(path)
    with create_backend(
        backend="llamacpp", model=str(path), llamacpp={"n_threads": 1, "n_ctx": 512}
    ) as backend:
        theirs = backend.llama.metadata  # type: ignore[attr-defined]
    assert metadata["general.architecture"] == theirs["general.architecture"] == "qwen3"
    assert str(metadata["qwen3.context_length"]) == theirs["qwen3.context_length"]
    assert str(metadata["qwen3.block_count"]) == theirs["qwen3.block_count"]
