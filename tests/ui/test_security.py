"""The page's guard: loopback by default, a token elsewhere, Host/Origin checks, read-only unless asked, CSRF."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.store import Store
from kiln.ui import UiConfig
from kiln.ui.security import safe_next

from .conftest import TOKEN, Filled, make_client


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host": "0.0.0.0"}, "refusing to bind '0.0.0.0' without a token"),
        ({"host": "192.168.1.5"}, "without a token"),
        ({"allow_writes": True}, "--allow-writes needs a token"),
        ({"token": "short"}, "at least 16 characters"),
        ({"token": "has spaces in it, sixteen+"}, "without spaces"),
        ({"port": 70000}, "port must be"),
    ],
)
def test_config_refuses_unsafe_settings(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UiConfig(**options)


def test_loopback_is_the_default_and_needs_no_token() -> None:
    config = UiConfig()
    assert (config.host, config.port, config.token, config.allow_writes) == ("127.0.0.1", 8765, None, False)
    assert UiConfig(host="::1").loopback and UiConfig(host="0.0.0.0", token=TOKEN).url == "http://127.0.0.1:8765/"


def test_dns_rebinding_host_and_cross_origin_requests_are_refused(filled: Filled) -> None:
    client = make_client(filled.path)
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/", headers={"host": "[::1]:8765"}).status_code == 200
    rebound = client.get("/api/runs", headers={"host": "attacker.example:8765"})
    assert rebound.status_code == 421 and "runs" not in rebound.text
    foreign = client.post("/api/models/blobs/1/predict", json={"inputs": [[0.0] * 8]},
                          headers={"origin": "http://attacker.example"})  # fmt: skip
    assert foreign.status_code == 403
    same = client.post("/api/models/blobs/1/predict", json={"inputs": [[0.0] * 8]},
                       headers={"origin": "http://127.0.0.1:8765"})  # fmt: skip
    assert same.status_code == 200


def test_a_token_guards_every_route_but_login(filled: Filled) -> None:
    client = make_client(filled.path, host="0.0.0.0", token=TOKEN)
    host = {"host": "kiln-box.internal:8765"}  # reachable by name: the token decides
    assert client.get("/api/runs", headers=host).status_code == 401
    page = client.get("/runs/abc?x=1", headers=host)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fruns%2Fabc%3Fx%3D1"
    assert client.get("/login", headers=host).status_code == 200
    assert client.get("/static/kiln.css", headers=host).status_code == 200
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert client.get("/api/runs", headers={**host, "authorization": f"{scheme} {TOKEN}"}).status_code == 200
    assert client.get("/api/runs", headers={**host, "authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert client.get("/api/runs", headers={**host, "authorization": f"Basic {TOKEN}"}).status_code == 401
    wrong = client.post("/login", data={"token": "nope", "next": "/models"}, headers=host)
    assert wrong.status_code == 401 and "not the right one" in wrong.text and "set-cookie" not in wrong.headers
    login = client.post("/login", data={"token": TOKEN, "next": "/models"}, headers=host)
    assert login.status_code == 303 and login.headers["location"] == "/models"
    cookie = login.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
    session = cookie.split(";")[0]
    assert client.get("/models", headers={**host, "cookie": session}).status_code == 200
    assert client.get("/models", headers={**host, "cookie": session[:-1] + "0"}).status_code == 303


def test_login_goes_back_only_to_local_paths() -> None:
    assert safe_next("/runs/abc?x=1") == "/runs/abc?x=1"
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)", None, ""):
        assert safe_next(target) == "/"


def _writable(path: Path) -> tuple:
    client = make_client(path, token=TOKEN, allow_writes=True)
    auth = {"authorization": f"Bearer {TOKEN}"}
    page = client.get("/models/blobs/1", headers=auth).text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    return client, auth, csrf


def test_writes_need_the_flag_csrf_and_confirmation(filled: Filled, tmp_path: Path) -> None:
    read_only = make_client(filled.path)
    refused = read_only.post("/models/blobs/1/promote", data={"alias": "staging", "confirm": "yes"})
    assert refused.status_code == 403 and "read-only" in refused.text
    client, auth, csrf = _writable(filled.path)
    assert client.post("/models/blobs/1/promote", data={"alias": "staging", "confirm": "yes"},
                       headers=auth).status_code == 403  # fmt: skip  # no CSRF token
    assert client.post("/models/blobs/1/promote", data={"alias": "staging", "csrf": "x" * 43, "confirm": "yes"},
                       headers=auth).status_code == 403  # fmt: skip
    unconfirmed = client.post("/models/blobs/1/promote", data={"alias": "staging", "csrf": csrf}, headers=auth)
    assert unconfirmed.status_code == 400 and "confirmation" in unconfirmed.text
    bad_alias = client.post("/models/blobs/1/promote", data={"alias": "Prod!", "csrf": csrf, "confirm": "yes"},
                            headers=auth)  # fmt: skip
    assert bad_alias.status_code == 400
    with Store(filled.path) as store:
        assert store.version("blobs@1").aliases == ("production",)  # nothing changed so far


def test_promote_and_delete_through_the_page(filled: Filled, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(filled.path, path)
    client, auth, csrf = _writable(path)
    done = client.post("/models/blobs/1/promote", data={"alias": "staging", "csrf": csrf, "confirm": "yes"},
                       headers=auth)  # fmt: skip
    assert done.status_code == 303 and done.headers["location"] == "/models/blobs"
    aliased = client.post("/models/blobs/1/delete", data={"csrf": csrf, "confirm": "yes"}, headers=auth)
    assert aliased.status_code == 409 and "aliased" in aliased.text
    gone = client.post("/models/blobs/1/delete", data={"csrf": csrf, "confirm": "yes", "force": "yes"}, headers=auth)
    assert gone.status_code == 303
    with Store(path) as store:
        assert store.versions("blobs") == []
        moves = [(m.alias, m.new_version) for m in store.alias_history("blobs")]
        assert ("staging", 1) in moves and moves[-1][1] is None
    assert client.get("/models/blobs/1", headers=auth).status_code == 404
