"""The examples and the README's commands are executed, as a user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILN_HOME": str(cwd / ".kiln")}
    completed = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def accuracy(output: str) -> float:
    match = re.search(r"test accuracy ([0-9.]+)", output)
    assert match, output
    return float(match.group(1))


@pytest.mark.parametrize(("name", "args", "minimum"), [
    ("lstm_sequence.py", ["--epochs", "4"], 0.9),
    ("transformer_encoder.py", ["--epochs", "3"], 0.9),
])
def test_sequence_examples_train(tmp_path, name, args, minimum):
    assert accuracy(run_example(name, *args, cwd=tmp_path)) >= minimum


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block[0].startswith("bash scripts/quickstart.sh") and block[1].startswith("bash scripts/test.sh")
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("bash scripts/test.sh -q")
    for script in ("quickstart.sh", "test.sh", "setup.sh"):
        completed = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True,
                                   check=False)
        assert completed.returncode == 0, completed.stderr


def test_main_job_trains_registers_serves_and_queries(tmp_path):
    output = run_example("digits.py", "--epochs", "6", cwd=tmp_path)
    assert accuracy(output) >= 0.95
    assert "registered digits@1" in output and "production" in output
    match = re.search(r"served digits@production: (\d+) test images over HTTP, accuracy ([0-9.]+), agreement with "
                      r"the in-process model ([0-9.]+)", output)
    assert match, output
    assert int(match.group(1)) == 359 and float(match.group(2)) >= 0.95 and float(match.group(3)) == 1.0
    assert (tmp_path / ".kiln" / "kiln.db").exists()
