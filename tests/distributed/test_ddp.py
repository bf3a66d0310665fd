"""The same script on one process or several ranks (torchrun, gloo on CPU): equivalence, resume, failure."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

JOB = Path(__file__).with_name("_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(args: list[str], *, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "--max-restarts=0", str(JOB), *args]


def _run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def _result(completed: subprocess.CompletedProcess[str]) -> dict:
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads([line for line in completed.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize(
    ("model", "flags"),
    [("mlp", []), ("bn", ["--sync-batchnorm"]), ("mlp", ["--strategy", "fsdp", "--optimizer", "adam"])],
    ids=["ddp-mlp", "ddp-batchnorm", "fsdp-mlp"],
)
def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(tmp_path, model, flags):
    single_flags = [f for f in flags if f not in ("--strategy", "fsdp")]  # the same job on one process
    single = _result(_run([sys.executable, str(JOB), "--model", model, "--batch-size", "32",
                           "--out", str(tmp_path / "one.safetensors"), *single_flags]))
    double = _result(_run(_torchrun(["--model", model, "--batch-size", "16", "--out",
                                     str(tmp_path / "two.safetensors"), *flags])))
    assert single["world"] == 1 and double["world"] == 2
    assert single["global_batch"] == double["global_batch"] == 32
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    for key in one:  # same data, same order; only float summation order differs
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    for key in ("loss", "val_loss", "val_accuracy"):  # metrics and losses reduced over ranks
        assert double["history"][key] == pytest.approx(single["history"][key], rel=1e-4, abs=1e-5), key


def test_without_sync_batchnorm_two_ranks_differ(tmp_path):
    _result(_run([sys.executable, str(JOB), "--model", "bn", "--batch-size", "32", "--out",
                  str(tmp_path / "one.safetensors")]))
    _result(_run(_torchrun(["--model", "bn", "--batch-size", "16", "--out", str(tmp_path / "two.safetensors")])))
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert not torch.allclose(one["0.weight"], two["0.weight"], rtol=1e-4, atol=1e-5)  # the check above can fail


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its ranks in sessions of their own, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigkill_of_the_whole_job_then_resume_is_exact(tmp_path, strategy):
    common = ["--batch-size", "16", "--epochs", "2", "--strategy", strategy, "--optimizer", "adam"]
    reference = _result(_run(_torchrun([*common, "--step-log", str(tmp_path / "ref.jsonl"), "--out",
                                        str(tmp_path / "ref.safetensors")])))
    expected = [(r["step"], r["loss"]) for r in _read_log(tmp_path / "ref.jsonl")]
    assert len(expected) == 32 and reference["world"] == 2

    log, output = tmp_path / "run.jsonl", tmp_path / "output.txt"
    job = _torchrun([*common, "--step-log", str(log), "--out", str(tmp_path / "run.safetensors"), "--checkpoint",
                     str(tmp_path / "ckpt")])
    kill_at = random.Random().randint(3, 28)
    with output.open("ab") as handle:
        process = subprocess.Popen(job, env=ENV, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while len(_read_log(log)) < kill_at and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # polling the log the job appends to; the kill moment itself is what is random
    for pid in [process.pid, *_descendants(process.pid)]:  # torchrun and both ranks, as a node failure would
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=60)
    before = _read_log(log)
    assert len(before) < 32, "the job finished before it was killed"
    resumed = _run(job)
    _result(resumed)
    after = _read_log(log)[len(before):]
    first = after[0]["step"]
    assert first <= len(before) + 1
    assert [(r["step"], r["loss"]) for r in before[: first - 1] + after] == expected
    assert (tmp_path / "run.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    started = time.monotonic()
    completed = _run(_torchrun(["--batch-size", "16", "--epochs", "50", "--fail-rank", "1"]), timeout=120)
    assert completed.returncode != 0
    assert "planted failure on rank 1" in completed.stdout + completed.stderr
    assert time.monotonic() - started < 120


def test_ddp_strategy_without_torchrun_is_a_clear_error():
    completed = _run([sys.executable, str(JOB), "--batch-size", "16", "--strategy", "ddp"])
    assert completed.returncode != 0
    assert "needs several ranks" in completed.stderr and "torchrun --nproc-per-node" in completed.stderr


def test_epoch_checkpoint_from_two_fsdp_ranks_resumes_on_one_process(tmp_path):
    checkpoint = str(tmp_path / "ckpt")
    first = _result(_run(_torchrun(["--batch-size", "16", "--epochs", "1", "--strategy", "fsdp", "--optimizer",
                                    "adam", "--checkpoint", checkpoint, "--checkpoint-every", "epoch"])))
    assert first["world"] == 2 and len(first["history"]["loss"]) == 1
    second = _result(_run([sys.executable, str(JOB), "--batch-size", "16", "--epochs", "2", "--optimizer", "adam",
                           "--checkpoint", checkpoint, "--checkpoint-every", "epoch"]))
    assert second["world"] == 1
    assert second["history"]["loss"][0] == first["history"]["loss"][0]  # epoch 0 came from the checkpoint
    assert len(second["history"]["loss"]) == 2
