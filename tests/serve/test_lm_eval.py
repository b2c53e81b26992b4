"""lm-evaluation-harness's ``local-chat-completions`` model as an independent real client.

A three-prompt task (a local JSONL file, no hub) runs through ``lm_eval.simple_evaluate`` against
the served hf tiny checkpoint, with the chat template applied by the server; every answer lm-eval
received must equal ``backend.generate`` for the same messages and the sampling lm-eval sent
(temperature 0, its seed 1234, its stop strings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Served

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra")

PROMPTS = ["Name a colour.", "Say hello.", "Count to three."]
GENERATION = {"until": ["QQQ"], "max_gen_toks": 8, "temperature": 0, "presence_penalty": 2.0}


def write_task(directory: Path) -> None:
    data = directory / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": p, "answer": "x"}) + "\n" for p in PROMPTS))
    task = {
        "task": "qwen_serve_tiny",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": GENERATION,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (directory / "qwen_serve_tiny.yaml").write_text(json.dumps(task))  # JSON is YAML


@pytest.mark.timeout(600)
def test_lm_eval_local_chat_completions_gets_the_library_answers(
    hf_served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    write_task(tmp_path)
    results: Any = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={"model": hf_served.model, "base_url": f"{hf_served.base_url}/chat/completions"},
        tasks=["qwen_serve_tiny"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        apply_chat_template=True,
        log_samples=True,
    )
    samples = results["samples"]["qwen_serve_tiny"]
    assert len(samples) == len(PROMPTS)
    backend = hf_served.backend
    sampling = backend.settings.sampling.replace(
        temperature=0, presence_penalty=2.0, max_new_tokens=8, stop=["QQQ"], seed=1234
    )
    for sample in samples:
        chat = sample["arguments"][0][0]  # a JsonChatStr (a one-field named tuple)
        messages = json.loads(chat[0] if isinstance(chat, (tuple, list)) else chat)
        assert messages == [{"role": "user", "content": sample["doc"]["question"]}]
        expected = backend.generate(messages, sampling).text
        assert sample["resps"][0][0] == expected
    assert {s["doc"]["question"] for s in samples} == set(PROMPTS)
