"""A custom train_step on two ranks (torchrun, gloo on CPU) trains as one process with the two ranks' batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

JOB = Path(__file__).with_name("_custom_step_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _result(command: list[str]) -> dict:
    completed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads([line for line in completed.stdout.splitlines() if line.startswith("{")][-1])


def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(tmp_path):
    # TBPTT with two optimizers: each rank reads its own 8 of the 16 streams (stream_batches knows the world size),
    # and the step averages gradients over the ranks before each optimizer steps.
    common = ["--no-dropout", "--epochs", "2", "--step-log", str(tmp_path / "log.jsonl")]
    single = _result([sys.executable, str(JOB), "--batch-size", "16", "--out", str(tmp_path / "one.st"), *common])
    double = _result(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "--max-restarts=0",
            str(JOB),
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "two.st"),
            *common,
        ]
    )
    assert single["world"] == 1 and double["world"] == 2
    one, two = load_file(tmp_path / "one.st"), load_file(tmp_path / "two.st")
    assert one.keys() == two.keys()
    for key in one:  # the same rows and order; only float summation order differs
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    for key in ("loss", "perplexity", "lr_body", "lr_head"):  # what the step returned, averaged over the ranks
        assert double["history"][key] == pytest.approx(single["history"][key], rel=1e-4, abs=1e-6), key
    assert single["history"]["loss"][-1] < single["history"]["loss"][0]
