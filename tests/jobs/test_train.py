"""`kiln train job.toml`: what a run records, the rerun that matches it bit for bit, register and promote."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import main
from kiln.jobs.config import load_job
from kiln.jobs.fingerprint import CACHE_FILE, files_fingerprint
from kiln.jobs.train import run_job
from kiln.store import Store

from .conftest import HERE, WriteJob


def test_kiln_train_records_what_reruns_it(
    write_job: WriteJob, store: Store, digits_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_job()
    assert main(["train", str(path), "fit.epochs=3", "model.lr=0.02", "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    (run,) = store.runs()
    assert out.startswith(f"run {run.id} finished: loss ") and "test_accuracy" in out, out
    info = store.run(run.id)
    job = info.params["job"]
    assert job["fit"]["epochs"] == 3 and job["model"]["lr"] == 0.02  # overrides applied
    assert job["fit"]["precision"] == "fp32" and job["register"] == {  # defaults filled in
        "name": "",
        "promote": "",
        "description": "",
        "tags": {},
        "onnx": True,
    }
    assert job["data"]["path"] == str(digits_npz) and job["job"]["python_path"] == [str(HERE)]
    assert info.params["job_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.params["overrides"] == ["fit.epochs=3", "model.lr=0.02"]
    versions = info.params["code"]["versions"]
    assert versions["kiln"] and versions["torch"]
    assert versions["factory_file"]["sha256"] == hashlib.sha256((HERE / "kiln_test_nets.py").read_bytes()).hexdigest()
    assert info.params["code"]["git"] is None  # the config is in a temporary folder, outside any git work tree
    assert info.params["data_fingerprint"] == files_fingerprint([digits_npz])
    assert info.tags == {"kiln.kind": "train", "kiln.job.sha256": info.params["job_sha256"]}
    assert "job.toml" in info.artifacts and info.artifacts["job.toml"].size == path.stat().st_size
    assert {"loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(info.latest)


def test_the_code_version_is_the_config_files_git_commit(tmp_path: Path, write_job: WriteJob, store: Store) -> None:
    import subprocess

    path = write_job()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", path.name], check=True)
    subprocess.run([*git, "commit", "-qm", "job"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    result = run_job(load_job(path), store=store)
    assert store.run(result.run_id).params["code"]["git"] == {"commit": head, "dirty": False}
    path.write_text(path.read_text() + "# changed\n")
    result = run_job(load_job(path), store=store)
    assert store.run(result.run_id).params["code"]["git"] == {"commit": head, "dirty": True}


def test_rerun_matches_the_original_bit_for_bit(
    write_job: WriteJob, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_job(fit={"lr_schedule": "cosine", "checkpoint": "ckpt"})
    original = run_job(load_job(path), store=store)
    path.write_text("this file changed after the run\n")  # the rerun reads the recorded config, not the file
    assert main(["runs", "rerun", original.run_id[:10], "--trust", "kiln_test_nets", "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    rerun = next(run for run in store.runs() if run.id != original.run_id)
    assert out.startswith(f"rerun of {original.run_id[:10]}: {rerun.id} finished: "), out
    first, second = store.metrics(original.run_id), store.metrics(rerun.id)
    assert set(first) >= {"loss", "val_accuracy", "test_accuracy", "batch_loss"}
    assert first == second  # every metric, every step, bit for bit (floats compared exactly)
    info = store.run(rerun.id)
    assert info.tags["kiln.rerun_of"] == original.run_id and info.params["rerun_of"] == original.run_id
    assert info.params["job"]["fit"]["checkpoint"] == "" and info.params["job"]["fit"]["resume"] is False
    assert "job.toml" not in info.artifacts  # the file changed since: not the config this run used
    original_job = store.run(original.run_id).params["job"]
    assert {**original_job, "fit": {**original_job["fit"], "checkpoint": "", "resume": False}} == info.params["job"]


def test_register_and_promote_from_the_job(write_job: WriteJob, store: Store, digits_npz: Path) -> None:
    path = write_job(register={"name": "digits", "promote": "staging", "description": "tiny MLP", "onnx": False})
    result = run_job(load_job(path), store=store)
    assert result.version is not None and result.version.reference == "digits@1" and result.promoted == "staging"
    version = store.version("digits@staging")
    assert version.version == 1 and version.run_id == result.run_id and version.description == "tiny MLP"
    assert version.data_fingerprint == files_fingerprint([digits_npz]) == result.data_fingerprint
    assert version.metrics == pytest.approx(result.metrics) and "test_accuracy" in version.metrics
    assert version.tags["kiln.kind"] == "train"
    spec = json.loads(bytes(store.read(version, "spec.json")))
    assert spec["module"] == "kiln_test_nets:mlp" and spec["config"] == {"hidden": 16}


def test_other_sources_csv_with_a_validation_file_and_a_factory(
    tmp_path: Path, write_job: WriteJob, store: Store, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    rows = [",".join([*(f"{v:.4f}" for v in row), str(label)]) for row, label in zip(x, y, strict=True)]
    (tmp_path / "train.csv").write_text("\n".join(rows[:1400]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[1400:]) + "\n")
    path = write_job(
        data={"source": "csv", "path": "train.csv", "validation_path": "val.csv", "options": {"label": -1}},
        split={"validation": 0.0, "test": 0.0},
    )
    result = run_job(load_job(path), store=store)
    assert result.metrics["val_accuracy"] > 0.5 and "test_accuracy" not in result.metrics
    assert result.data_fingerprint == files_fingerprint([tmp_path / "train.csv", tmp_path / "val.csv"])
    path = write_job(data={"source": "factory", "factory": "kiln_test_nets:digits", "path": ""})
    result = run_job(load_job(path), store=store)
    assert result.metrics["val_accuracy"] > 0.5 and str(result.data_fingerprint).startswith("sha256:")


def test_the_fingerprint_cache_is_keyed_by_path_size_and_mtime(tmp_path: Path) -> None:
    data = tmp_path / "images"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "1.bin").write_bytes(b"one")
    (data / "cat" / "2.bin").write_bytes(b"two")
    cache = tmp_path / CACHE_FILE
    first = files_fingerprint([data], cache=cache)
    assert first == files_fingerprint([data]) and cache.is_file()
    entries = json.loads(cache.read_text())
    assert entries[str(data / "cat" / "1.bin")][2] == hashlib.sha256(b"one").hexdigest()
    # The cache is believed while path, size and mtime match: a forged digest shows it is read, not recomputed.
    entries[str(data / "cat" / "1.bin")][2] = "0" * 64
    cache.write_text(json.dumps(entries))
    assert files_fingerprint([data], cache=cache) != first
    os.utime(data / "cat" / "1.bin", ns=(1, 1))  # another mtime: the file is hashed again
    assert files_fingerprint([data], cache=cache) == first
    (data / "cat" / "2.bin").write_bytes(b"TWO")
    assert files_fingerprint([data], cache=cache) != first  # content changes the fingerprint
    (data / "cat" / "2.bin").write_bytes(b"two")
    (data / "cat" / "2.bin").rename(data / "cat" / "3.bin")
    assert files_fingerprint([data], cache=cache) != first  # so does a file's name
