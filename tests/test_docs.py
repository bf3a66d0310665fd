"""docs/tutorial.md and the README's Python snippet are executed as a user would run them.

The tutorial's ```python blocks run in order as one script in a fresh process (an empty directory, its own
KILN_HOME); its ```bash blocks are then run against the store that script filled: the `kiln` commands as they are
written, and `kiln serve` queried with the request bodies of its curl lines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
README = ROOT / "README.md"
PORT = "8000"  # the port the tutorial serves on; the tests use a free one instead


def blocks(path: Path, language: str) -> list[str]:
    """The fenced blocks of ``language`` in ``path``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), flags=re.MULTILINE | re.DOTALL)


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def environment(home: Path) -> dict[str, str]:
    # The venv's bin first: the tutorial starts `kiln serve` by name, as a user with kiln installed would.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "KILN_HOME": str(home / ".kiln"), "COLUMNS": "200", "PATH": path}


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "script.py").write_text(script)
    completed = subprocess.run([sys.executable, "script.py"], cwd=cwd, env=environment(cwd), capture_output=True,
                               text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


@dataclass(frozen=True)
class Tutorial:
    cwd: Path
    stdout: str


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Tutorial:
    """The tutorial's Python, run once; the tests below read what it printed and the store it left."""
    script = "\n\n".join(blocks(TUTORIAL, "python"))
    assert script.count(PORT) == 2, "the serve step should name its port twice (--port and the Client's URL)"
    cwd = tmp_path_factory.mktemp("tutorial")
    return Tutorial(cwd, run_script(script.replace(PORT, free_port()), cwd).stdout)


def test_tutorial_trains_resumes_diagnoses_registers_and_serves(tutorial: Tutorial) -> None:
    out = tutorial.stdout
    accuracies = [float(value) for value in re.findall(r"test accuracy ([0-9.]+)", out)]
    assert len(accuracies) == 2 and min(accuracies) >= 0.9, out  # step 2's model and step 4's registered one
    assert "interrupted after step 25\n" in out and "resumed == uninterrupted: True\n" in out, out
    checkpoints = sorted(path.name for path in (tutorial.cwd / "ckpt").iterdir())
    # every 10 steps and the fit's end (step 84), the newest three kept
    assert checkpoints == [f"ckpt-{step:010d}.safetensors" for step in (70, 80, 84)], checkpoints
    assert "kiln doctor: dead ReLU units in '0', '1'" in out and "dead_relu ['0', '1']" in out, out
    assert "findings after the fix: []\n" in out, out
    assert "registered digits@1, files ['manifest.json', 'model.onnx', 'spec.json', 'weights.safetensors']" in out
    assert "digits@production -> digits@1, agrees with the model: True" in out, out
    served = re.search(r"served \[([0-9 ]+)\], in process \[([0-9 ]+)\]", out)
    assert served and served.group(1) == served.group(2) and len(served.group(1).split()) == 8, out
    assert out.endswith("{'output': (8, 10)}\n"), out  # the Open Inference Protocol answer's shape


def test_tutorial_cli_lines_run_against_its_store(tutorial: Tutorial) -> None:
    lines = [line for block in blocks(TUTORIAL, "bash") for line in block.splitlines()]
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("kiln ")]
    outputs = {}
    for command in commands:
        if command[1] == "serve":
            continue  # a long-lived server: the next test starts it
        completed = subprocess.run([sys.executable, "-m", "kiln.cli", *command[1:]], cwd=tutorial.cwd,
                                   env=environment(tutorial.cwd), capture_output=True, text=True, timeout=60,
                                   check=False)
        assert completed.returncode == 0, f"{shlex.join(command)}\n{completed.stdout}{completed.stderr}"
        outputs[shlex.join(command)] = completed.stdout
    assert sorted(outputs) == ["kiln models show digits", "kiln models verify", "kiln runs list"]
    assert "digits-mlp" in outputs["kiln runs list"] and "finished" in outputs["kiln runs list"]
    shown = outputs["kiln models show digits"]
    assert "production" in shown and "MLP on scikit-learn digits" in shown and "alias history" in shown
    assert outputs["kiln models verify"].startswith("ok: 4 files (0.1 MB) in 1 version match their SHA-256")


def test_tutorial_serve_step_answers_its_curl_requests(tutorial: Tutorial, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    from kiln.serve import Client

    (block,) = [block for block in blocks(TUTORIAL, "bash") if "curl" in block]
    (serve,) = [block for block in blocks(TUTORIAL, "bash") if block.startswith("kiln serve")]
    command = shlex.split(serve, comments=True)
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "kiln.cli", *command[1:], "--port", port, "--no-access-log"],
                                  cwd=tutorial.cwd, env=environment(tutorial.cwd), stderr=stderr)
        try:
            with Client(f"http://127.0.0.1:{port}") as client:
                deadline = time.monotonic() + 60
                while not client.ready():  # a server that fails to load exits: stop waiting then
                    assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            answers = []
            for path, body in re.findall(rf"curl -s localhost:{PORT}(\S+)(?: -d '(.*?)')?$", block,
                                         flags=re.MULTILINE | re.DOTALL):
                method = "POST" if body else "GET"
                response = httpx.request(method, f"http://127.0.0.1:{port}{path}", content=body or None, timeout=30)
                assert response.status_code == 200, f"{method} {path}: {response.text}"
                answers.append((body, response.json()))
        finally:
            server.terminate()
            status = server.wait(timeout=60)
    assert status == 0, log.read_text()  # SIGTERM: a clean shutdown
    (_, metadata), (body, prediction) = answers
    assert metadata["reference"] == "digits@1" and metadata["preprocessing"] == {"divide_by": 16.0}
    sample = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
    assert np.array_equal(sample, load_digits().data[0] / 16.0)  # the request really is the first digit, scaled
    outputs = np.asarray(prediction["outputs"])
    assert outputs.shape == (10,) and outputs.argmax() == load_digits().target[0] == 0


def test_tutorial_links_and_examples_exist() -> None:
    text = TUTORIAL.read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert {"serve.md", "store.md", "distributed.md"} <= set(links)
    assert [link for link in links if not (TUTORIAL.parent / link).is_file()] == []
    named = set(re.findall(r"`(examples/\w+\.py)`", text))
    assert "examples/digits.py" in named and [path for path in named if not (ROOT / path).is_file()] == []


README_PRELUDE = """\
from sklearn.datasets import load_digits
from torch import nn

digits = load_digits()
x, y = (digits.data / 16.0).astype("float32"), digits.target  # (1797, 64), (1797,)
net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
x_new = x[:5]
"""

README_CHECKS = """
result = model.evaluate(val)
assert sorted(result) == ["accuracy", "loss"] and result["accuracy"] >= 0.8, result
assert len(history["val_accuracy"]) == 10, history
assert tuple(model.predict(x_new).shape) == (5, 10)
print("readme ok")
"""


def test_readme_snippet_runs(tmp_path: Path) -> None:
    (snippet,) = blocks(README, "python")
    completed = run_script(README_PRELUDE + snippet + README_CHECKS, tmp_path)
    assert completed.stdout.endswith("readme ok\n"), completed.stdout
    assert "[docs/tutorial.md](docs/tutorial.md)" in README.read_text()
