"""The Open Inference Protocol in process: tritonclient's binary tensor data, the metadata and config routes, and
non-finite outputs (named in JSON, never null)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch
from torch import nn

from kiln.serve import KilnApp, ServeConfig, create_app
from kiln.serve.runtime import LoadedRuntime, TorchRunner
from kiln.serve.tensors import specs_from_signature

from .conftest import Served, client_for, reference_outputs, run

PATH = "/v2/models/mlp/infer"


def rows(count: int) -> np.ndarray:
    return torch.rand(count, 64, generator=torch.Generator().manual_seed(7)).numpy()


def binary_request(x: np.ndarray, **parameters: object) -> tuple[bytes, dict[str, str]]:
    """What tritonclient sends by default: the JSON object, then each input's bytes (little-endian, row-major)."""
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
    header = orjson.dumps({"inputs": [tensor], **parameters})
    headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
    return header + x.astype("<f4").tobytes(), headers


def test_binary_tensor_data_in_and_out(served: Served):
    x = rows(3)
    expected = reference_outputs(served.module, x).numpy()

    async def main() -> None:
        async with client_for(create_app("mlp@production", store=served.store)) as client:
            # tritonclient's default: binary inputs, and no outputs named, so binary_data_output for all of them
            body, headers = binary_request(x, parameters={"binary_data_output": True})
            response = await client.post(PATH, content=body, headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/octet-stream"
            length = int(response.headers["inference-header-content-length"])
            (out,) = orjson.loads(response.content[:length])["outputs"]
            assert (
                out["shape"] == [3, 10] and out["parameters"] == {"binary_data_size": 3 * 10 * 4} and "data" not in out
            )
            got = np.frombuffer(response.content[length:], dtype="<f4").reshape(3, 10)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            # binary in, JSON out: an output asked for with binary_data false
            body, headers = binary_request(x, outputs=[{"name": "output", "parameters": {"binary_data": False}}])
            response = await client.post(PATH, content=body, headers=headers)
            assert response.status_code == 200 and "inference-header-content-length" not in response.headers
            np.testing.assert_allclose(
                response.json()["outputs"][0]["data"], expected.reshape(-1), rtol=1e-4, atol=1e-5
            )
            # JSON in, binary out
            tensor = {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": x.reshape(-1).tolist()}
            response = await client.post(PATH, json={"inputs": [tensor], "parameters": {"binary_data_output": True}})
            length = int(response.headers["inference-header-content-length"])
            got = np.frombuffer(response.content[length:], dtype="<f4").reshape(3, 10)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    run(main())


def test_malformed_binary_requests_get_400_naming_the_problem(served: Served):
    data = rows(2).astype("<f4").tobytes()  # 512 bytes

    def tensor(size: int) -> dict[str, object]:
        return {"name": "input", "shape": [2, 64], "datatype": "FP32", "parameters": {"binary_data_size": size}}

    def request(payload: dict[str, object], binary: bytes, length: int | str | None = None) -> tuple[bytes, dict]:
        header = orjson.dumps(payload)
        return header + binary, {"inference-header-content-length": str(len(header) if length is None else length)}

    cases = [
        (request({"inputs": [tensor(512)]}, data[:-4]), "binary_data_size 512, but only 508 bytes remain"),
        (request({"inputs": [tensor(512)]}, data + b"\0" * 4), "4 bytes of binary data follow"),
        (request({"inputs": [tensor(508)]}, data[:-4]), "takes 512 bytes"),
        (request({"inputs": [tensor(-1)]}, data), "non-negative integer"),
        (request({"inputs": [{**tensor(512), "data": [0.5] * 128}]}, data), "both 'data' and binary_data_size"),
        (request({"inputs": [tensor(512)]}, data, length=10_000), "but the body has"),
        (request({"inputs": [tensor(512)]}, data, length="ten"), "not a number"),
        ((orjson.dumps({"inputs": [tensor(512)]}), {}), "no Inference-Header-Content-Length header"),
        ((request({"inputs": [tensor(512)]}, data)[0], {}), "send the Inference-Header-Content-Length header"),
    ]

    async def main() -> None:
        async with client_for(create_app("mlp@production", store=served.store)) as client:
            for (content, headers), words in cases:
                response = await client.post(PATH, content=content, headers=headers)
                assert response.status_code == 400 and words in response.json()["error"], (words, response.text)
            nan = np.full((2, 64), np.nan, "<f4").tobytes()
            response = await client.post(PATH, content=request({"inputs": [tensor(512)]}, nan)[0],
                                         headers=request({"inputs": [tensor(512)]}, nan)[1])  # fmt: skip
            assert response.status_code == 422 and "finite" in response.json()["error"]

    run(main())


def test_the_v2_metadata_routes_answer(served: Served):
    async def main() -> None:
        config = ServeConfig(max_batch_size=16, max_delay_ms=2.5)
        async with client_for(create_app("mlp@production", store=served.store, config=config)) as client:
            server = (await client.get("/v2")).json()
            assert server["name"] == "kiln" and "binary_tensor_data" in server["extensions"]
            for path in (
                "/v2/health/live",
                "/v2/health/ready",
                "/v2/models/mlp/ready",
                "/v2/models/mlp/versions/1/ready",
            ):
                assert (await client.get(path)).status_code == 200, path
            for path in ("/v2/models/mlp", "/v2/models/mlp/versions/1"):
                metadata = (await client.get(path)).json()
                assert metadata["versions"] == ["1"] and metadata["inputs"][0]["shape"] == [-1, 64], path
            for path in ("/v2/models/mlp/config", "/v2/models/mlp/versions/1/config"):
                model_config = (await client.get(path)).json()
                assert model_config["max_batch_size"] == 16, path
                assert model_config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
                assert model_config["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}]
                assert model_config["dynamic_batching"] == {"max_queue_delay_microseconds": 2500}
            assert (await client.get("/v2/models/mlp/versions/9/config")).status_code == 404

    run(main())


class LogAndExp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 6)
        return torch.cat([x.log(), x.exp()], dim=1)


def non_finite_app() -> KilnApp:
    """A torch runtime whose outputs are non-finite for some finite inputs: log(0), log(-1), exp(100)."""
    signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3]}],
                 "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 6]}]}  # fmt: skip
    runtime = LoadedRuntime(
        name="edge", version="1", reference="edge@1", run=TorchRunner(LogAndExp(), threads=1),
        inputs=specs_from_signature(signature, "inputs"), outputs=specs_from_signature(signature, "outputs"),
        preprocessing=None, load_seconds=0.0,
    )  # fmt: skip
    return KilnApp(ServeConfig(), lambda: runtime)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_non_finite_outputs_are_named_never_null(protocol: str):
    x = [[0.0, -1.0, 100.0], [1.0, 1.0, 0.0]]
    first = ["-Infinity", "NaN", pytest.approx(4.60517, abs=1e-5), 1.0, pytest.approx(0.367879, abs=1e-5), "Infinity"]
    second = [0.0, 0.0, "-Infinity", pytest.approx(np.e, abs=1e-5), pytest.approx(np.e, abs=1e-5), 1.0]

    async def main() -> None:
        async with client_for(non_finite_app()) as client:
            if protocol == "v1":
                response = await client.post("/v1/models/edge:predict", json={"inputs": x})
                values = response.json()["outputs"]
                assert values == [first, second]
                single = await client.post("/v1/models/edge:predict", json={"inputs": x[0]})
                assert single.json()["outputs"] == first
            else:
                tensor = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x[0] + x[1]}
                response = await client.post("/v2/models/edge/infer", json={"inputs": [tensor]})
                values = response.json()["outputs"][0]["data"]
                assert values == first + second
            assert response.status_code == 200 and b"null" not in response.content
            read_back = np.asarray(values, dtype=np.float32)  # numpy (and float()) read the names back
            assert np.isnan(read_back).sum() == 1 and np.isposinf(read_back).sum() == 1
            assert np.isneginf(read_back).sum() == 2

    run(main())
