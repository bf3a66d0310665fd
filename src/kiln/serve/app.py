"""The ASGI application: routes, bearer-token auth, limits, metrics and access logs around the batcher.

Routes (every one behind the token when the server has one):

    POST /v1/models/{name}:predict      {"inputs": ...} -> {"outputs": ...}
    GET  /v1/models/{name}              version, runtime, signature, preprocessing
    POST /v2/models/{name}/infer        Open Inference Protocol (also /v2/models/{name}/versions/{v}/infer),
                                        JSON or with the binary tensor data extension
    GET  /v2/models/{name}[/versions/{v}][/ready|/config], /v2, /v2/health/live, /v2/health/ready
    GET  /livez, /readyz, /metrics, /openapi.json, /docs
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from .access import AccessLog
from .batcher import Batcher, InferenceFailed, QueueFull, RequestTimeout
from .config import ServeConfig
from .http import Disconnected, Headers, Receive, Response, Send, error_response, json_response, read_body
from .metrics import Metrics
from .openapi import docs_page, openapi
from .protocol import decode_v1, decode_v2, encode_v1, encode_v2, encode_v2_binary, parse_json, split_binary
from .runtime import LoadedRuntime, load_runtime
from .tensors import RequestError, TensorSpec

__all__ = ["KilnApp", "create_app"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("kiln.serve.access")

_RETRY = ((b"retry-after", b"1"),)
_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_OCTETS = b"application/octet-stream"
_MAX_LOGGED_PATH = 200


class KilnApp:
    """Serve one model: load and warm it up in the background, then answer through a dynamic batcher.

    ``/livez`` answers at once; ``/readyz`` and the prediction routes answer 503 until the model is loaded,
    hash-verified and warmed up. ``loader`` returns the runtime (tests pass their own).

    Example:
        >>> app = create_app("digits@production", store=".kiln")
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """

    def __init__(self, config: ServeConfig, loader: Callable[[], LoadedRuntime]) -> None:
        self.config = config
        self.loader = loader
        self.metrics = Metrics()
        self.runtime: LoadedRuntime | None = None
        self.batcher: Batcher | None = None
        self.failure: str | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._preloaded: LoadedRuntime | None = None
        self._token = config.token.encode() if config.token else None
        self._access = False
        self.access = AccessLog(access_logger)

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.runtime is not None

    # ---------------------------------------------------------------- lifecycle
    async def startup(self, *, wait: bool = False) -> None:
        """Begin loading in a background thread (``wait``: until loaded and warm, raising if that fails)."""
        self._access = self.config.access_log and access_logger.isEnabledFor(logging.INFO)
        if self._task is None:
            self._task = asyncio.create_task(self._load())
        if wait:
            await asyncio.shield(self._task)
            if self.failure is not None:
                raise RuntimeError(self.failure)

    async def shutdown(self) -> None:
        """Answer every queued request, then stop the inference thread."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.batcher is not None:
            await self.batcher.close()
        self.access.flush()

    def _load_and_warm(self) -> LoadedRuntime:
        threads = self.config.intra_op_threads
        runtime = self.loader()
        started = time.perf_counter()
        if self.config.warmup:
            sizes = sorted({1, 2, max(1, self.config.max_batch_size // 2), self.config.max_batch_size})
            runtime.warm_up(sizes * 2)
        logger.info(
            "loaded %s (%s runtime, %d intra-op thread%s) in %.2f s, warmed up in %.2f s",
            runtime.reference, runtime.kind, threads, "" if threads == 1 else "s", runtime.load_seconds,
            time.perf_counter() - started,
        )  # fmt: skip
        return runtime

    def preload(self) -> None:
        """Load and warm up now, in this thread (a worker process does this before it accepts connections)."""
        self._preloaded = self._load_and_warm()

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            preloaded = self._preloaded
            runtime = preloaded if preloaded is not None else await loop.run_in_executor(None, self._load_and_warm)
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
            logger.error("could not load the model: %s", self.failure)
            if self.on_failure is not None:
                self.on_failure(error)
            return
        batcher = Batcher(
            runtime.run,
            max_batch_size=self.config.max_batch_size,
            max_delay_s=self.config.max_delay_ms / 1000.0,
            max_queue=self.config.max_queue,
            timeout_s=self.config.timeout_s,
            metrics=self.metrics,
            on_thread_start=runtime.run.setup_thread,
        )
        batcher.start()
        self.runtime, self.batcher = runtime, batcher
        logger.info("ready: %s on pid %d", runtime.reference, os.getpid())

    # ---------------------------------------------------------------- ASGI
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = Headers(scope["headers"])
        route = "other"
        try:
            if self._token is not None and not _authorized(headers.authorization, self._token):
                self.metrics.error("unauthorized")
                raise RequestError(401, "missing or wrong bearer token.", headers=((b"www-authenticate", b"Bearer"),))
            route, name = _resolve(scope["path"], scope["method"])
            if route == "v1_predict" or route == "v2_infer":
                response = await self._predict(name, receive, headers, v2=route == "v2_infer")
            else:
                response = _GET_HANDLERS[route](self, name)
        except RequestError as error:
            response = error_response(error)
        except Disconnected:
            self._log(scope, headers, route, 499, 0, started)
            return
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], scope["path"][:_MAX_LOGGED_PATH])
            self.metrics.error("internal")
            response = json_response({"error": "internal server error"}, 500)
        if headers.unread_body and not any(name == b"connection" for name, _ in response.headers):
            response.headers = (*response.headers, (b"connection", b"close"))
        await response.send(send)
        self.metrics.request(route, response.status, time.perf_counter() - started)
        if self._access:
            self._log(scope, headers, route, response.status, len(response.body), started)

    def _log(self, scope: dict[str, Any], headers: Headers, route: str, status: int, size: int, started: float) -> None:
        client = scope.get("client")
        entry = {
            "method": scope["method"], "path": scope["path"][:_MAX_LOGGED_PATH], "route": route, "status": status,
            "ms": round((time.perf_counter() - started) * 1000.0, 3), "bytes": size,
            "client": client[0] if client else None,
        }  # fmt: skip
        if headers.request_id is not None:
            entry["request_id"] = headers.request_id.decode("latin-1")
        self.access.add(entry)

    # ---------------------------------------------------------------- prediction
    def _runtime(self, name: str) -> LoadedRuntime:
        """The loaded runtime, if ``name`` (``"name"`` or ``"name@version"``) is what this server serves."""
        runtime = self.runtime
        if runtime is None:
            raise RequestError(503, "the model is still loading; retry shortly.", headers=_RETRY)
        name, _, version = name.partition("@")
        if name != runtime.name:
            raise RequestError(404, f"model {name[:64]!r} is not served here; this server serves {runtime.name!r}.")
        if version and version != runtime.version:
            raise RequestError(
                404, f"version {version[:16]!r} is not served here; this server serves version {runtime.version}."
            )
        return runtime

    async def _predict(self, name: str, receive: Receive, headers: Headers, *, v2: bool) -> Response:
        runtime = self._runtime(name)
        batcher = self.batcher
        assert batcher is not None
        config = self.config
        body = await read_body(receive, headers, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)
        if not v2:
            decoded = decode_v1(parse_json(body), runtime.inputs)
        elif headers.inference_header_length is None:
            decoded = decode_v2(parse_json(body), runtime.inputs, runtime.outputs)
        else:  # the binary tensor data extension: a JSON object, then the binary inputs
            header, binary = split_binary(body, headers.inference_header_length)
            decoded = decode_v2(parse_json(header), runtime.inputs, runtime.outputs, binary=binary)
        try:
            outputs = await batcher.submit(decoded.arrays)
        except QueueFull:
            raise RequestError(
                503, "the server is at capacity (request queue full); retry shortly.", headers=_RETRY
            ) from None
        except RequestTimeout:
            self.metrics.error("timeout")
            raise RequestError(504, f"the request was not answered within {config.timeout_s:g} s.") from None
        except InferenceFailed:
            raise RequestError(500, "the model failed on this request; the server log has the details.") from None
        if v2 and decoded.binary_outputs:
            body, length = encode_v2_binary(
                outputs, runtime.outputs, model=runtime.name, version=runtime.version, decoded=decoded
            )
            return Response(200, body, _OCTETS, ((b"inference-header-content-length", b"%d" % length),))
        if v2:
            body = encode_v2(outputs, runtime.outputs, model=runtime.name, version=runtime.version, decoded=decoded)
        else:
            body = encode_v1(outputs, runtime.outputs, decoded.single)
        return Response(200, body)

    # ---------------------------------------------------------------- metadata, health, docs
    def _v1_metadata(self, name: str) -> Response:
        runtime = self._runtime(name)
        return json_response({
            "name": runtime.name, "version": runtime.version, "reference": runtime.reference,
            "runtime": runtime.kind, "preprocessing": runtime.preprocessing,
            "inputs": [{"name": s.name, "dtype": s.dtype.name, "shape": [None, *s.shape]} for s in runtime.inputs],
            "outputs": [{"name": s.name, "dtype": s.dtype.name, "shape": [None, *s.shape]} for s in runtime.outputs],
        })  # fmt: skip

    def _v2_metadata(self, name: str) -> Response:
        runtime = self._runtime(name)
        return json_response({
            "name": runtime.name, "versions": [runtime.version],
            "platform": "onnxruntime_onnx" if runtime.kind == "onnx" else "pytorch_torch",
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": s.batched_shape} for s in runtime.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": s.batched_shape} for s in runtime.outputs],
        })  # fmt: skip

    def _v2_config(self, name: str) -> Response:
        """The model configuration in Triton's shape (``tritonclient``'s ``get_model_config``)."""
        runtime = self._runtime(name)

        def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": s.batched_shape[1:]} for s in specs]

        onnx = runtime.kind == "onnx"
        return json_response({
            "name": runtime.name, "platform": "onnxruntime_onnx" if onnx else "pytorch_torch",
            "backend": "onnxruntime" if onnx else "pytorch", "max_batch_size": self.config.max_batch_size,
            "input": tensors(runtime.inputs), "output": tensors(runtime.outputs),
            "dynamic_batching": {"max_queue_delay_microseconds": round(self.config.max_delay_ms * 1000)},
        })  # fmt: skip

    def _v2_model_ready(self, name: str) -> Response:
        self._runtime(name)
        return json_response({"name": name, "ready": True})

    def _live(self, name: str) -> Response:
        return json_response({"live": True})

    def _ready_check(self, name: str) -> Response:
        if self.ready:
            return json_response({"ready": True})
        reason = "loading failed; see the server log" if self.failure else "loading and warming up the model"
        return json_response({"ready": False, "reason": reason}, 503, _RETRY)

    def _server_metadata(self, name: str) -> Response:
        return json_response({"name": "kiln", "version": __version__, "extensions": _EXTENSIONS})

    def _render_metrics(self, name: str) -> Response:
        runtime = self.runtime
        info = {"model": runtime.name, "version": runtime.version, "runtime": runtime.kind} if runtime else {}
        depth = self.batcher.depth if self.batcher is not None else 0
        return Response(200, self.metrics.render(queue_depth=depth, ready=self.ready, info=info), _TEXT)

    def _document(self) -> dict[str, Any]:
        runtime = self.runtime
        return openapi(runtime.name if runtime else None, runtime.inputs if runtime else (),
                       runtime.outputs if runtime else ())  # fmt: skip

    def _openapi(self, name: str) -> Response:
        return json_response(self._document())

    def _docs(self, name: str) -> Response:
        return Response(200, docs_page(self._document()), b"text/html; charset=utf-8")


_EXTENSIONS = ["binary_tensor_data", "model_configuration"]


def _authorized(value: bytes | None, token: bytes) -> bool:
    """``Authorization: Bearer <token>``, the scheme in any case (RFC 9110: auth schemes are case-insensitive);
    the token is compared in constant time."""
    if value is None:
        return False
    scheme, _, credentials = value.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.lstrip(b" "), token)


# GET routes with a fixed path -> route label (the metrics label and the handler's key)
_FIXED = {
    "/livez": "live", "/v2/health/live": "live", "/readyz": "ready", "/v2/health/ready": "ready",
    "/v2": "v2_server", "/metrics": "metrics", "/openapi.json": "openapi", "/docs": "docs",
}  # fmt: skip
_GET_HANDLERS: dict[str, Callable[[KilnApp, str], Response]] = {
    "live": KilnApp._live, "ready": KilnApp._ready_check, "v2_server": KilnApp._server_metadata,
    "metrics": KilnApp._render_metrics, "openapi": KilnApp._openapi, "docs": KilnApp._docs,
    "v1_metadata": KilnApp._v1_metadata, "v2_metadata": KilnApp._v2_metadata, "v2_ready": KilnApp._v2_model_ready,
    "v2_config": KilnApp._v2_config,
}  # fmt: skip


_V2_MODEL_ROUTES = {"": "v2_metadata", "ready": "v2_ready", "config": "v2_config"}


def _resolve(path: str, method: str) -> tuple[str, str]:
    """``(route label, model name)`` for a path; 404 for unknown paths, 405 for a wrong method."""
    route, name, allowed = _FIXED.get(path), "", "GET"
    if route is None and path.startswith("/v1/models/"):
        name = path[11:]
        if name.endswith(":predict"):
            route, name, allowed = "v1_predict", name[:-8], "POST"
        else:
            route = "v1_metadata"
    elif route is None and path.startswith("/v2/models/"):
        name, _, tail = path[11:].partition("/")
        if tail.startswith("versions/"):
            version, _, tail = tail[9:].partition("/")
            name = f"{name}@{version}"  # checked against the served version by KilnApp._runtime
        if tail == "infer":
            route, allowed = "v2_infer", "POST"
        elif tail in _V2_MODEL_ROUTES:
            route = _V2_MODEL_ROUTES[tail]
    if route is None:
        raise RequestError(404, "no such route; see /docs.")
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise RequestError(405, f"use {allowed} here.", headers=((b"allow", allowed.encode()),))
    return route, name


def create_app(reference: str | os.PathLike[str], *, store: Any = None, config: ServeConfig | None = None) -> KilnApp:
    """An ASGI app serving ``reference`` (``"digits@production"`` from ``store``, or a package directory Path).

    Example:
        >>> app = create_app("digits@production", store=".kiln", config=ServeConfig(max_batch_size=32))
        >>> # uvicorn.run(app) or, in tests, httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    """
    chosen = config or ServeConfig()
    threads = chosen.intra_op_threads
    return KilnApp(
        chosen,
        lambda: load_runtime(reference, store=store, runtime=chosen.runtime, threads=threads, trust=chosen.trust),
    )
