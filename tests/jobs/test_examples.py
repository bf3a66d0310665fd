"""examples/pipeline and docs/pipelines.md: the files load, the page shows them as they are, its commands parse;
the walk-through itself runs end to end (slow)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cli import build_parser
from kiln.jobs._toml import loads
from kiln.jobs.config import load_job
from kiln.jobs.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipeline"
PAGE = ROOT / "docs" / "pipelines.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_example_job_and_pipeline_load() -> None:
    job = load_job(EXAMPLE / "job.toml")
    assert job.config.model.module == "digits_pipeline:cnn" and job.config.job.python_path == [str(EXAMPLE)]
    pipeline = load_pipeline(EXAMPLE / "pipeline.toml")
    assert [step.kind for step in pipeline.steps] == ["train", "evaluate", "gate", "register", "promote", "export"]
    assert pipeline.trust == ("digits_pipeline",)


def test_the_page_shows_the_example_files_as_they_are() -> None:
    shown = [loads(block) for block in blocks("toml")]
    assert shown == [loads((EXAMPLE / "job.toml").read_text()), loads((EXAMPLE / "pipeline.toml").read_text())]
    links = re.findall(r"\]\(([^)#]+)\)", PAGE.read_text())
    assert [link for link in links if not (PAGE.parent / link).exists()] == []


def test_the_pages_commands_parse() -> None:
    lines = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("kiln ")]
    lines += [line[2:] for block in blocks("text") for line in block.splitlines() if line.startswith("$ kiln ")]
    assert len(lines) >= 10
    parser = build_parser()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert getattr(args, "handler", None) is not None, line


@pytest.mark.slow
def test_the_walk_through_runs(tmp_path: Path) -> None:
    """The page's story on a fresh copy of the example: train, release, a gate that holds, a better model, rollback."""
    work = tmp_path / "pipeline"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("exported", "__pycache__"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILN_HOME": str(tmp_path / ".kiln"), "COLUMNS": "200"}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kiln.cli", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    done = kiln("train", "job.toml", "fit.epochs=2", "fit.verbose=0")
    assert done.returncode == 0 and done.stdout.startswith("run "), done.stderr
    run_id = done.stdout.split()[1]
    again = kiln("runs", "rerun", run_id[:12], "fit.verbose=0", "--trust", "digits_pipeline")
    assert again.returncode == 0 and again.stdout.split("finished: ")[1] == done.stdout.split("finished: ")[1]
    first = kiln("run", "pipeline.toml", "train.fit.epochs=3", "train.fit.verbose=0")
    assert first.returncode == 0 and "no digits@production yet" in first.stdout, first.stdout + first.stderr
    same = kiln("run", "pipeline.toml", "train.fit.epochs=3", "train.fit.verbose=0")
    assert same.returncode == 1 and re.fullmatch(
        r"not promoted: [0-9.]+ < [0-9.]+ \(digits@production = v1\)\n", same.stderr
    ), same.stderr
    better = kiln("run", "pipeline.toml", "train.fit.epochs=8", "train.fit.verbose=0")
    assert better.returncode == 0 and "previous=1  version=2  alias=production" in better.stdout, better.stdout
    assert sorted(p.name for p in (work / "exported").iterdir()) == ["digits-v1", "digits-v2"]
    listing = kiln("pipelines", "list")
    assert listing.stdout.count("digits-release") == 3 and "2/6 finished" in listing.stdout
    back = kiln("models", "rollback", "digits")
    assert back.stdout == "digits@production -> version 1 (rolled back from 2)\n", back.stderr
