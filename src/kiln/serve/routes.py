"""Which route a request names: the path table, and the bearer-token check that comes before it."""

from __future__ import annotations

import hmac

from .tensors import RequestError

__all__ = ["authorized", "resolve"]


def authorized(value: bytes | None, token: bytes) -> bool:
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
_V2_MODEL_ROUTES = {"": "v2_metadata", "ready": "v2_ready", "config": "v2_config"}


def resolve(path: str, method: str) -> tuple[str, str]:
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
