"""examples/digits_distributed.py: the digits CNN on two torchrun ranks (gloo, CPU) matches one process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_examples import ROOT

pytestmark = pytest.mark.distributed

SCRIPT = ROOT / "examples" / "digits_distributed.py"


def run(command: list[str], tmp_path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILN_HOME": str(tmp_path / ".kiln")}
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                               check=False)  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_two_ranks_reach_the_accuracy_of_one_process(tmp_path):
    one = run([sys.executable, str(SCRIPT), "--epochs", "6", "--no-register"], tmp_path)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "0", str(SCRIPT), "--epochs", "6"], tmp_path)  # fmt: skip
    pattern = r"ranks (\d), global batch 64: test accuracy ([0-9.]+)"
    [(ranks_one, accuracy_one)], [(ranks_two, accuracy_two)] = re.findall(pattern, one), re.findall(pattern, two)
    assert (ranks_one, ranks_two) == ("1", "2")  # and rank 1 printed nothing
    assert float(accuracy_one) >= 0.93 and abs(float(accuracy_two) - float(accuracy_one)) <= 0.02
    assert two.count("registered digits-ddp@1") == 1  # rank 0 alone registers
