"""benchmarks/kernels.py keeps working: a tiny smoke run of every op, and a clear refusal without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "kernels.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=environment
    )


def test_smoke_run_measures_every_op() -> None:
    result = _run("--smoke")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "median" not in line]
    ops = {row.split("|")[1].strip() for row in rows}
    assert ops == {"cross_entropy", "fused_linear_cross_entropy", "rms_norm", "layer_norm", "swiglu"}
    assert {row.split("|")[3].strip() for row in rows} == {"torch", "kiln"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present, so the benchmark runs")
def test_refuses_without_cuda() -> None:
    result = _run("--ops", "swiglu")
    assert result.returncode == 2
    assert "needs a CUDA device" in result.stderr and "--cpu" in result.stderr
