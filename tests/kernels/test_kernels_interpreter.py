"""Runs the Triton kernel checks in tests/kernels/interpreter under the Triton interpreter, on CPU tensors.

Triton chooses between interpreting and compiling when a kernel is defined, reading TRITON_INTERPRET from the
environment, and this process has usually imported torch and kiln long before. So each check file runs in a fresh
`python -m pytest` with TRITON_INTERPRET=1 set from the start; that holds whatever else a full `pytest tests/` run
imported first. In this process the files themselves skip (or, on a CUDA machine, run the compiled kernels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETER_TESTS = Path(__file__).parent / "interpreter"
REPOSITORY = Path(__file__).parents[2]


@pytest.mark.parametrize("check", sorted(path.name for path in INTERPRETER_TESTS.glob("test_interp_*.py")))
def test_triton_kernels_under_interpreter(check: str) -> None:
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is already set: tests/kernels/interpreter runs in this process")
    # One thread: the interpreter is single-threaded numpy, and the machine is shared.
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETER_TESTS / check)]
    result = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, (
        f"{check} failed under the Triton interpreter:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    )
    assert "passed" in summary and "skipped" not in summary, f"{check} did not run its checks: {summary}"
