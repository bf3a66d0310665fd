"""The Try-it panel applies a version's declared preprocessing as `kiln predict --local` does: text in, labels out.

Models with a declared text step (a sentence, a small vocabulary, weights set so the label is known), an image step
(a PNG through the file picker; its one class name is hostile HTML, which must show as text) and a standardize step,
checked through the app's API in process and through a real `kiln ui` subprocess in Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kiln.data import Vocabulary
from kiln.export import register_module
from kiln.export.preprocess import FORMAT
from kiln.serve.local import run_local
from kiln.store import Store
from serve.test_preprocess_app import CORPUS, classes, topic_model  # tests/serve: the hand-set topic model

from .conftest import CHROMIUM, HOSTILE_NAME, Client, make_client, serve_ui

TOPICS = ["sports", "weather"]
MEAN = [100.0, -5.0, 0.5]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``topics`` (text -> sports/weather), ``shapes`` (4x4 RGB image -> always its second, hostile, class) and
    ``tabular`` (standardized rows), each registered with its declared preprocessing."""
    path = tmp_path_factory.mktemp("tryit-preprocess") / "store"
    vocabulary = Vocabulary.build(CORPUS)
    text = topic_model(vocabulary)  # sports words -> class 0, weather words -> class 1
    image = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    rows = nn.Linear(3, 2).eval()
    with torch.no_grad():
        image[1].weight.zero_()
        image[1].bias.copy_(torch.tensor([0.0, 1.0]))
    text_step = {"type": "text", "tokenizer": "word", "vocabulary": vocabulary.state_dict()["tokens"], "max_length": 6}
    with Store(path) as store:
        register_module(text, "topics", store=store, example_input=vocabulary.encode_batch(CORPUS[:1], max_length=6),
                        preprocessing={"format": FORMAT, "input": text_step, "output": classes(*TOPICS)})  # fmt: skip
        register_module(image, "shapes", store=store, example_input=torch.zeros(1, 3, 4, 4),
                        preprocessing={"format": FORMAT, "output": classes("circle", HOSTILE_NAME),
                                       "input": {"type": "image", "mode": "RGB", "size": [4, 4]}})  # fmt: skip
        register_module(rows, "tabular", store=store, example_input=torch.zeros(1, 3),
                        preprocessing={"format": FORMAT, "input": {"type": "standardize", "mean": MEAN,
                                                                   "std": [10.0, 2.0, 0.25]}})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def client(store_path: Path) -> Iterator[Client]:
    made = make_client(store_path)
    yield made
    made.app.state.ui.store.close()


def png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3), "RGB").save(out, "PNG")
    return out.getvalue()


def test_the_example_is_what_the_declared_step_takes(client: Client) -> None:
    def example(name: str) -> Any:
        return client.get(f"/api/models/{name}/1").json()["example"]

    assert example("topics") == {"inputs": ["type a sentence here"]}  # not token ids
    assert example("tabular") == {"inputs": [MEAN]}  # one raw row of the declared width
    assert example("shapes") == {"inputs": [{"b64": ""}]}


def test_text_in_labels_out_as_predict_local_gives_them(client: Client, store_path: Path) -> None:
    texts = ["The fans cheered the striker!", "rain, wind and a storm", "zebra"]
    answer = client.post("/api/models/topics/1/predict", json={"inputs": texts})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    local = run_local("topics@1", texts, store=store_path, runtime="onnx")
    assert body["labels"] == local.labels == ["sports", "weather", "sports"]  # "zebra": all zeros, the first class
    np.testing.assert_allclose(body["outputs"], local.outputs, rtol=1e-6)
    assert body["runtime"] == "onnx" and body["latency_ms"] >= 0
    one = client.post("/api/models/topics/1/predict", json={"inputs": "a storm tonight"}).json()
    assert one["labels"] == "weather" and np.asarray(one["outputs"]).shape == (2,)  # one sample, unbatched

    picture = base64.b64encode(png()).decode()
    shown = client.post("/api/models/shapes/1/predict", json={"inputs": [{"b64": picture}]}).json()
    assert shown["labels"] == [run_local("shapes@1", file=png(), media="image", store=store_path).labels]
    rows = client.post("/api/models/tabular/1/predict", json={"inputs": [[110.0, -3.0, 0.75]]}).json()
    np.testing.assert_allclose(rows["outputs"], run_local("tabular@1", [[110.0, -3.0, 0.75]], store=store_path,
                                                          runtime="onnx").outputs, rtol=1e-6)  # fmt: skip
    assert "labels" not in rows  # no classes declared


@pytest.mark.parametrize(
    ("name", "payload", "says"),
    [
        ("topics", {"inputs": [3]}, "text"),
        ("topics", {"texts": ["a goal"]}, '{"inputs": ...}'),
        ("topics", ["a goal"], '{"inputs": ...}'),
        ("shapes", {"inputs": [{"b64": "not base64!"}]}, "not valid base64"),
        ("shapes", {"inputs": ["a goal"]}, "b64"),
        ("tabular", {"inputs": [[1.0, 2.0]]}, "3"),
    ],
)
def test_bad_input_is_a_400_that_says_why(client: Client, name: str, payload: Any, says: str) -> None:
    answer = client.post(f"/api/models/{name}/1/predict", json=payload)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"]


def test_a_foreign_origin_cannot_predict(client: Client) -> None:
    refused = client.post("/api/models/topics/1/predict", json={"inputs": ["a goal"]},
                          headers={"origin": "http://evil.example"})  # fmt: skip
    assert refused.status_code == 403


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: bash scripts/setup.sh dev")
def test_the_panel_takes_a_sentence_and_a_picture_and_shows_the_label(page: Any, store_path: Path) -> None:
    sentence = "rain and wind, then a storm"
    expected = run_local("topics@1", [sentence], store=store_path, runtime="onnx")
    assert expected.labels == ["weather"]
    with serve_ui(store_path) as url:
        page.goto(f"{url}/models/topics/1")
        assert json.loads(page.input_value("#tryit-input")) == {"inputs": ["type a sentence here"]}
        assert page.locator("#tryit-file").count() == 0  # text: no file picker
        page.fill("#tryit-input", json.dumps({"inputs": [sentence]}))
        page.click("#tryit-run")
        page.wait_for_selector("#tryit-output[data-outputs]")
        assert page.inner_text("#tryit-labels") == expected.labels[0]
        np.testing.assert_allclose(json.loads(page.get_attribute("#tryit-output", "data-outputs")),
                                   expected.outputs, rtol=1e-5)  # fmt: skip
        assert "ms with onnx" in page.inner_text("#tryit-latency")

        page.goto(f"{url}/models/shapes/1")
        page.set_input_files("#tryit-file", files=[{"name": "p.png", "mimeType": "image/png", "buffer": png()}])
        page.wait_for_function("document.getElementById('tryit-input').value.length > 30")
        assert json.loads(page.input_value("#tryit-input")) == {"inputs": [{"b64": base64.b64encode(png()).decode()}]}
        page.click("#tryit-run")
        page.wait_for_selector("#tryit-output[data-outputs]")
        assert page.inner_text("#tryit-labels") == HOSTILE_NAME  # shown as text; the page fixture fails on a dialog
        assert run_local("shapes@1", file=png(), media="image", store=store_path).labels == HOSTILE_NAME


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: bash scripts/setup.sh dev")
def test_the_panel_shows_why_an_input_is_refused(browser: Any, store_path: Path) -> None:
    """Not the shared ``page`` fixture: Chromium logs the (expected) 400 to the console, which that fixture fails on;
    this one allows exactly that and nothing else."""
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.set_default_timeout(15_000)
    try:
        with serve_ui(store_path) as url:
            page.goto(f"{url}/models/topics/1")
            page.fill("#tryit-input", '{"inputs": [42]}')
            page.click("#tryit-run")
            page.wait_for_selector("#tryit-output.error")
            refused, label = page.inner_text("#tryit-output"), page.inner_text("#tryit-labels")
    finally:
        context.close()
    assert "text" in refused and label == "–"
    assert problems == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"], problems
