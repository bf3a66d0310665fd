"""Runs the Triton kernel checks in tests/kernels/interpreter under the Triton interpreter, on CPU tensors.

Triton chooses between interpreting and compiling when a kernel is defined, reading TRITON_INTERPRET from the
environment, and by the time this module runs torch has imported triton (torch._dynamo does) and kiln may have defined
its kernels. So the checks run in one fresh `python -m pytest` with TRITON_INTERPRET=1 set from the start: correct
whatever a full `pytest tests/` run imported first, and one interpreter start-up instead of one per file. In this
process the files are not collected (or, on a CUDA machine, run on the compiled kernels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETER_TESTS = Path(__file__).parent / "interpreter"
REPOSITORY = Path(__file__).parents[2]


def test_triton_kernels_under_interpreter() -> None:
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is already set: tests/kernels/interpreter runs in this process")
    # One thread: the interpreter is single-threaded numpy, and the machine is shared.
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(INTERPRETER_TESTS)]
    result = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)
    report = f"{result.stdout[-8000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 0, f"Triton kernels failed under the interpreter:\n{report}"
    summary = result.stdout.strip().splitlines()[-1]
    files = sorted(INTERPRETER_TESTS.glob("test_interp_*.py"))
    assert len(files) == 5 and "passed" in summary and "skipped" not in summary, f"checks did not all run:\n{report}"
