"""Fixtures for `kiln ui`: a store filled by real (tiny) training, the app in process, and a client for it.

The store holds two tracked fits of a small MLP (different learning rates, tagged), a model registered from the
second with an alias, and a run whose strings are hostile: its name (written straight into the database, as a
crafted or foreign store could hold it: the store checks names on write, the page must not rely on that), its tags,
params and one metric name are HTML and script.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.store import Store
from kiln.store.schema import runs
from kiln.train.tracking import TrackingCallback
from kiln.ui import UiConfig, create_app

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_TAG = "</script><script>alert(2)</script>"
HOSTILE_METRIC = "<img src=y onerror=alert(3)>"
TOKEN = "t0ken-for-the-ui-tests-0123456789"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's; Playwright's own download is not reachable
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@dataclass(frozen=True)
class Filled:
    path: Path
    runs: list[str]  # the two trained runs, oldest first
    hostile: str  # the hostile run's id
    model: str  # "blobs"
    x: np.ndarray  # inputs the model was trained on


def _fit(store: Store, train: ArrayDataset, val: ArrayDataset, lr: float) -> kiln.Model:
    torch.manual_seed(0)
    model = kiln.Model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), loss="cross_entropy",
                       optimizer="adamw", lr=lr, metrics=["accuracy"])  # fmt: skip
    tracking = TrackingCallback(store, "blobs-mlp", tags={"team": "tabular", "lr": str(lr)}, every=1)
    model.fit(train, epochs=4, batch_size=32, validation=val, callbacks=[tracking], verbose=0)
    return model


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    path = tmp_path_factory.mktemp("ui") / "store"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")
    train, val = ArrayDataset(x, y).split(0.75, seed=0)
    with Store(path) as store:
        first = _fit(store, train, val, 3e-2)
        second = _fit(store, train, val, 3e-3)
        version = second.register("blobs", store=store, description="two blobs <b>apart</b>",
                                  tags={"owner": HOSTILE_TAG})  # fmt: skip
        store.promote("blobs", version.version, "production")
        with store.start_run("hostile", params={"<b>p</b>": HOSTILE_NAME}, tags={"note": HOSTILE_TAG}) as run:
            for step in range(5):
                run.log({HOSTILE_METRIC: step * 0.5, "loss": 1.0 / (step + 1)}, step=step)
        store.database.write(lambda c: c.execute(runs.update().where(runs.c.id == run.id).values(name=HOSTILE_NAME)))
        assert first.run_id is not None and second.run_id is not None
        return Filled(path, [first.run_id, second.run_id], run.id, "blobs", x)


class Client:
    """A synchronous client for the ASGI app, through httpx's ASGI transport (no server, no sockets)."""

    def __init__(self, app: Any, base_url: str = "http://127.0.0.1:8765") -> None:
        self.app, self.base_url = app, base_url

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
                return await client.request(method, url, **options)

        return asyncio.run(go())

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)


@pytest.fixture(scope="module")
def client(filled: Filled) -> Iterator[Client]:
    app = create_app(UiConfig(store=filled.path))
    yield Client(app)
    app.state.ui.store.close()


def make_client(path: Path, **config: Any) -> Client:
    return Client(create_app(UiConfig(store=path, **config)))


@contextmanager
def serve_ui(path: Path) -> Iterator[str]:
    """A real `kiln ui` subprocess on the store at ``path`` (a free port); yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "ui", "--store", str(path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # printed once the port is bound
    if "serving read-only at http://127.0.0.1:" not in line:
        process.kill()
        raise AssertionError(f"kiln ui did not start: {line}{process.stdout.read()}")
    try:
        yield line.split(" at ")[1].split()[0].rstrip("/")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through Playwright (the dev extra)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A 1280x800 page that fails the test on a JavaScript error, a Content-Security-Policy violation (both reach
    the console) or any dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    opened.set_default_timeout(15_000)
    yield opened
    context.close()
    assert problems == [], problems
