"""Shared data of the evaluation tests: a small prompt set and short sampling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: A small prompt set: a plain string, a system prompt, a multi-turn chat; two are scored.
PROMPTS: list[dict[str, Any]] = [
    {"id": "add", "messages": "What is 2 + 2? Number only.", "expected": "4"},
    {
        "id": "capital",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of Italy?"},
        ],
        "expected": ["Rome", "Roma"],
    },
    {
        "id": "recall",
        "messages": [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "<think>note it</think>Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
    },
    {"id": "poem", "messages": [{"role": "user", "content": "Write a line about the sea."}]},
]
#: Short answers keep the tests fast.
SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_new_tokens": 4, "seed": 3}


def write_prompts(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as a JSONL prompt set."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
