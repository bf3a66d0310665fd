"""The ASGI application: routes, bearer-token auth, limits, metrics and access logs around the batcher.

Routes (every one behind the token when the server has one):

    POST /v1/models/{name}:predict      {"inputs": ...} -> {"outputs": ...}; with declared preprocessing
                                        (kiln.export.preprocess) raw texts, files or rows -> outputs and "labels"
    GET  /v1/models/{name}              version, runtime, signature, preprocessing and what the server applies
    POST /v2/models/{name}/infer        Open Inference Protocol (also /v2/models/{name}/versions/{v}/infer),
                                        JSON or with the binary tensor data extension
    GET  /v2/models/{name}[/versions/{v}][/ready|/config], /v2, /v2/health/live, /v2/health/ready
    GET  /livez, /readyz, /metrics, /openapi.json, /docs
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from .access import AccessLog
from .batcher import Batcher, InferenceFailed, QueueFull, RequestTimeout
from .config import ServeConfig
from .follow import Follower, follow_reference
from .http import Disconnected, Headers, Receive, Response, Send, error_response, json_response, read_body
from .metrics import Metrics
from .openapi import docs_page, openapi
from .protocol import (
    Decoded,
    decode_declared,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2,
    encode_v2_binary,
    media_kind,
    parse_json,
    split_binary,
)
from .routes import authorized, resolve
from .runtime import LoadedRuntime, load_runtime
from .tensors import RequestError, TensorSpec

__all__ = ["KilnApp", "create_app"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("kiln.serve.access")

_RETRY = ((b"retry-after", b"1"),)
_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_OCTETS = b"application/octet-stream"
_MAX_LOGGED_PATH = 200
_VERSION_HEADER = b"kiln-model-version"
_INLINE_DECODE_BYTES = 64 << 10  # a declared-preprocessing body up to this size is decoded on the event loop


@dataclass(frozen=True)
class _Serving:
    """A runtime and the batcher that feeds it: what requests go to until a switch replaces it."""

    runtime: LoadedRuntime
    batcher: Batcher
    headers: tuple[tuple[bytes, bytes], ...]  # Kiln-Model-Version, on every prediction it answers


class KilnApp:
    """Serve one model: load and warm it up in the background, then answer through a dynamic batcher.

    ``/livez`` answers at once; ``/readyz`` and the prediction routes answer 503 until the model is loaded,
    hash-verified and warmed up. ``loader`` returns the runtime (tests pass their own); a ``follower`` then keeps
    the app on the version its alias names (:mod:`kiln.serve.follow`), through :meth:`switch`.

    Example:
        >>> app = create_app("digits@production", store=".kiln")
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """

    def __init__(
        self, config: ServeConfig, loader: Callable[[], LoadedRuntime], *, follower: Follower | None = None
    ) -> None:
        self.config = config
        self.loader = loader
        self.follower = follower
        self.metrics = Metrics()
        self.failure: str | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self._serving: _Serving | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._preloaded: LoadedRuntime | None = None
        self._token = config.token.encode() if config.token else None
        self._access = False
        self.access = AccessLog(access_logger)

    @property
    def runtime(self) -> LoadedRuntime | None:
        """The runtime that answers new requests now (None until the first one is loaded and warm)."""
        return self._serving.runtime if self._serving is not None else None

    @property
    def batcher(self) -> Batcher | None:
        return self._serving.batcher if self._serving is not None else None

    @property
    def ready(self) -> bool:
        return self._serving is not None

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
        """Stop following, answer every queued request, then stop the inference threads."""
        for task in (self._task, self._following):
            if task is not None and not task.done():
                task.cancel()
        if self._serving is not None:
            await self._serving.batcher.close()
        if self._retiring:
            await asyncio.gather(*self._retiring)
        self.access.flush()

    def load_and_warm(self, loader: Callable[[], LoadedRuntime], *, check: bool = False) -> LoadedRuntime:
        """``loader()``, then the warm-up at every batch size the batcher forms (with ``warmup=False``, only when
        ``check``: one batch of one, which checks the outputs against the signature). Raises if either fails."""
        threads = self.config.intra_op_threads
        runtime = loader()
        started = time.perf_counter()
        if self.config.warmup:
            sizes = sorted({1, 2, max(1, self.config.max_batch_size // 2), self.config.max_batch_size})
            runtime.warm_up(sizes * 2)
        elif check:
            runtime.warm_up([1])
        logger.info(
            "loaded %s (%s runtime, %d intra-op thread%s) in %.2f s, warmed up in %.2f s",
            runtime.reference, runtime.kind, threads, "" if threads == 1 else "s", runtime.load_seconds,
            time.perf_counter() - started,
        )  # fmt: skip
        return runtime

    def preload(self) -> None:
        """Load and warm up now, in this thread (a worker process does this before it accepts connections)."""
        self._preloaded = self.load_and_warm(self.loader)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            preloaded = self._preloaded
            runtime = preloaded if preloaded is not None else await loop.run_in_executor(None, self.load_and_warm,
                                                                                          self.loader)  # fmt: skip
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
            logger.error("could not load the model: %s", self.failure)
            if self.on_failure is not None:
                self.on_failure(error)
            return
        self._serving = self._start(runtime)
        logger.info("ready: %s on pid %d", runtime.reference, os.getpid())
        if self.follower is not None:
            self._following = asyncio.create_task(self.follower.run(self))
            self._following.add_done_callback(_report_stop)

    def _start(self, runtime: LoadedRuntime) -> _Serving:
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
        return _Serving(runtime, batcher, ((_VERSION_HEADER, runtime.version.encode()),))

    def switch(self, runtime: LoadedRuntime, *, reason: str = "switch") -> None:
        """Serve ``runtime`` (loaded and warm) from now on; call on the event loop, once the app is ready.

        One assignment moves every new request to the new runtime. A request picks the runtime it uses and joins
        that runtime's queue in one step, with no ``await`` between, so no request straddles the switch: what was
        queued before it is answered by the old runtime, whose batcher is then closed and the runtime released.
        """
        old = self._serving
        assert old is not None, "switch() before the first version serves"
        self._serving = self._start(runtime)
        self.metrics.switch("ok")
        logger.info("%s: switched from %s to %s", reason, old.runtime.reference, runtime.reference)
        retiring = asyncio.create_task(old.batcher.close())
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

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
            if self._token is not None and not authorized(headers.authorization, self._token):
                self.metrics.error("unauthorized")
                raise RequestError(401, "missing or wrong bearer token.", headers=((b"www-authenticate", b"Bearer"),))
            route, name = resolve(scope["path"], scope["method"])
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
        return self._serving_for(name).runtime

    def _serving_for(self, name: str) -> _Serving:
        """What serves ``name`` now; 503 while loading, 404 for another name or version."""
        serving = self._serving
        if serving is None:
            raise RequestError(503, "the model is still loading; retry shortly.", headers=_RETRY)
        runtime = serving.runtime
        name, _, version = name.partition("@")
        if name != runtime.name:
            raise RequestError(404, f"model {name[:64]!r} is not served here; this server serves {runtime.name!r}.")
        if version and version != runtime.version:
            raise RequestError(
                404, f"version {version[:16]!r} is not served here; this server serves version {runtime.version}."
            )
        return serving

    async def _predict(self, name: str, receive: Receive, headers: Headers, *, v2: bool) -> Response:
        self._serving_for(name)  # refuse before reading the body
        config = self.config
        body = await read_body(receive, headers, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)
        # From here to submit() nothing awaits (but a file's decoding, re-done if a switch happened meanwhile): the
        # request is decoded for, and queued on, the same runtime even when a switch happens while it waits.
        serving = self._serving_for(name)
        runtime = serving.runtime
        media = None if v2 else media_kind(headers.content_type)
        steps = None if v2 else runtime.steps
        if steps is not None and steps.input is not None:
            while steps.files or len(body) > _INLINE_DECODE_BYTES:  # files and long texts: off the event loop
                decoded = await asyncio.get_running_loop().run_in_executor(
                    None, decode_declared, body, media, steps, runtime.inputs
                )
                if self._serving is serving:
                    break
                serving = self._serving_for(name)  # a new version came in while decoding: decode for that one
                runtime = serving.runtime
                steps = runtime.steps
                if steps is None or steps.input is None:
                    decoded = self._decode_plain(body, media, runtime)
                    break
            else:
                decoded = decode_declared(body, media, steps, runtime.inputs)  # short texts and rows: microseconds
        elif not v2:
            decoded = self._decode_plain(body, media, runtime)
        elif headers.inference_header_length is None:
            decoded = decode_v2(parse_json(body), runtime.inputs, runtime.outputs)
        else:  # the binary tensor data extension: a JSON object, then the binary inputs
            header, binary = split_binary(body, headers.inference_header_length)
            decoded = decode_v2(parse_json(header), runtime.inputs, runtime.outputs, binary=binary)
        try:
            outputs = await serving.batcher.submit(decoded.arrays)
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
            return Response(
                200, body, _OCTETS, ((b"inference-header-content-length", b"%d" % length), *serving.headers)
            )
        if v2:
            body = encode_v2(outputs, runtime.outputs, model=runtime.name, version=runtime.version, decoded=decoded)
        else:
            steps = runtime.steps
            labels = steps.labels(outputs[0]) if steps is not None and steps.classes is not None else None
            body = encode_v1(outputs, runtime.outputs, decoded.single, labels)
        return Response(200, body, headers=serving.headers)

    @staticmethod
    def _decode_plain(body: bytes, media: str | None, runtime: LoadedRuntime) -> Decoded:
        """A v1 request to a model that declares no input preprocessing: JSON tensors only."""
        if media is not None and media != "text":  # text/plain: JSON sent with a lax content type, as before
            raise RequestError(
                415, f"this model declares no {media} preprocessing, so it takes JSON: {{\"inputs\": [[...], ...]}} "
                "with its tensors (GET /v1/models/NAME shows their shapes)."
            )  # fmt: skip
        return decode_v1(parse_json(body), runtime.inputs)

    # ---------------------------------------------------------------- metadata, health, docs
    def _v1_metadata(self, name: str) -> Response:
        runtime = self._runtime(name)
        return json_response({
            "name": runtime.name, "version": runtime.version, "reference": runtime.reference,
            "runtime": runtime.kind, "preprocessing": runtime.preprocessing,
            "applies": runtime.steps.describe() if runtime.steps is not None else None,
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
                       runtime.outputs if runtime else (), runtime.steps if runtime else None)  # fmt: skip

    def _openapi(self, name: str) -> Response:
        return json_response(self._document())

    def _docs(self, name: str) -> Response:
        return Response(200, docs_page(self._document()), b"text/html; charset=utf-8")


_EXTENSIONS = ["binary_tensor_data", "model_configuration"]


def _report_stop(task: asyncio.Task[None]) -> None:
    """A follower runs until cancelled: anything else is a bug, logged (the server goes on with its version)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("stopped following the alias", exc_info=task.exception())


_GET_HANDLERS: dict[str, Callable[[KilnApp, str], Response]] = {
    "live": KilnApp._live, "ready": KilnApp._ready_check, "v2_server": KilnApp._server_metadata,
    "metrics": KilnApp._render_metrics, "openapi": KilnApp._openapi, "docs": KilnApp._docs,
    "v1_metadata": KilnApp._v1_metadata, "v2_metadata": KilnApp._v2_metadata, "v2_ready": KilnApp._v2_model_ready,
    "v2_config": KilnApp._v2_config,
}  # fmt: skip


def create_app(
    reference: str | os.PathLike[str], *, store: Any = None, config: ServeConfig | None = None,
    pinned: str | None = None,
) -> KilnApp:  # fmt: skip
    """An ASGI app serving ``reference`` (``"digits@production"`` from ``store``, or a package directory Path).

    An alias is followed unless ``config.follow`` is False (:func:`kiln.serve.follow.follow_reference`);
    ``pinned`` (``"digits@3"``, what the alias named a moment ago) is the version to load first: :func:`serve`
    resolves it once, so every worker starts with the same version.

    Example:
        >>> app = create_app("digits@production", store=".kiln", config=ServeConfig(max_batch_size=32))
        >>> # uvicorn.run(app) or, in tests, httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    """
    chosen = config or ServeConfig()
    threads = chosen.intra_op_threads
    first = reference if pinned is None else pinned
    followed = follow_reference(reference, chosen.follow)
    return KilnApp(
        chosen,
        lambda: load_runtime(first, store=store, runtime=chosen.runtime, threads=threads, trust=chosen.trust),
        follower=Follower(followed, store=store, config=chosen) if followed is not None else None,
    )
