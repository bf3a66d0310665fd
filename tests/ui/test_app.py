"""The views through HTTP (the app in process): pages, JSON and CSV routes, errors as pages, escaping, Try it."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from kiln.serve.local import predict_local
from kiln.store import Store
from kiln.ui.run import chart_groups
from kiln.ui.tryit import example_input

from .conftest import HOSTILE_METRIC, HOSTILE_NAME, HOSTILE_TAG, Client, Filled


def test_runs_page_lists_newest_first_with_metric_columns(client: Client, filled: Filled) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    body = page.text
    assert body.index(filled.hostile) < body.index(filled.runs[1]) < body.index(filled.runs[0])
    data = client.get("/api/runs", params={"metric": "val_loss,loss", "sort": "metric:val_loss", "order": "asc"}).json()
    assert data["total"] == 3 and data["columns"] == ["val_loss", "loss"]
    assert [r["id"] for r in data["runs"]][-1] == filled.hostile  # no val_loss: last
    assert all(r["status"] == "finished" for r in data["runs"])
    tagged = client.get("/api/runs", params={"tag": "lr=0.03"}).json()
    assert [r["id"] for r in tagged["runs"]] == [filled.runs[0]]
    assert client.get("/api/runs", params={"q": "blobs", "per": 1, "page": 2}).json()["runs"][0]["id"] == filled.runs[0]


def test_runs_csv_defuses_formulas(client: Client, filled: Filled, tmp_path) -> None:
    rows = list(csv.reader(io.StringIO(client.get("/api/runs", params={"format": "csv"}).text)))
    assert rows[0][:3] == ["id", "name", "status"] and len(rows) == 4
    with Store(tmp_path / "s") as store, store.start_run("r", tags={"x": "=HYPERLINK(1)"}):
        pass
    from .conftest import make_client

    text = make_client(tmp_path / "s").get("/api/runs", params={"format": "csv"}).text
    assert "'x==HYPERLINK(1)" not in text and "x==HYPERLINK" in text  # "x=..." does not start with "="
    name_row = list(csv.reader(io.StringIO(text)))[1]
    assert name_row[1] == "r"


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("/runs/0123456789abcdef", 404, "no run with id"),
        ("/runs/zz", 400, "run id"),
        ("/?page=two", 400, "page must be an integer"),
        ("/?per=100000", 400, "per must be an integer in 1..200"),
        ("/?status=sleeping", 400, "status must be one of"),
        ("/?sort=colour", 400, "sort must be one of"),
        ("/?bogus=1", 400, "unknown query parameter"),
        ("/models/nope", 404, "no model named"),
        ("/models/blobs/99", 404, "has no version 99"),
        ("/models/blobs/x", 400, "version must be an integer"),
        ("/models/%3Cb%3E", 400, "model name"),
        ("/compare?run=abcd", 400, "compare takes 2 to 10"),
        ("/no/such/page", 404, "there is no page"),
    ],
)
def test_bad_input_gets_a_clear_page_never_a_traceback(client: Client, url: str, status: int, says: str) -> None:
    answer = client.get(url)
    assert answer.status_code == status and says in answer.text
    assert "Traceback" not in answer.text and "<html" in answer.text
    api = client.get("/api" + url if url.startswith(("/runs/", "/models/")) else url)
    if api.headers["content-type"].startswith("application/json"):
        assert says in api.json()["error"]


def test_every_user_string_is_escaped(client: Client, filled: Filled) -> None:
    for url in ("/", f"/runs/{filled.hostile}", f"/compare?run={filled.hostile}&run={filled.runs[0]}",
                "/models", "/models/blobs", "/models/blobs/1"):  # fmt: skip
        body = client.get(url).text
        for hostile in (HOSTILE_NAME, HOSTILE_TAG, HOSTILE_METRIC, "<b>p</b>", "<b>apart</b>"):
            assert hostile not in body, (url, hostile)
    body = client.get(f"/runs/{filled.hostile}").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "&lt;/script&gt;" in body


def test_run_page_and_series(client: Client, filled: Filled) -> None:
    run_id = filled.runs[1]
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and "blobs@1" in page.text and 'id="charts"' in page.text
    data = client.get(f"/api/runs/{run_id}/series").json()
    assert data["changed"] and set(data["series"]) == {
        "batch_loss",
        "loss",
        "lr",
        "val_loss",
        "val_accuracy",
        "update_ratio/0",
        "update_ratio/2",
    }  # the doctor's, per layer
    assert data["charts"][0]["title"] == "loss" and len(data["charts"][0]["series"]) == 3
    assert data["series"]["val_loss"]["step"] == sorted(data["series"]["val_loss"]["step"])
    again = client.get(f"/api/runs/{run_id}/series", params={"since": data["state"]["token"]}).json()
    assert again == {"state": data["state"], "changed": False}
    one = client.get(f"/api/runs/{run_id}/series", params={"key": "val_loss", "format": "csv"}).text.splitlines()
    assert one[0] == "step,time,value" and len(one) == 5  # four epochs
    assert client.get(f"/api/runs/{run_id}/series", params={"key": "nope"}).status_code == 404
    info = client.get(f"/api/runs/{run_id[:10]}").json()
    assert info["id"] == run_id and info["versions"] == ["blobs@1"] and info["tags"]["lr"] == "0.003"


def test_chart_groups_pair_train_and_validation() -> None:
    groups = chart_groups(["val_loss", "batch_loss", "epoch", "lr", "loss", "update_ratio/0", "val_accuracy"])
    assert [g["title"] for g in groups] == ["loss", "accuracy", "lr", "update_ratio"]
    assert groups[0]["series"] == [["batch_loss", "train (batch)"], ["loss", "train"], ["val_loss", "validation"]]
    assert groups[3]["log"] is True


def test_artifacts_download_as_attachments(filled: Filled, tmp_path) -> None:
    from .conftest import make_client

    page = tmp_path / "page.html"
    page.write_text("<script>alert(1)</script>")
    with Store(tmp_path / "s") as store, store.start_run("r") as run:
        run.log_artifact("page.html", page)
    client = make_client(tmp_path / "s")
    answer = client.get(f"/runs/{run.id}/artifacts/page.html")
    assert answer.status_code == 200 and answer.content == page.read_bytes()
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"].startswith("attachment")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/runs/{run.id}/artifacts/other.txt").status_code == 404


def test_models_gallery_and_version(client: Client, filled: Filled) -> None:
    cards = client.get("/api/models").json()
    assert [c["name"] for c in cards] == ["blobs"] and cards[0]["aliases"] == {"production": 1}
    version = client.get("/api/models/blobs/1").json()
    assert version["verified"] and version["trusted_by"] and version["run_id"] == filled.runs[1]
    assert version["example"] == {"inputs": [[0.0] * 8]}
    history = client.get("/api/models/blobs").json()["alias_history"]
    assert [(m["alias"], m["old_version"], m["new_version"]) for m in history] == [("production", None, 1)]
    page = client.get("/models/blobs/1").text
    assert "Try it" in page and "verified" in page and "/promote" not in page  # read-only: no write forms


def test_try_it_matches_predict_local(client: Client, filled: Filled) -> None:
    inputs = filled.x[:3].tolist()
    answer = client.post("/api/models/blobs/1/predict", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    expected = predict_local("blobs@1", inputs, store=filled.path, runtime="onnx")
    np.testing.assert_allclose(np.asarray(data["outputs"]), expected, rtol=1e-6)
    assert data["runtime"] == "onnx" and data["latency_ms"] >= 0
    bad = client.post("/api/models/blobs/1/predict", json={"inputs": [[1.0, 2.0]]})
    assert bad.status_code == 400 and "8" in bad.json()["error"]
    assert (
        client.post(
            "/api/models/blobs/1/predict", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert client.post("/api/models/blobs/1/predict", content=b"inputs=1").status_code == 415


def test_example_input_follows_the_signature() -> None:
    two = {"inputs": [{"name": "a", "dtype": "int64", "shape": [None, 2]}, {"name": "b", "dtype": "float32",
                                                                             "shape": [None]}]}  # fmt: skip
    assert example_input(two) == {"inputs": {"a": [[0, 0]], "b": [0.0]}}
    assert example_input(None) == {"inputs": []}
    huge = example_input({"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3, 512, 512]}]})
    assert np.asarray(huge["inputs"]).size <= 4096


def test_security_headers_on_every_answer(client: Client) -> None:
    for url in ("/", "/api/runs", "/static/kiln.js", "/nope"):
        headers = client.get(url).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert client.get("/").headers["cache-control"] == "no-store"


def test_json_has_no_nan(client: Client, filled: Filled, tmp_path) -> None:
    from .conftest import make_client

    with Store(tmp_path / "s") as store, store.start_run("r") as run:
        run.log({"loss": math.nan}, step=0)
        run.log({"loss": 1.0}, step=1)
    answer = make_client(tmp_path / "s").get(f"/api/runs/{run.id}/series")
    assert "NaN" not in answer.text and answer.json()["series"]["loss"]["nonfinite"] == [0]


def test_doctor_findings_recorded_with_a_run_are_listed(tmp_path) -> None:
    import json

    from .conftest import make_client

    findings = [{"kind": "vanishing", "layers": ["0", "<b>2</b>"], "step": 3, "evidence": "grad norm 1e-9",
                 "remedies": ["use kaiming init"]}]  # fmt: skip
    (tmp_path / "doctor.json").write_text(json.dumps({"findings": findings}))
    with Store(tmp_path / "s") as store, store.start_run("r") as run:
        run.log({"update_ratio/0": 1e-3, "update_ratio/2": 1e-5}, step=1)
        run.log_artifact("doctor.json", tmp_path / "doctor.json")
    client = make_client(tmp_path / "s")
    page = client.get(f"/runs/{run.id}").text
    assert "Gradient doctor" in page and "grad norm 1e-9" in page and "try: use kaiming init" in page
    assert "&lt;b&gt;2&lt;/b&gt;" in page
    charts = client.get(f"/api/runs/{run.id}").json()["charts"]
    assert charts == [
        {"title": "update_ratio", "series": [["update_ratio/0", "0"], ["update_ratio/2", "2"]], "total": 2, "log": True}
    ]
    with Store(tmp_path / "s") as store, store.start_run("plain") as plain:
        plain.log({"loss": 1.0}, step=1)
    assert "Gradient doctor" not in client.get(f"/runs/{plain.id}").text  # recorded nothing: no section


def test_a_tampered_version_says_so(filled: Filled, tmp_path) -> None:
    import shutil

    from .conftest import make_client

    path = tmp_path / "copy"
    shutil.copytree(filled.path, path)
    with Store(path) as store:
        blob = store.version("blobs@1").files["weights.safetensors"]
        target = store.blobs.path(blob.sha256)
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    client = make_client(path)
    page = client.get("/models/blobs/1")
    assert page.status_code == 200 and "integrity problem" in page.text and "weights.safetensors" in page.text
    answer = client.get("/api/models/blobs/1").json()
    assert answer["verified"] is False and answer["problems"][0]["file"] == "weights.safetensors"
    refused = client.post("/api/models/blobs/1/predict", json={"inputs": [[0.0] * 8]})
    assert refused.status_code == 500 and "failed verification" in refused.json()["error"]
