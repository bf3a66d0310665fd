"""The ASGI app in process (httpx ASGITransport): predictions, both protocols, readiness, auth, limits, metrics."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import orjson
import pytest
import torch

from kiln.serve import KilnApp, ServeConfig, create_app
from kiln.serve.runtime import load_runtime

from .conftest import Served, client_for, reference_outputs, run

TOKEN = "t0ken-for-tests-0123456789"


def app_for(served: Served, **options) -> KilnApp:
    return create_app("mlp@production", store=served.store, config=ServeConfig(**options))


def inputs(rows: int, seed: int = 0) -> list[list[float]]:
    return torch.rand(rows, 64, generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_predictions_match_the_module_in_process(served: Served, runtime: str):
    x = inputs(5)
    expected = reference_outputs(served.module, x).numpy()

    async def main() -> None:
        async with client_for(app_for(served, runtime=runtime)) as client:
            batch = await client.post("/v1/models/mlp:predict", json={"inputs": x})
            assert batch.status_code == 200, batch.text
            np.testing.assert_allclose(batch.json()["outputs"], expected, rtol=1e-4, atol=1e-5)
            single = await client.post("/v1/models/mlp:predict", json={"inputs": x[0]})
            np.testing.assert_allclose(single.json()["outputs"], expected[0], rtol=1e-4, atol=1e-5)
            meta = (await client.get("/v1/models/mlp")).json()
            assert meta["runtime"] == runtime and meta["version"] == "1" and meta["preprocessing"] == {"scale": 1 / 16}

    run(main())


def test_open_inference_protocol(served: Served):
    x = np.asarray(inputs(3), dtype=np.float32)
    expected = reference_outputs(served.module, x).numpy()

    async def main() -> None:
        async with client_for(app_for(served)) as client:
            body = {"id": "req-7", "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                                               "data": x.reshape(-1).tolist()}]}  # fmt: skip
            for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"):
                response = await client.post(path, json=body)
                assert response.status_code == 200, response.text
                result = response.json()
                assert result["model_name"] == "mlp" and result["model_version"] == "1" and result["id"] == "req-7"
                (out,) = result["outputs"]
                assert out["shape"] == [3, 10] and out["datatype"] == "FP32"
                np.testing.assert_allclose(np.reshape(out["data"], (3, 10)), expected, rtol=1e-4, atol=1e-5)
            meta = (await client.get("/v2/models/mlp")).json()
            assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
            assert meta["platform"] == "onnxruntime_onnx"
            assert (await client.get("/v2/models/mlp/ready")).status_code == 200
            assert (await client.get("/v2/health/live")).status_code == 200
            assert (await client.get("/v2/health/ready")).status_code == 200
            assert (await client.get("/v2")).json()["name"] == "kiln"
            wrong = await client.post("/v2/models/mlp/versions/2/infer", json=body)
            assert wrong.status_code == 404 and "version" in wrong.json()["error"]

    run(main())


def test_concurrent_requests_form_batches_and_each_gets_its_own_answer(served: Served):
    x = inputs(64, seed=1)
    expected = reference_outputs(served.module, x).numpy()

    async def main() -> str:
        async with client_for(app_for(served, max_delay_ms=20)) as client:
            responses = await asyncio.gather(
                *[client.post("/v1/models/mlp:predict", json={"inputs": [row]}) for row in x]
            )
            for response, want in zip(responses, expected, strict=True):
                assert response.status_code == 200
                np.testing.assert_allclose(response.json()["outputs"], [want], rtol=1e-4, atol=1e-5)
            return (await client.get("/metrics")).text

    metrics = run(main())
    count = _metric(metrics, "kiln_batch_size_count")
    total = _metric(metrics, "kiln_batch_size_sum")
    assert total >= 64 and count < 64, (count, total)  # fewer model calls than requests: batches formed


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or
               line.startswith(name + "{"))  # fmt: skip


def test_readiness_fails_until_the_model_is_loaded_and_warm(served: Served):
    gate = threading.Event()
    config = ServeConfig()

    def slow_loader():
        assert gate.wait(timeout=30)
        return load_runtime("mlp@production", store=served.store)

    async def main() -> None:
        app = KilnApp(config, slow_loader)
        await app.startup()
        async with client_for(app, start=False) as client:
            assert (await client.get("/livez")).status_code == 200
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
            assert (await client.get("/v2/health/ready")).status_code == 503
            early = await client.post("/v1/models/mlp:predict", json={"inputs": [0.0] * 64})
            assert early.status_code == 503
            gate.set()
            for _ in range(400):  # bounded poll while the loader thread finishes
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.025)
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/v1/models/mlp:predict", json={"inputs": [0.0] * 64})).status_code == 200

    run(main())


def test_a_failed_load_never_becomes_ready(served: Served):
    async def main() -> None:
        app = create_app("mlp@9", store=served.store)
        with pytest.raises(RuntimeError, match="NotFoundError"):
            await app.startup(wait=True)
        async with client_for(app, start=False) as client:
            response = await client.get("/readyz")
            assert response.status_code == 503 and "failed" in response.json()["reason"]
            assert str(served.store) not in response.text

    run(main())


def test_token_is_required_on_every_route(served: Served):
    routes = ["/livez", "/readyz", "/metrics", "/docs", "/openapi.json", "/v2/health/live", "/v2/models/mlp",
              "/v1/models/mlp", "/nope"]  # fmt: skip

    async def main() -> None:
        app = app_for(served, token=TOKEN)
        async with client_for(app) as anonymous:
            for route in routes:
                response = await anonymous.get(route)
                assert response.status_code == 401, route
                assert response.headers["www-authenticate"] == "Bearer"
            for header in (f"Bearer {TOKEN[:-1]}x", TOKEN, f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN} "):
                wrong = await anonymous.post("/v1/models/mlp:predict", json={"inputs": [0.0] * 64},
                                             headers={"authorization": header})  # fmt: skip
                assert wrong.status_code == 401, header
            good = {"authorization": f"Bearer {TOKEN}"}
            assert (await anonymous.get("/readyz", headers=good)).status_code == 200
            for scheme in ("bearer", "BEARER"):  # auth schemes are case-insensitive (RFC 9110, 11.1)
                assert (
                    await anonymous.get("/readyz", headers={"authorization": f"{scheme} {TOKEN}"})
                ).status_code == 200
            ok = await anonymous.post("/v1/models/mlp:predict", json={"inputs": [0.0] * 64}, headers=good)
            assert ok.status_code == 200

    run(main())


def test_limits_and_errors_never_leak_paths(served: Served):
    async def main() -> None:
        async with client_for(app_for(served, max_body_bytes=2048)) as client:
            big = await client.post("/v1/models/mlp:predict", content=b"[" + b"0," * 2000 + b"0]")
            assert big.status_code == 413 and "2048" in big.json()["error"]
            checks = [
                (await client.get("/v1/models/mlp:predict"), 405),
                (await client.post("/livez"), 405),
                (await client.get("/v1/models/other"), 404),
                (await client.post("/v1/models/../../etc/passwd:predict", content=b"{}"), 404),
                (await client.get("/no/such/route"), 404),
                (await client.post("/v1/models/mlp:predict", content=b"{bad json"), 400),
                (await client.post("/v1/models/mlp:predict", json={"inputs": [[0.0] * 63]}), 422),
            ]
            for response, status in checks:
                assert response.status_code == status, (response.request.url, response.text)
                body = response.json()
                assert set(body) == {"error"}
                assert str(served.store) not in body["error"] and "Traceback" not in body["error"]
            unread = await client.post("/v2/models/other/infer", content=b"x" * 1000)  # refused before reading
            assert unread.status_code == 404 and unread.headers["connection"] == "close"
            assert (await client.post("/v1/models/mlp:predict", json={"inputs": [0.0] * 64})).status_code == 200

    run(main())


def test_metrics_docs_and_openapi(served: Served):
    async def main() -> None:
        async with client_for(app_for(served)) as client:
            await client.post("/v1/models/mlp:predict", json={"inputs": [0.0] * 64})
            await client.post("/v1/models/mlp:predict", json={"inputs": ["x"] * 64})
            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = metrics.text
            assert 'kiln_requests_total{route="v1_predict",code="200"} 1' in text
            assert 'kiln_requests_total{route="v1_predict",code="422"} 1' in text
            assert 'kiln_model_info{model="mlp",runtime="onnx",version="1"} 1' in text
            for name in ("kiln_request_duration_seconds_bucket", "kiln_batch_size_bucket", "kiln_queue_depth",
                         "kiln_inference_duration_seconds_count", "kiln_ready 1"):  # fmt: skip
                assert name in text
            document = (await client.get("/openapi.json")).json()
            assert "/v1/models/mlp:predict" in document["paths"] and "/v2/models/mlp/infer" in document["paths"]
            schema = document["paths"]["/v1/models/mlp:predict"]["post"]["requestBody"]["content"]
            assert orjson.dumps(schema).count(b'"maxItems":64') >= 1
            docs = await client.get("/docs")
            assert docs.status_code == 200 and b"/openapi.json" in docs.content and b"<script" not in docs.content

    run(main())


def test_access_log_lines_are_json(served: Served, caplog: pytest.LogCaptureFixture):
    async def main() -> None:
        async with client_for(app_for(served)) as client:
            await client.get("/livez", headers={"x-request-id": "abc"})

    with caplog.at_level("INFO", logger="kiln.serve.access"):
        run(main())
    lines = [line for r in caplog.records if r.name == "kiln.serve.access" for line in r.getMessage().splitlines()]
    entry = orjson.loads(lines[-1])
    assert entry["path"] == "/livez" and entry["status"] == 200 and entry["request_id"] == "abc" and entry["ms"] >= 0
