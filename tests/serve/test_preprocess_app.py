"""The server applies a package's declared preprocessing: text, WAV, PNG and raw rows in, labels out (in process,
through `kiln predict --local`, and once end to end through a real `kiln serve` subprocess)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from kiln.data import Vocabulary
from kiln.export import register_module
from kiln.export.preprocess import FORMAT
from kiln.serve import ServeConfig, create_app
from kiln.serve.local import run_local
from kiln.store import Store

from ._server import ServerProcess
from .conftest import client_for, run
from .test_preprocess import png_bytes, wav_bytes

TOPICS = ["sports", "weather"]
CORPUS = ["the striker scored a goal", "the fans cheered the team", "rain and wind tonight", "a storm with thunder"]


@dataclass(frozen=True)
class Models:
    store: Path
    vocabulary: Vocabulary
    text: nn.Module
    audio: nn.Module
    image: nn.Module
    rows: nn.Module
    mean: np.ndarray
    std: np.ndarray


def classes(*names: str) -> dict:
    return {"type": "classes", "names": list(names)}


def topic_model(vocabulary: Vocabulary) -> nn.Sequential:
    """An embedding bag over ``vocabulary`` whose label is fixed by hand: sports words -> class 0, weather -> 1."""
    text = nn.Sequential(nn.EmbeddingBag(len(vocabulary), 8, mode="mean", padding_idx=0), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        text[0].weight.zero_()
        for word in ("striker", "goal", "fans", "team"):
            text[0].weight[vocabulary.encode(word)[0], 0] = 1.0
        for word in ("rain", "wind", "storm", "thunder"):
            text[0].weight[vocabulary.encode(word)[0], 1] = 1.0
        text[1].weight.copy_(torch.eye(2, 8))
        text[1].bias.zero_()
    return text


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Four small models, each registered with a declared input step and class names."""
    path = tmp_path_factory.mktemp("preprocess-store")
    torch.manual_seed(0)
    vocabulary = Vocabulary.build(CORPUS)
    text = topic_model(vocabulary)
    audio = nn.Sequential(nn.Flatten(), nn.Linear(80, 3)).eval()  # (B, 1, 80) samples at 8 kHz
    image = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()  # (B, 3, 4, 4)
    rows = nn.Linear(3, 2).eval()
    mean, std = np.array([100.0, -5.0, 0.5], np.float32), np.array([10.0, 2.0, 0.25], np.float32)
    with Store(path) as store:
        register_module(text, "topics", store=store, example_input=vocabulary.encode_batch(CORPUS[:1], max_length=6),
                        preprocessing={"format": FORMAT, "output": classes(*TOPICS), "input": {
                            "type": "text", "tokenizer": "word", "vocabulary": vocabulary.state_dict()["tokens"],
                            "max_length": 6}})  # fmt: skip
        register_module(audio, "keywords", store=store, example_input=torch.zeros(1, 1, 80),
                        preprocessing={"format": FORMAT, "output": classes("yes", "no", "up"), "input": {
                            "type": "audio", "sample_rate": 8000, "channels": 1, "samples": 80}})  # fmt: skip
        register_module(image, "shapes", store=store, example_input=torch.zeros(1, 3, 4, 4),
                        preprocessing={"format": FORMAT, "output": classes("circle", "square"), "input": {
                            "type": "image", "mode": "RGB", "size": [4, 4]}})  # fmt: skip
        standardize = {"type": "standardize", "mean": mean.tolist(), "std": std.tolist()}
        register_module(rows, "tabular", store=store, example_input=torch.zeros(1, 3),
                        preprocessing={"format": FORMAT, "output": classes("benign", "malignant"), "notes": {"x": 1},
                                       "input": standardize})  # fmt: skip
    return Models(path, vocabulary, text, audio, image, rows, mean, std)


def app_for(models: Models, name: str, **options):
    return create_app(f"{name}@1", store=models.store, config=ServeConfig(**options))


def module_output(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def test_text_in_labels_out(models: Models):
    texts = ["The striker scored again!", "a storm of rain and wind", "zebra quantum"]
    expected = module_output(models.text, models.vocabulary.encode_batch(texts, max_length=6).numpy())

    async def main() -> None:
        async with client_for(app_for(models, "topics")) as client:
            batch = await client.post("/v1/models/topics:predict", json={"inputs": texts})
            assert batch.status_code == 200, batch.text
            assert batch.json()["labels"][:2] == ["sports", "weather"]
            np.testing.assert_allclose(batch.json()["outputs"], expected, rtol=1e-5, atol=1e-6)  # raw outputs kept
            one = await client.post("/v1/models/topics:predict", json={"inputs": "the fans and the team"})
            assert one.json()["labels"] == "sports" and len(one.json()["outputs"]) == 2
            long = await client.post("/v1/models/topics:predict", json={"inputs": "rain " * 20_000})  # off the loop
            assert long.status_code == 200 and long.json()["labels"] == "weather"
            plain = await client.post("/v1/models/topics:predict", content=b"thunder tonight",
                                      headers={"content-type": "text/plain; charset=utf-8"})  # fmt: skip
            assert plain.json()["labels"] == "weather"
            ids = await client.post("/v1/models/topics:predict", json={"inputs": [[2, 3, 4, 0, 0, 0]]})
            assert ids.status_code == 422 and "takes text" in ids.json()["error"]
            wav = await client.post("/v1/models/topics:predict", content=wav_bytes(np.zeros(8), 8000),
                                    headers={"content-type": "audio/wav"})  # fmt: skip
            assert wav.status_code == 415 and "takes text" in wav.json()["error"]
            # /v2 takes the model's tensors: token ids, as a Triton client sends them
            v2 = await client.post("/v2/models/topics/infer", json={"inputs": [
                {"name": "input", "shape": [1, 6], "datatype": "INT64",
                 "data": models.vocabulary.encode_batch(texts[:1], max_length=6).reshape(-1).tolist()}]})  # fmt: skip
            assert v2.status_code == 200, v2.text
            np.testing.assert_allclose(v2.json()["outputs"][0]["data"], expected[0], rtol=1e-5, atol=1e-6)
            meta = (await client.get("/v1/models/topics")).json()
            assert meta["applies"]["input"] == "text" and meta["applies"]["labels"] is True
            assert meta["preprocessing"]["format"] == FORMAT
            request = (await client.get("/openapi.json")).json()["paths"]["/v1/models/topics:predict"]["post"]
            content = request["requestBody"]["content"]
            assert set(content) == {"application/json", "text/plain"} and "labels" in request["summary"]
            assert content["application/json"]["schema"]["properties"]["inputs"]["oneOf"][0] == {"type": "string"}

    run(main())


def test_wav_in_labels_out_and_other_rates_refused(models: Models):
    rng = np.random.default_rng(0)
    waves = [np.sin(np.arange(120) * f) * 0.5 for f in (0.1, 0.7)]
    files = [wav_bytes(w, 8000) for w in waves]
    samples = np.stack([np.frombuffer(f[44:], "<i2")[:80].astype(np.float32) / 32768.0 for f in files])[:, None]
    expected = module_output(models.audio, samples)  # (2, 3)
    labels = [["yes", "no", "up"][i] for i in expected.argmax(-1)]

    async def main() -> None:
        async with client_for(app_for(models, "keywords")) as client:
            raw = await client.post("/v1/models/keywords:predict", content=files[0],
                                    headers={"content-type": "audio/wav"})  # fmt: skip
            assert raw.status_code == 200, raw.text
            assert raw.json()["labels"] == labels[0]
            np.testing.assert_allclose(raw.json()["outputs"], expected[0], rtol=1e-5, atol=1e-6)
            b64 = [{"b64": base64.b64encode(f).decode()} for f in files]
            batch = await client.post("/v1/models/keywords:predict", json={"inputs": b64})
            assert batch.json()["labels"] == labels
            wrong = await client.post("/v1/models/keywords:predict", content=wav_bytes(rng.normal(0, 0.1, 80), 16000),
                                      headers={"content-type": "audio/x-wav"})  # fmt: skip
            assert wrong.status_code == 400
            assert "16000 Hz" in wrong.json()["error"] and "8000 Hz" in wrong.json()["error"]
            junk = await client.post("/v1/models/keywords:predict", content=b"ID3 not a wav",
                                     headers={"content-type": "audio/wav"})  # fmt: skip
            assert junk.status_code == 400 and "WAV" in junk.json()["error"]
            ok = await client.post("/v1/models/keywords:predict", content=files[1],
                                   headers={"content-type": "audio/wav"})  # fmt: skip
            assert ok.json()["labels"] == labels[1]  # the server is fine after the refusals
            request = (await client.get("/openapi.json")).json()["paths"]["/v1/models/keywords:predict"]["post"]
            assert set(request["requestBody"]["content"]) == {"application/json", "audio/wav"}

    run(main())


def test_png_in_labels_out(models: Models):
    pixels = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    expected = module_output(models.image, (pixels.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32))

    async def main() -> None:
        async with client_for(app_for(models, "shapes")) as client:
            reply = await client.post("/v1/models/shapes:predict", content=png_bytes(pixels),
                                      headers={"content-type": "image/png"})  # fmt: skip
            assert reply.status_code == 200, reply.text
            np.testing.assert_allclose(reply.json()["outputs"], expected[0], rtol=1e-5, atol=1e-6)
            assert reply.json()["labels"] == ["circle", "square"][int(expected[0].argmax())]

    run(main())


def test_raw_rows_are_standardized_by_the_server(models: Models):
    raw = np.array([[110.0, -4.0, 0.75], [90.0, -7.0, 0.0]], np.float32)
    expected = module_output(models.rows, (raw - models.mean) / models.std)

    async def main() -> None:
        async with client_for(app_for(models, "tabular")) as client:
            reply = await client.post("/v1/models/tabular:predict", json={"inputs": raw.tolist()})
            assert reply.status_code == 200, reply.text
            np.testing.assert_allclose(reply.json()["outputs"], expected, rtol=1e-5, atol=1e-6)
            assert reply.json()["labels"] == [["benign", "malignant"][i] for i in expected.argmax(-1)]
            short = await client.post("/v1/models/tabular:predict", json={"inputs": [[1.0, 2.0]]})
            assert short.status_code == 422 and "raw rows of 3 numbers" in short.json()["error"]

    run(main())


def test_predict_local_applies_the_same_steps(models: Models, tmp_path):
    local = run_local("topics@1", ["the striker scored", "rain and wind"], store=models.store)
    assert local.labels == ["sports", "weather"]
    audio = run_local("keywords@1", file=wav_bytes(np.zeros(80), 8000), media="audio", store=models.store)
    assert audio.labels in ("yes", "no", "up") and np.asarray(audio.outputs).shape == (3,)
    done = subprocess.run([sys.executable, "-m", "kiln.cli", "predict", "topics@1", "--local", "--store",
                           str(models.store), "--input", json.dumps(["a storm with thunder"])],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["labels"] == ["weather"]
    wav = tmp_path / "one.wav"
    wav.write_bytes(wav_bytes(np.zeros(80), 8000))
    done = subprocess.run([sys.executable, "-m", "kiln.cli", "predict", "keywords@1", "--local", "--store",
                           str(models.store), "--file", str(wav)], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["labels"] == audio.labels


def test_a_real_server_takes_text_and_answers_labels(models: Models):
    """End to end, as `curl -d '{"inputs": [...]}'` sends it (curl's -d says application/x-www-form-urlencoded)."""
    with Store(models.store) as store:
        store.promote("topics", 1, "production")
    with ServerProcess("topics@production", models.store, "--no-access-log") as server:
        server.wait_ready()
        body = json.dumps({"inputs": ["the striker scored a late goal", "expect rain and strong wind"]})
        reply = httpx.post(f"{server.url}/v1/models/topics:predict", content=body,
                           headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["labels"] == ["sports", "weather"]
        assert server.terminate() == 0
