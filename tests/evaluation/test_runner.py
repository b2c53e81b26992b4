"""The runner end to end on the tiny checkpoint through the hf backend: files, records, resume."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eval_data import PROMPTS, SAMPLING, write_prompts

from qwen_backends.backends.base import ModelBackend
from qwen_backends.chat import render_prompt, render_prompt_ids
from qwen_backends.errors import ConfigurationError, DiskFullError, ModelNotFoundError
from qwen_backends.evaluation import EvaluationResult, run_evaluation
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings

RECORD_KEYS = {
    "id",
    "template_mode",
    "text",
    "finish_reason",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "seconds",
    "backend",
    "model",
    "sampling",
    "expected",
    "exact_match",
    "contains_match",
    "messages_sha256",
    "prompt_sha256",
}


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_run_writes_records_summary_and_manifest(
    baseline_run: EvaluationResult, tiny_model_dir: Path, offline_tokenizer
) -> None:
    result = baseline_run
    sampling = SamplingParams(**SAMPLING)

    assert result.run_dir.name == "baseline"
    assert sorted(p.name for p in result.run_dir.iterdir()) == [
        "outputs.jsonl",
        "run.json",
        "summary.json",
    ]
    assert (result.generated, result.skipped, result.dropped_partial) == (4, 0, False)
    records = read_records(result.outputs_path)
    assert [r["id"] for r in records] == [row["id"] for row in PROMPTS]
    for record, row in zip(records, PROMPTS, strict=True):
        assert set(record) == RECORD_KEYS
        assert record["backend"] == "hf"
        assert record["model"] == str(tiny_model_dir)
        assert record["sampling"] == sampling.model_dump(mode="json")
        assert record["finish_reason"] in ("stop", "length")
        assert 1 <= record["completion_tokens"] <= SAMPLING["max_new_tokens"]
        assert "<think>" not in record["text"] and "</think>" not in record["text"]
        assert record["seconds"] > 0
        # The rendered non-thinking prompt, exactly as Qwen3-4B's tokenizer renders it.
        prompt = render_prompt(offline_tokenizer, row["messages"])
        assert "note it" not in prompt
        assert record["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
        assert record["prompt_tokens"] == len(render_prompt_ids(offline_tokenizer, row["messages"]))
        if "expected" in row:
            expected = row["expected"]
            assert record["expected"] == (expected if isinstance(expected, list) else [expected])
            assert isinstance(record["exact_match"], bool)
            assert isinstance(record["contains_match"], bool)
        else:
            assert record["expected"] is record["exact_match"] is record["contains_match"] is None

    summary = json.loads(result.summary_path.read_text(encoding="utf-8"))
    assert summary == result.summary
    assert summary["backend"] == "hf" and summary["model"] == str(tiny_model_dir)
    assert summary["completed"] == summary["total_prompts"] == 4
    assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    assert summary["tokens_per_second"] > 0
    assert summary["scored"] == 2
    assert summary["latency_seconds"]["p50"] <= summary["latency_seconds"]["p99"]
    manifest = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    assert manifest["sampling"]["seed"] == SAMPLING["seed"]
    assert manifest["prompts_file"] == str(result.run_dir.parent.parent / "prompts.jsonl")


def test_rerun_skips_finished_prompts_without_building_a_backend(
    make_settings: Callable[..., Settings],
    hf_backend: ModelBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(limit=2)
    partial = run_evaluation(settings, backend=hf_backend, progress=False)
    assert [r["id"] for r in partial.records] == ["add", "capital"]
    assert partial.summary["completed"] == partial.summary["total_prompts"] == 2

    settings = make_settings()
    rest = run_evaluation(settings, backend=hf_backend, progress=False)
    assert (rest.generated, rest.skipped) == (2, 2)
    before = rest.outputs_path.read_bytes()
    assert [r["id"] for r in read_records(rest.outputs_path)] == [r["id"] for r in PROMPTS]

    def no_backend(*args: object, **kwargs: object) -> ModelBackend:
        raise AssertionError("a finished run must not build a backend")

    monkeypatch.setattr("qwen_backends.factory.create_backend", no_backend)
    again = run_evaluation(settings, progress=False)
    assert (again.generated, again.skipped) == (0, 4)
    assert again.outputs_path.read_bytes() == before
    assert again.summary["completed"] == 4


def test_resume_refuses_other_settings_or_edited_prompts(
    make_settings: Callable[..., Settings], hf_backend: ModelBackend, prompt_file: Path
) -> None:
    first = run_evaluation(make_settings(limit=1), backend=hf_backend, progress=False)
    hotter = make_settings({"temperature": 0.2})
    with pytest.raises(ConfigurationError, match=r"sampling\.temperature was 0\.7, now 0\.2"):
        run_evaluation(hotter, backend=hf_backend, progress=False)
    (first.run_dir / "run.json").unlink()  # the records alone still identify the run
    with pytest.raises(ConfigurationError, match=r"sampling\.temperature was 0\.7, now 0\.2"):
        run_evaluation(hotter, backend=hf_backend, progress=False)

    edited = [dict(PROMPTS[0], messages="What is 3 + 3?"), *PROMPTS[1:]]
    write_prompts(prompt_file, edited)
    with pytest.raises(ConfigurationError, match=r"prompt 'add' \(.*prompts\.jsonl:1\) changed"):
        run_evaluation(make_settings(), backend=hf_backend, progress=False)

    write_prompts(prompt_file, PROMPTS[1:])
    with pytest.raises(ConfigurationError, match="no longer contains"):
        run_evaluation(make_settings(), backend=hf_backend, progress=False)


def test_a_run_that_answered_nothing_takes_new_settings(
    make_settings: Callable[..., Settings], hf_backend: ModelBackend, tmp_path: Path
) -> None:
    typo = make_settings().replace(model=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        run_evaluation(typo, backend=None, progress=False)
    run_dir = typo.evaluation.output_dir / "hf"
    assert json.loads((run_dir / "summary.json").read_text())["completed"] == 0

    fixed = run_evaluation(make_settings(limit=1), backend=hf_backend, progress=False)
    assert fixed.run_dir == run_dir and fixed.generated == 1
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["model"] == hf_backend.model_name


def test_backend_must_match_the_settings(
    make_settings: Callable[..., Settings], hf_backend: ModelBackend
) -> None:
    settings = make_settings().replace(backend="vllm")
    with pytest.raises(ConfigurationError, match=r"backend passed \(hf\)"):
        run_evaluation(settings, backend=hf_backend, progress=False)


def test_resume_after_a_kill_mid_run(
    tmp_path: Path, tiny_model_dir: Path, hf_backend: ModelBackend
) -> None:
    total = 8
    rows = [{"id": f"p{i:02d}", "messages": f"Say the number {i}."} for i in range(total)]
    prompts = write_prompts(tmp_path / "many.jsonl", rows)
    config = tmp_path / "eval.yaml"
    config.write_text(
        json.dumps(
            {
                "backend": "hf",
                "model": {"name": str(tiny_model_dir)},
                "hf": {"device": "cpu"},
                "sampling": {**SAMPLING, "max_new_tokens": 6},
                "evaluation": {"prompts": str(prompts), "output_dir": str(tmp_path / "runs")},
            }
        ),
        encoding="utf-8",
    )
    outputs = tmp_path / "runs" / "hf" / "outputs.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-m", "qwen_backends.cli", "eval", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "QWEN_CONFIG": ""},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if outputs.is_file() and outputs.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, stderr.decode()
    done_before = read_records(outputs)
    assert 2 <= len(done_before) < total, "the kill should land mid-run"
    # A write cut short by the kill: half a record, no newline.
    torn = json.dumps({"id": f"p{len(done_before):02d}", "text": "half"})[:15]
    with outputs.open("a", encoding="utf-8") as handle:
        handle.write(torn)

    result = run_evaluation(Settings.from_file(config), backend=hf_backend, progress=False)

    assert result.dropped_partial
    assert (result.skipped, result.generated) == (len(done_before), total - len(done_before))
    records = read_records(outputs)
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    assert records[: len(done_before)] == done_before
    assert result.summary["completed"] == total


# -- faults: a full disk, a damaged run.json, two writers, a bad output path (issue 13) --------


def test_full_disk_mid_run_keeps_finished_records_and_resumes(
    make_settings: Callable[..., Settings],
    hf_backend: ModelBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qwen_backends.evaluation import store

    settings = make_settings(run_name="full-disk")
    real_write = os.write
    calls = [0]

    def write(fd: int, data: Any) -> int:
        if bytes(data).endswith(f"{os.getpid()} on {socket.gethostname()}\n".encode()):
            return real_write(fd, data)  # the lock file's owner line
        calls[0] += 1
        if calls[0] == 3:  # the third record: half of it lands, then the disk is full
            return real_write(fd, bytes(data)[: len(data) // 2])
        if calls[0] > 3:  # the rest of that record
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store.os, "write", write)
    with pytest.raises(DiskFullError, match="the disk is full") as caught:
        run_evaluation(settings, backend=hf_backend, progress=False)
    assert "\n" not in str(caught.value) and "resume" in str(caught.value)
    monkeypatch.undo()
    outputs = settings.evaluation.output_dir / "full-disk" / "outputs.jsonl"
    assert [r["id"] for r in read_records(outputs)] == ["add", "capital"]  # no torn line

    result = run_evaluation(settings, backend=hf_backend, progress=False)
    assert (result.skipped, result.generated, result.dropped_partial) == (2, 2, False)
    assert [r["id"] for r in read_records(outputs)] == [p["id"] for p in PROMPTS]
    assert not (result.run_dir / ".lock").exists()


def test_damaged_run_json_with_intact_records_is_rewritten(
    make_settings: Callable[..., Settings], hf_backend: ModelBackend
) -> None:
    settings = make_settings(run_name="damaged", limit=2)
    first = run_evaluation(settings, backend=hf_backend, progress=False)
    manifest = first.run_dir / "run.json"
    manifest.write_text('{"backend": "hf", "mod', encoding="utf-8")  # truncated

    result = run_evaluation(
        settings.replace(evaluation={"limit": None}), backend=hf_backend, progress=False
    )
    assert result.repaired_manifest
    assert (result.skipped, result.generated) == (2, 2)
    assert json.loads(manifest.read_text(encoding="utf-8"))["backend"] == "hf"
    # Damaged and made with other settings: refused by the records, without "delete the run".
    manifest.write_text("[not json", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="holds a run made with other settings"):
        run_evaluation(settings.replace(sampling={"seed": 99}), backend=hf_backend, progress=False)


def test_a_run_in_use_is_refused_in_one_line(
    make_settings: Callable[..., Settings], hf_backend: ModelBackend
) -> None:
    from qwen_backends.evaluation.store import RunLock

    settings = make_settings(run_name="busy")
    run_dir = settings.evaluation.output_dir / "busy"
    run_dir.mkdir(parents=True)
    with RunLock(run_dir), pytest.raises(ConfigurationError, match="is in use by process"):
        run_evaluation(settings, backend=hf_backend, progress=False)
    assert not (run_dir / "outputs.jsonl").exists()


def test_output_dir_that_is_a_file(
    make_settings: Callable[..., Settings], hf_backend: ModelBackend, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="is a file, not a directory for evaluation"):
        run_evaluation(make_settings(output_dir=blocker), backend=hf_backend, progress=False)
    with pytest.raises(ConfigurationError, match=r"cannot create .*blocker/runs"):
        run_evaluation(
            make_settings(output_dir=blocker / "runs"), backend=hf_backend, progress=False
        )


# -- stopping and resuming (issue 24) --------------------------------------------------------------


def test_a_refused_prompt_is_named_with_how_to_resume(
    make_settings: Callable[..., Settings],
    hf_backend: ModelBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qwen_backends.errors import ContextLengthError

    answer = hf_backend.generate

    def refuse_italy(messages: Any, sampling: Any = None, **options: Any) -> Any:
        if "Italy" in json.dumps(messages):  # as a server answering 400 would
            raise ContextLengthError("the prompt does not fit the context", status_code=400)
        return answer(messages, sampling, **options)

    settings = make_settings(run_name="refused")
    monkeypatch.setattr(hf_backend, "generate", refuse_italy)
    with pytest.raises(ContextLengthError) as caught:
        run_evaluation(settings, backend=hf_backend, progress=False)
    message = str(caught.value)
    assert message.startswith("prompt 'capital' stopped the run: the prompt does not fit the")
    assert "1 finished prompt(s) are saved in" in message and "resume" in message
    assert caught.value.status_code == 400 and "\n" not in message
    monkeypatch.undo()
    resumed = run_evaluation(settings, backend=hf_backend, progress=False)
    assert (resumed.skipped, resumed.generated) == (1, 3)


def test_resume_accepts_the_same_model_folder_by_a_relative_path(
    make_settings: Callable[..., Settings],
    hf_backend: ModelBackend,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = run_evaluation(make_settings(limit=1), backend=hf_backend, progress=False)
    monkeypatch.chdir(tiny_model_dir)
    relative = make_settings().replace(model=os.path.join("..", tiny_model_dir.name))
    assert relative.model_name != first.summary["model"]
    resumed = run_evaluation(relative, backend=hf_backend, progress=False)
    assert (resumed.skipped, resumed.generated) == (1, 3)
    other = make_settings().replace(model=str(tiny_model_dir.parent))  # another folder
    with pytest.raises(ConfigurationError, match="model was"):
        run_evaluation(other, backend=hf_backend, progress=False)


def test_few_shot_prompts_reuse_the_shared_prefix_and_the_run_says_how_much(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """In file order, every prompt after the first finds the shared few-shot prefix in the prompt
    cache (the previous call's entry holds it); answers equal those of a run without a cache."""
    from qwen_backends.factory import create_backend

    shots = [
        {"role": "system", "content": "Answer with one word. " * 40},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Colour of grass?"},
        {"role": "assistant", "content": "Green."},
    ]
    rows = [
        {"id": f"q{i}", "messages": [*shots, {"role": "user", "content": question}]}
        for i, question in enumerate(["Colour of snow?", "Colour of coal?", "Colour of blood?"])
    ]
    prompts = write_prompts(tmp_path / "few-shot.jsonl", rows)
    runs = {}
    for name, budget in (("cached", 64), ("uncached", 0)):
        evaluation = {"prompts": prompts, "output_dir": tmp_path / "runs", "run_name": name}
        settings = Settings(
            backend="hf",
            model=str(tiny_model_dir),
            hf={"device": "cpu", "prompt_cache_mb": budget},
            sampling={**SAMPLING, "temperature": 0.0},
            evaluation=evaluation,
        )
        with create_backend(settings) as backend:
            runs[name] = run_evaluation(settings, backend=backend, progress=False)
    cached = read_records(runs["cached"].outputs_path)
    uncached = read_records(runs["uncached"].outputs_path)
    assert [r["text"] for r in cached] == [r["text"] for r in uncached]
    assert [r["cached_tokens"] for r in uncached] == [0, 0, 0]
    assert cached[0]["cached_tokens"] == 0
    assert all(r["cached_tokens"] > 150 for r in cached[1:])  # the shots, ~170 tokens
    assert all(r["cached_tokens"] < r["prompt_tokens"] for r in cached)
    assert runs["cached"].summary["cached_prompt_tokens"] == sum(r["cached_tokens"] for r in cached)
    assert runs["uncached"].summary["cached_prompt_tokens"] == 0
    from qwen_backends.evaluation.metrics import format_summary

    total = runs["cached"].summary["cached_prompt_tokens"]
    assert f"({total} from the prompt cache)" in format_summary(runs["cached"].summary)
    assert "prompt cache" not in format_summary(runs["uncached"].summary)
