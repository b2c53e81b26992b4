"""lm-evaluation-harness as an independent real client and as the reference for scoring.

A three-prompt task (a local JSONL file, no hub) runs through ``lm_eval.simple_evaluate`` against
the served hf tiny checkpoint, with the chat template applied by the server; every answer lm-eval
received must equal ``backend.generate`` for the same messages and the sampling lm-eval sent
(temperature 0, its seed 1234, its stop strings).

A three-question multiple-choice task (local JSONL + YAML) is the scoring reference: lm-eval's
own ``hf`` model computes each choice's log-likelihood on the tiny checkpoint in float32;
``score_text`` must equal it within 1e-4, and lm-eval's ``local-completions`` model pointed at
``serve``'s ``/v1/completions`` must give the same per-item results and accuracies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


# -- log-likelihood: lm-eval's own hf model is the reference ---------------------------------------

QUESTIONS: list[dict[str, Any]] = [
    {"question": "What colour is the sky?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs has a cat?", "choices": ["two", "four", "six"], "answer": 1},
    {"question": "Which is a fruit?", "choices": ["stone", "apple pie", "apple"], "answer": 2},
]
CHOICE_TASK = "qwen_choice_tiny"


def write_choice_task(directory: Path) -> None:
    data = directory / "choices.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    task = {
        "task": CHOICE_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (directory / f"{CHOICE_TASK}.yaml").write_text(json.dumps(task))


def run_choice_task(directory: Path, model: str, model_args: dict[str, Any]) -> Any:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[CHOICE_TASK],
        task_manager=TaskManager(include_path=str(directory), include_defaults=False),
        log_samples=True,
    )


def per_request(results: Any) -> dict[tuple[int, str], tuple[float, bool]]:
    """``(doc_id, continuation) -> (log-likelihood, is_greedy)`` of every request lm-eval made."""
    found = {}
    for sample in results["samples"][CHOICE_TASK]:
        for arguments, response in zip(sample["arguments"], sample["resps"], strict=True):
            loglikelihood, greedy = response[0]
            found[(sample["doc_id"], arguments[1])] = (float(loglikelihood), bool(greedy))
    return found


@pytest.fixture(scope="module")
def lm_eval_hf_reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[Path, Any]]:
    """The choice task through lm-eval's own ``hf`` model on the tiny checkpoint (float32)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        directory = tmp_path_factory.mktemp("lm-eval-choices")
        write_choice_task(directory)
        args = {"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"}
        yield directory, run_choice_task(directory, "hf", args)


@pytest.mark.timeout(600)
def test_score_equals_lm_evals_hf_loglikelihoods(
    hf_backend: Any, lm_eval_hf_reference: tuple[Path, Any]
) -> None:
    _, results = lm_eval_hf_reference
    reference = per_request(results)
    assert len(reference) == sum(len(q["choices"]) for q in QUESTIONS)
    for sample in results["samples"][CHOICE_TASK]:
        for context, continuation in sample["arguments"]:
            ours = hf_backend.score_text(continuation, context=context)
            theirs, greedy = reference[(sample["doc_id"], continuation)]
            assert ours.logprob == pytest.approx(theirs, abs=1e-4)
            assert ours.greedy == greedy


@pytest.mark.timeout(600)
def test_lm_eval_local_completions_through_serve_matches_its_hf_model(
    hf_served: Served,
    tiny_model_dir: Path,
    lm_eval_hf_reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    directory, reference_results = lm_eval_hf_reference
    served = run_choice_task(
        directory,
        "local-completions",
        {
            "model": hf_served.model,
            "base_url": f"{hf_served.base_url}/completions",
            "tokenizer": str(tiny_model_dir),
            "tokenizer_backend": "huggingface",
        },
    )
    ours, reference = per_request(served), per_request(reference_results)
    assert ours.keys() == reference.keys()
    for key, (loglikelihood, greedy) in reference.items():
        assert ours[key][0] == pytest.approx(loglikelihood, abs=1e-4)
        assert ours[key][1] == greedy
    ours_metrics = served["results"][CHOICE_TASK]
    theirs_metrics = reference_results["results"][CHOICE_TASK]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours_metrics[metric] == theirs_metrics[metric]
