"""The Colab notebook: valid nbformat, and it runs end to end in CPU smoke mode."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "finetune_qwen3_colab.ipynb"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_valid_and_starts_with_parameters() -> None:
    notebook = _read()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "SMOKE = False" in code[0].source  # Colab mode by default
    assert all(not cell.get("outputs") for cell in code)  # shipped without outputs
    source = "\n".join(cell.source for cell in code)
    for needle in ('"unsloth"', "create_backend()", "run_finetune", "mlabonne/FineTome-100k"):
        assert needle in source


def test_notebook_runs_in_smoke_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    # the kernel inherits this: one thread is faster for the tiny model on a busy machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    notebook = _read()
    overrides = nbformat.v4.new_code_cell(
        "SMOKE = True\n"
        f"SAMPLE_DATA = {json.dumps(str(ROOT / 'configs' / 'finetune' / 'sample_chats.jsonl'))}\n"
        f"OUTPUT_DIR = {json.dumps(str(tmp_path / 'out'))}\n"
    )
    notebook.cells.insert(notebook.cells.index(_parameters(notebook)) + 1, overrides)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = {index: _text(cell) for index, cell in enumerate(notebook.cells)}
    everything = "\n".join(outputs.values())
    assert "smoke mode: skipping the install cell" in everything
    assert "HFBackend" in everything
    # the learned answers appear after fine-tuning, not before
    assert "after:  Paris." in everything and "before: Paris." not in everything
    assert "trained 20 steps on 9 examples" in everything
    assert (tmp_path / "out" / "Modelfile").is_file()
    assert (tmp_path / "out" / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "lora" / "adapter_config.json").is_file()


def _parameters(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)
