"""Qwen3-4B is the default everywhere, and only through settings.

1. No model name is hard-coded in the package outside ``family.py`` (the family table) and
   ``settings.py``: every string literal in
   code (docstrings excepted, and pydantic ``Field`` defaults, which are settings defaults) is
   checked for hub ids (``Qwen/...``, ``unsloth/...``) and Ollama tags (``qwen3:...``).
2. No leftovers of other model families anywhere in code, configs, docs or tests.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import regex

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "qwen_backends"
#: The modules that own model-name defaults: the family table and the settings.
SETTINGS_MODULES = (PACKAGE / "family.py", PACKAGE / "settings.py")

MODEL_NAME = regex.compile(r"Qwen/|unsloth/|\bqwen3?:\w", regex.IGNORECASE)
OTHER_FAMILIES = regex.compile(
    r"(?<!\w)llama[-_ ]?\d|tinyllama|codellama|meta-llama|mistral|mixtral|gemma"
    r"|\bphi-?[1-4]\b|microsoft/phi|\bgpt-?2\b|\bgpt-?j\b|gpt-?neo|distilgpt|falcon|tiiuae"
    r"|deepseek|\bbert-(?:base|large)|flan-t5|\bt5-(?:small|base|large)|facebook/opt"
    r"|eleutherai|bigscience|starcoder|baichuan|chatglm|internlm|smollm|vicuna|pythia"
    r"|\bqwen:\d|qwen2\.5|\bqwq\b",
    regex.IGNORECASE,
)
TEXT_SUFFIXES = {
    ".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".env", ".txt", ".jsonl", ".ipynb", ".cfg",
    ".jinja", ".ini", ".json",
}  # fmt: skip
SKIP_DIRS = {"runs", "outputs", "build", "dist", "__pycache__", "node_modules"}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _field_defaults(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Field":
            candidates = node.args[:1] + [k.value for k in node.keywords if k.arg == "default"]
            found.update(id(value) for value in candidates if isinstance(value, ast.Constant))
    return found


def hard_coded_model_names(path: Path) -> list[str]:
    """``path:line: literal`` for every string literal in code that names a model."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = _docstring_nodes(tree) | _field_defaults(tree)
    hits = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in allowed
            and MODEL_NAME.search(node.value)
        ):
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
            hits.append(f"{where}:{node.lineno}: {node.value!r}")
    return hits


def test_detector_flags_literals_but_not_docstrings_or_field_defaults(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    source = (
        '"""Loads ``Qwen/Qwen3-4B`` by default."""\n'
        "from pydantic import Field\n"
        'name = Field("unsloth/Qwen3-4B", description="x")\n'
        'def load():\n    """Uses qwen3:4b."""\n    return "qwen3:4b-instruct"\n'
        'HINT = f"try {name} or Qwen/Qwen3-4B"\n'
    )
    sample.write_text(source, encoding="utf-8")
    hits = hard_coded_model_names(sample)
    assert [hit.split(":")[1] for hit in hits] == ["6", "7"]


def test_no_hard_coded_model_names_outside_settings() -> None:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in SETTINGS_MODULES:
            hits += hard_coded_model_names(path)
    assert not hits, (
        "model names belong in qwen_backends/family.py (FAMILIES) or configs/; read them from "
        "the table or the settings (e.g. settings.model_name):\n" + "\n".join(hits)
    )


def _project_text_files() -> Iterator[Path]:
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIP_DIRS and (not d.startswith(".") or d == ".ci") and "egg-info" not in d
        ]
        for name in files:
            path = Path(root) / name
            if path.suffix in TEXT_SUFFIXES or path.parent.name == ".ci":
                yield path


def test_no_other_model_families_in_code_configs_or_docs() -> None:
    hits = []
    for path in _project_text_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            match = OTHER_FAMILIES.search(line)
            # llama.cpp names every byte-level BPE vocabulary, Qwen's too, "gpt2" in GGUF files.
            if match and "tokenizer.ggml.model" not in line:
                hits.append(f"{path.relative_to(REPO)}:{number}: {match.group()!r}")
    assert not hits, "leftovers of other model families:\n" + "\n".join(hits)


def test_family_detector() -> None:
    flagged = [
        "meta-llama/Llama-3",
        "llama-2-7b",
        "Llama 3",
        "load gpt2",
        "Mistral-7B",
        "google/gemma-2b",
        "phi-3",
        "qwen:4b",
    ]
    clean = [
        "ollama serve",
        "convert with llama.cpp",
        "backend=llamacpp",
        "Llama(model_path=path)",
        "LLAMA_FTYPE_MOSTLY_Q8_0",
        "llama_model_quantize",
        "Qwen3-4B",
        "qwen3:4b-instruct",
        "GPT-4's",
    ]
    assert all(OTHER_FAMILIES.search(text) for text in flagged)
    assert not any(OTHER_FAMILIES.search(text) for text in clean)
