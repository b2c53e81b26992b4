"""outputs.jsonl: whole-line appends, torn trailing lines cut off, damaged files refused."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qwen_backends.errors import ConfigurationError, DiskFullError
from qwen_backends.evaluation import store
from qwen_backends.evaluation.store import LOCK_FILE, OutputsFile, RunLock, write_json_atomic

CAPTURE: dict[str, Any] = {"capture_output": True, "text": True, "check": True}


def test_append_then_recover(tmp_path: Path) -> None:
    outputs = OutputsFile(tmp_path / "run" / "outputs.jsonl")
    assert outputs.recover() == []
    outputs.append({"id": "a", "text": "première ligne\nwith a newline"})
    outputs.append({"id": "b", "text": "x"})
    outputs.close()
    outputs.close()
    raw = outputs.path.read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    again = OutputsFile(outputs.path)
    assert [r["id"] for r in again.recover()] == ["a", "b"]
    assert again.recover()[0]["text"] == "première ligne\nwith a newline"
    assert again.dropped_bytes == 0


def test_torn_trailing_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "outputs.jsonl"
    whole = json.dumps({"id": "a", "text": "done"}) + "\n"
    torn = json.dumps({"id": "b", "text": "cut short"})[:12]
    path.write_text(whole + torn, encoding="utf-8")

    peek = OutputsFile(path)
    assert [r["id"] for r in peek.recover(repair=False)] == ["a"]
    assert peek.dropped_bytes == len(torn)
    assert path.read_text(encoding="utf-8") == whole + torn, "repair=False must not write"

    outputs = OutputsFile(path)
    assert [r["id"] for r in outputs.recover()] == ["a"]
    assert path.read_text(encoding="utf-8") == whole
    outputs.append({"id": "b", "text": "again"})
    outputs.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"id": "a"}\nnot json\n{"id": "c"}\n', "outputs.jsonl:2: not an output record"),
        ('{"id": "a"}\n{"text": "no id"}\n', "outputs.jsonl:2: not an output record"),
        ('{"id": "a"}\n{"id": "a"}\n', "outputs.jsonl:2: a second record for id 'a'"),
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "outputs.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError, match="run_name") as info:
        OutputsFile(path).recover()
    assert fragment in str(info.value)


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2, "text": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2, "text": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# -- one writer per run, a full disk (issue 13) ---------------------------------------------


def _full_disk_after(limit: int) -> Any:
    """An ``os.write`` that writes at most ``limit`` more bytes, then fails with ENOSPC."""
    real_write = os.write
    budget = [limit]

    def write(fd: int, data: Any) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = real_write(fd, bytes(data)[: budget[0]])
        budget[0] -= written
        return written

    return write


def test_full_disk_leaves_only_whole_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = OutputsFile(tmp_path / "outputs.jsonl")
    outputs.append({"id": "a", "text": "saved"})
    monkeypatch.setattr(store.os, "write", _full_disk_after(10))
    with pytest.raises(
        DiskFullError, match="the disk is full: cannot write outputs file"
    ) as caught:
        outputs.append({"id": "b", "text": "this record does not fit"})
    assert "run the same command again to resume" in str(caught.value)
    monkeypatch.undo()
    outputs.close()
    # The torn half-record was rolled back: resuming needs no repair and keeps "a".
    again = OutputsFile(outputs.path)
    assert [r["id"] for r in again.recover()] == ["a"]
    assert again.dropped_bytes == 0
    again.append({"id": "b", "text": "now it fits"})
    assert [r["id"] for r in again.recover()] == ["a", "b"]


def test_full_disk_keeps_the_old_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"old": True})

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match="disk is full"):
        write_json_atomic(target, {"new": True})
    monkeypatch.undo()
    assert json.loads(target.read_text(encoding="utf-8")) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp file left


def test_run_lock_refuses_a_second_writer_naming_the_owner(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"{os.getpid()} on ")
        with pytest.raises(ConfigurationError) as caught, RunLock(tmp_path):
            pass
        message = str(caught.value)
        assert f"is in use by process {os.getpid()} on" in message
        assert "evaluation.run_name" in message and "\n" not in message
    assert not (tmp_path / LOCK_FILE).exists()  # released and removed
    with RunLock(tmp_path):  # free again
        pass


def test_run_lock_of_another_live_process(tmp_path: Path) -> None:
    code = (
        "import sys, time; from qwen_backends.evaluation.store import RunLock\n"
        f"lock = RunLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True)\n"
        "sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(ConfigurationError, match=f"in use by process {holder.pid} on"):
                RunLock(tmp_path).acquire()
        finally:
            holder.kill()
            holder.wait(timeout=30)
    # Killed without releasing: its lock file stays, but the lock died with it.
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"{holder.pid} ")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"{os.getpid()} ")


def test_stale_lock_file_from_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **CAPTURE)
    (tmp_path / LOCK_FILE).write_text(f"{dead.stdout.strip()} on elsewhere\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"{os.getpid()} ")
