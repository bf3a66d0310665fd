"""The model gallery: ``GET /models`` (cards), ``GET /models/{name}`` (versions, lineage, alias history),
``GET /models/{name}/{version}`` (integrity, files, Try it), their JSON under ``/api/models``, and
``POST /api/models/{name}/{version}/predict`` (``{"inputs": ...}`` -> outputs and latency, computed in-process).

With ``--allow-writes``: ``POST /models/{name}/{version}/promote`` (form: alias) and ``.../delete``, each with the
page's CSRF token and a ticked confirmation.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..export.trust import env_trust, version_trust
from ..store import ModelVersion, VerifyReport, parse_reference
from ..store.names import check_alias, check_name
from .context import Ui, json_response, view
from .pages import HttpError, as_int, read_body, read_form
from .tryit import MAX_INPUT_BYTES, panel, predict_impl

__all__ = ["VERIFY_EVERY_S", "gallery_impl", "model_impl", "routes", "version_impl"]

VERIFY_EVERY_S = 600.0


def _version_dict(v: ModelVersion) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "reference": v.reference, "created": v.created,
            "aliases": list(v.aliases), "description": v.description, "tags": v.tags, "metrics": v.metrics,
            "signature": v.signature, "run_id": v.run_id, "parent": v.parent,
            "data_fingerprint": v.data_fingerprint, "files": {k: b.size for k, b in v.files.items()}}  # fmt: skip


def gallery_impl(ui: Ui) -> list[dict[str, Any]]:
    """One card per model: its summary and its newest live version (None when every version was deleted)."""
    cards: list[dict[str, Any]] = []
    for summary in ui.store.models():
        latest = ui.store.version(summary.name) if summary.versions else None
        cards.append({"model": summary, "latest": latest})
    cards.sort(key=lambda card: -(card["model"].updated or card["model"].created))
    return cards


def _parent_link(parent: str | None) -> str | None:
    if not parent:
        return None
    ref = parse_reference(parent)
    return f"/models/{ref.name}/{ref.version}" if ref.version is not None else f"/models/{ref.name}"


def model_impl(ui: Ui, name: str) -> dict[str, Any]:
    """A model's live versions (newest first) with their lineage, and every move of its aliases."""
    check_name(name)
    versions = list(reversed(ui.store.versions(name)))
    summary = next((m for m in ui.store.models() if m.name == name), None)
    lineage = {v.version: {"parent": v.parent, "parent_link": _parent_link(v.parent)} for v in versions}
    return {"name": name, "summary": summary, "versions": versions, "lineage": lineage,
            "moves": list(reversed(ui.store.alias_history(name)))}  # fmt: skip


def _verified(ui: Ui, found: ModelVersion) -> tuple[float, VerifyReport]:
    """When ``found`` was last re-hashed and the report; hashed again after VERIFY_EVERY_S (gigabytes take seconds)."""
    key = found.reference + ":" + ",".join(sorted(blob.sha256 for blob in found.files.values()))
    done = ui.verified.get(key)
    if done is None or time.time() - done[0] > VERIFY_EVERY_S:
        if len(ui.verified) > 256:
            ui.verified.clear()
        done = ui.verified[key] = (time.time(), ui.store.verify(found.reference))
    return done


def version_impl(ui: Ui, name: str, version: int) -> dict[str, Any]:
    """One version: its files, verify result (every blob re-hashed, at most every 10 minutes), whether its factory is
    trusted here, the versions derived from it, and the pre-filled Try-it input."""
    check_name(name)
    found = ui.store.version(f"{name}@{version}")
    verified_at, report = _verified(ui, found)
    trust = version_trust(ui.store, [found], env_trust())[0]
    children = [v.reference for v in ui.store.versions(name) if v.parent == found.reference]
    tryit = panel(ui.store, found)
    return {"version": found, "verify": report, "verified_at": verified_at, "trust": trust, "children": children,
            "example": tryit["example"], "tryit": tryit, "parent_link": _parent_link(found.parent),
            "onnx": "model.onnx" in found.files}  # fmt: skip


def _version_number(request: Request) -> int:
    return as_int(request.path_params["version"], "version", default=0, low=1, high=2**31 - 1)


def routes(ui: Ui) -> list[BaseRoute]:
    def gallery(request: Request) -> Response:
        return ui.page(request, "models.html", title="Models", cards=gallery_impl(ui))

    def gallery_api(request: Request) -> Response:
        cards = [(c["model"], c["latest"]) for c in gallery_impl(ui)]
        return json_response([{"name": m.name, "versions": m.versions, "aliases": m.aliases,
                               "latest": _version_dict(v) if v else None} for m, v in cards])  # fmt: skip

    def model_page(request: Request) -> Response:
        data = model_impl(ui, request.path_params["name"])
        return ui.page(request, "model.html", title=f"Model {data['name']}", **data)

    def model_api(request: Request) -> Response:
        data = model_impl(ui, request.path_params["name"])
        moves = [{"alias": m.alias, "old_version": m.old_version, "new_version": m.new_version, "time": m.time}
                 for m in data["moves"]]  # fmt: skip
        return json_response({"name": data["name"], "versions": [_version_dict(v) for v in data["versions"]],
                              "alias_history": moves})  # fmt: skip

    def version_page(request: Request) -> Response:
        data = version_impl(ui, request.path_params["name"], _version_number(request))
        return ui.page(request, "version.html", title=data["version"].reference, **data)

    def version_api(request: Request) -> Response:
        data = version_impl(ui, request.path_params["name"], _version_number(request))
        problems = [{"file": p.file, "message": p.message} for p in data["verify"].problems]
        trust = data["trust"]
        return json_response({**_version_dict(data["version"]), "verified": data["verify"].ok, "problems": problems,
                              "factory": trust.factory, "trusted_by": trust.trusted_by, "children": data["children"],
                              "example": json.loads(data["example"])})  # fmt: skip

    async def predict(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        reference = f"{name}@{_version_number(request)}"
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HttpError(415, "send the inputs as JSON (Content-Type: application/json).")
        body = await read_body(request, MAX_INPUT_BYTES)
        try:
            payload = json.loads(body)
        except ValueError as error:
            raise HttpError(400, f"the body is not valid JSON: {error}.") from None
        return json_response(await run_in_threadpool(predict_impl, ui.runtimes, reference, payload))

    async def change(request: Request) -> Response:
        if not ui.config.allow_writes:
            raise HttpError(403, "this page is read-only; start it with --allow-writes (and a token) to change models.")
        name = check_name(request.path_params["name"])
        number = _version_number(request)
        form = await read_form(request)
        if not ui.guard.check_csrf(form.get("csrf")):
            raise HttpError(403, "the form's CSRF token is missing or stale; reload the page and try again.")
        if form.get("confirm") != "yes":
            raise HttpError(400, "tick the confirmation box to go ahead.")
        action = request.path_params["action"]
        if action == "promote":
            alias = check_alias(form.get("alias", "").strip())
            await run_in_threadpool(ui.store.promote, name, number, alias)
            return RedirectResponse(f"/models/{name}", 303)
        if action == "delete":
            force = form.get("force") == "yes"
            await run_in_threadpool(lambda: ui.store.delete(f"{name}@{number}", force=force))
            ui.runtimes.forget(f"{name}@{number}")
            return RedirectResponse(f"/models/{name}", 303)
        raise HttpError(404, f"unknown action {action[:40]!r}; allowed: promote, delete.")

    return [
        Route("/models", view(ui, gallery)),
        Route("/models/{name}", view(ui, model_page)),
        Route("/models/{name}/{version}", view(ui, version_page)),
        Route("/models/{name}/{version}/{action}", view(ui, change), methods=["POST"]),
        Route("/api/models", view(ui, gallery_api)),
        Route("/api/models/{name}", view(ui, model_api)),
        Route("/api/models/{name}/{version}", view(ui, version_api)),
        Route("/api/models/{name}/{version}/predict", view(ui, predict), methods=["POST"]),
    ]
