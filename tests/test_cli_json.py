"""``--json`` on the listing and show verbs: one document each, in the shape docs/cli.md documents, and exit codes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.store import Store

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


@pytest.fixture
def filled(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    for i in range(2):
        (tmp_path / "w.bin").write_bytes(f"weights {i}".encode())
        store.register("digits", {"w.bin": tmp_path / "w.bin"}, metrics={"val_accuracy": 0.9 + i / 100},
                       description=f"try {i}", tags={"team": "vision"})  # fmt: skip
    store.promote("digits", 2, "production")
    with store.start_run("digits-mlp", params={"lr": 0.01}, tags={"git": "abc"}) as run:
        run.log({"loss": 0.25, "val_loss": math.nan}, step=10)
    store.run_id = run.id  # type: ignore[attr-defined]
    return store


def run_json(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> dict:
    assert main(list(args)) == code
    document = json.loads(capsys.readouterr().out)  # strict JSON: one document, nothing else on stdout
    assert document["schema"] == "kiln.cli/1"
    return document


def documented_keys(heading: str) -> set[str]:
    """The keys docs/cli.md lists for ``heading``: its table's first column."""
    section = DOC.read_text().split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` ", section, flags=re.MULTILINE))


def test_runs_list_and_show(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--store", str(filled.path)]
    listing = run_json(capsys, "runs", "list", "--json", *where)
    (run,) = listing["runs"]
    assert set(run) == documented_keys("run (in `runs list`)")
    assert run["id"] == filled.run_id and run["status"] == "finished"  # type: ignore[attr-defined]
    assert run["latest"] == {"loss": 0.25, "val_loss": None}  # NaN is null
    assert run["start_time"].endswith("+00:00") and run["tags"] == {"git": "abc"}
    shown = run_json(capsys, "runs", "show", run["id"][:8], "--json", *where)["run"]
    assert set(shown) == documented_keys("run (in `runs list`)") | documented_keys("run (in `runs show`)")
    assert shown["params"] == {"lr": 0.01} and "python" in shown["system"] and shown["artifacts"] == {}


def test_models_list_show_and_verify(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--store", str(filled.path)]
    (model,) = run_json(capsys, "models", "list", "--json", *where)["models"]
    assert set(model) == documented_keys("model (in `models list`)")
    assert (model["name"], model["versions"], model["latest"], model["aliases"]) == ("digits", 2, 2,
                                                                                      {"production": 2})  # fmt: skip
    shown = run_json(capsys, "models", "show", "digits", "--json", *where)
    assert [v["reference"] for v in shown["versions"]] == ["digits@1", "digits@2"]  # as the table lists them
    version = next(v for v in shown["versions"] if v["version"] == 2)
    assert set(version) == documented_keys("version")
    sha = filled.version("digits@2").files["w.bin"].sha256
    assert version["files"] == {"w.bin": {"sha256": sha, "size": len(b"weights 1")}}
    assert version["aliases"] == ["production"] and version["metrics"] == {"val_accuracy": 0.91}
    (move,) = shown["alias_history"]
    assert (move["alias"], move["from"], move["to"]) == ("production", None, 2) and move["time"].endswith("+00:00")
    assert [t["reference"] for t in shown["trust"]] == [v["reference"] for v in shown["versions"]]
    one = run_json(capsys, "models", "show", "digits@production", "--json", *where)
    assert one["version"] == version and set(one) == {"schema", "version", "trust"}

    report = run_json(capsys, "models", "verify", "--json", *where)
    assert (report["ok"], report["passed"], report["versions"], report["files"]) == (True, True, 2, 2)
    blob = filled.blobs.path(sha)
    blob.chmod(0o644)  # blobs are stored read-only
    blob.write_bytes(b"tampered")
    report = run_json(capsys, "models", "verify", "--json", *where, code=1)
    assert report["ok"] is False and report["passed"] is False
    (problem,) = report["problems"]
    assert (problem["reference"], problem["file"]) == ("digits@2", "w.bin") and "changed" in problem["message"]


def test_info_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    info = run_json(capsys, "info", "--json")
    assert set(info) == {"schema", "kiln", "torch", "device", "threads", "store"} and info["threads"] >= 1
    assert main(["models", "list", "--json", "--store", str(tmp_path / "nowhere")]) == 2  # as documented
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("kiln: error: ")
