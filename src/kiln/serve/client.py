"""``kiln.serve.Client``: a small synchronous client over httpx for a running ``kiln serve``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import KilnError

__all__ = ["Client", "ServerError"]


class ServerError(KilnError):
    """The server answered with an error status; ``status`` is the HTTP code, the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


_V2_TYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64", "int32": "INT32",
             "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}  # fmt: skip


def _numbers(value: Any) -> np.ndarray:
    """An output as an array; the server names non-finite values ("NaN", "Infinity", "-Infinity": JSON has no
    such numbers), and numpy reads those names back as floats."""
    array = np.asarray(value)
    return np.asarray(value, dtype=np.float64) if array.dtype.kind in "UO" else array


def _wire(value: Any) -> Any:
    """numpy arrays go to orjson as they are (it needs them C-contiguous); anything else as given."""
    return np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value


class Client:
    """Talk to a kiln server: ``predict`` (kiln JSON), ``infer`` (Open Inference Protocol), health and metadata.

    Example:
        >>> with Client("http://127.0.0.1:8000", token=os.environ.get("KILN_TOKEN")) as client:
        ...     client.wait_ready(timeout=30)
        ...     probabilities = client.predict("digits", x[:4])    # numpy array, shape (4, 10)
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        import orjson

        content = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY) if payload is not None else None
        return self._raw(method, path, content, "application/json" if content is not None else None)

    def _raw(self, method: str, path: str, content: bytes | None, content_type: str | None) -> Any:
        import orjson

        headers = {"content-type": content_type} if content_type is not None else None
        response = self._http.request(method, path, content=content, headers=headers)
        body = orjson.loads(response.content) if response.content else None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else response.text[:200]
            raise ServerError(response.status_code, str(message))
        return body

    def live(self) -> bool:
        """True when the server process answers."""
        try:
            return self._http.get("/livez").status_code == 200
        except Exception:
            return False

    def ready(self) -> bool:
        """True once the model is loaded and warmed up."""
        try:
            return self._http.get("/readyz").status_code == 200
        except Exception:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Poll ``/readyz`` until it answers 200; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within {timeout:g} s")
            time.sleep(interval)

    def metadata(self, model: str) -> dict[str, Any]:
        """Version, runtime, signature and preprocessing of the served ``model``."""
        return dict(self._json("GET", f"/v1/models/{model}"))

    def predict(self, model: str, inputs: Any) -> Any:
        """Outputs for ``inputs`` (one sample or a batch; a dict for several inputs) as numpy arrays."""
        return self.answer(model, inputs)["outputs"]

    def answer(
        self, model: str, inputs: Any = None, *, data: bytes | None = None, content_type: str | None = None
    ) -> dict[str, Any]:
        """The whole v1 answer, ``{"outputs": arrays, "labels": ...}`` (labels when the package declares its classes),
        for ``inputs`` as :meth:`predict` takes them, or for one file: ``data`` with its ``content_type``
        (``audio/wav``, ``image/png``, ``image/jpeg``, ``text/plain``) for a model that declares its preprocessing.

        Example:
            >>> client.answer("keywords", data=Path("yes.wav").read_bytes(), content_type="audio/wav")["labels"]
            'yes'
        """
        if data is not None:
            answer = self._raw("POST", f"/v1/models/{model}:predict", data, content_type or "application/octet-stream")
        else:
            wire = {k: _wire(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) else _wire(inputs)
            answer = self._json("POST", f"/v1/models/{model}:predict", {"inputs": wire})
        outputs = answer["outputs"]
        if isinstance(outputs, dict):
            answer["outputs"] = {name: _numbers(value) for name, value in outputs.items()}
        else:
            answer["outputs"] = _numbers(outputs)
        return dict(answer)

    def infer(self, model: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Open Inference Protocol inference: ``{name: array}`` in, ``{name: array}`` out (shaped, typed)."""
        tensors = []
        for name, value in inputs.items():
            array = np.asarray(value)
            datatype = _V2_TYPES.get(array.dtype.name)
            if datatype is None:
                raise KilnError(f"input {name!r} has dtype {array.dtype}; send one of {sorted(_V2_TYPES)}.")
            tensors.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                            "data": np.ascontiguousarray(array).reshape(-1)})  # fmt: skip
        result = self._json("POST", f"/v2/models/{model}/infer", {"inputs": tensors})
        reverse = {v: k for k, v in _V2_TYPES.items()}
        return {
            out["name"]: np.asarray(out["data"], dtype=reverse.get(out["datatype"])).reshape(out["shape"])
            for out in result["outputs"]
        }
