"""``qwen-backends eval`` and ``eval compare`` through a subprocess, on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_runner import assert_one_line_error, cli

from qwen_backends.cli import main

PROMPTS = [{"id": f"q{i:02d}", "messages": f"Count to {i}."} for i in range(6)]
PROMPTS[0]["expected"] = "1"


def write_config(path: Path, **sections: object) -> Path:
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS), encoding="utf-8")
    return write_config(
        tmp_path / "eval.yaml",
        backend="vllm",  # replaced by --backend hf below
        model={"name": str(tiny_model_dir)},
        hf={"device": "cpu"},
        sampling={"max_new_tokens": 4, "seed": 1},
        evaluation={"prompts": str(prompts), "output_dir": str(tmp_path / "from-yaml")},
    )


def test_interrupt_then_resume_then_nothing_left(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**os.environ, "QWEN_EVALUATION__OUTPUT_DIR": str(tmp_path / "runs")}
    outputs = tmp_path / "runs" / "hf" / "outputs.jsonl"
    args = [sys.executable, "-m", "qwen_backends.cli", "eval", "--config", str(config)]
    child = subprocess.Popen(
        [*args, "--backend", "hf"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if outputs.is_file() and outputs.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
    finally:
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "run the same command again to resume" in stderr
    done = len(outputs.read_text().splitlines())
    assert 1 <= done < len(PROMPTS)

    # Resume in this process (saves starting another interpreter with torch).
    monkeypatch.setenv("QWEN_EVALUATION__OUTPUT_DIR", str(tmp_path / "runs"))
    argv = ["eval", "--config", str(config), "--backend", "hf", "--no-progress"]
    assert main(argv) == 0
    resumed = capsys.readouterr().out
    assert f"(resumed: {done} already done)" in resumed
    assert f"{len(PROMPTS)} / {len(PROMPTS)}" in resumed
    for label in ("tokens/s", "latency p50 / p90 / p99", "exact match", "contains match"):
        assert label in resumed
    assert f"outputs: {outputs}" in resumed
    ids = [json.loads(line)["id"] for line in outputs.read_text().splitlines()]
    assert ids == [row["id"] for row in PROMPTS]
    summary = json.loads((outputs.parent / "summary.json").read_text())
    assert summary["completed"] == len(PROMPTS) and summary["backend"] == "hf"
    assert summary["scored"] == 1
    assert not (tmp_path / "from-yaml").exists(), "the environment overrides the YAML"

    assert main(argv) == 0
    assert f"(resumed: {len(PROMPTS)} already done)" in capsys.readouterr().out
    assert [json.loads(line)["id"] for line in outputs.read_text().splitlines()] == ids


def test_config_mistakes_are_one_line_errors(tmp_path: Path, config: Path) -> None:
    unknown = write_config(tmp_path / "unknown.yaml", evaluation={"prompt_file": "x.jsonl"})
    assert_one_line_error(
        cli("eval", "--config", str(unknown)), "evaluation.prompt_file: is not a known setting"
    )

    missing = write_config(tmp_path / "missing.yaml", evaluation={"prompts": "nowhere.jsonl"})
    assert_one_line_error(
        cli("eval", "--config", str(missing)), "prompt set nowhere.jsonl does not exist"
    )

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": "hi"}\n\n{"id": "b", "messages": [}\n')
    assert_one_line_error(
        cli("eval", "--config", str(config), "--prompts", str(bad)),
        f"{bad}:3: not valid JSON",
    )

    assert_one_line_error(
        cli("eval", "--config", str(config), "--temperature", "5"),
        "temperature=5.0 is out of range",
    )
    assert_one_line_error(cli("eval", "--config", str(tmp_path / "no.yaml")), "does not exist")
    assert_one_line_error(
        cli("eval", "compare", str(tmp_path), str(tmp_path)), "is not an evaluation run"
    )


def test_compare_prints_or_writes_the_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    from qwen_backends.evaluation import run_evaluation
    from qwen_backends.factory import create_backend
    from qwen_backends.settings import Settings

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS[:2]), encoding="utf-8")
    runs = {}
    settings = Settings(
        backend="hf",
        model=str(tiny_model_dir),
        hf={"device": "cpu"},
        sampling={"max_new_tokens": 2, "seed": 0},
        evaluation={"prompts": prompts, "output_dir": tmp_path / "runs"},
    )
    with create_backend(settings) as backend:
        for name, temperature in (("warm", 0.7), ("greedy", 0.0)):
            run_settings = settings.replace(
                evaluation={"run_name": name}, sampling={"temperature": temperature}
            )
            runs[name] = run_evaluation(run_settings, backend=backend, progress=False).run_dir

    printed = cli("eval", "compare", str(runs["warm"]), str(runs["greedy"]))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("# Evaluation comparison")
    assert "| sampling.temperature | 0.7 | 0.0 |" in printed.stdout
    assert "**identical**: all 2 shared prompts match" in printed.stdout

    report = tmp_path / "reports" / "cmp.md"
    written = cli("eval", "compare", str(runs["warm"]), str(runs["greedy"]), "-o", str(report))
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == f"report written to {report}; prompt parity: identical"
    assert report.read_text(encoding="utf-8") == printed.stdout
