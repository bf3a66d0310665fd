"""`kiln ui` end to end: a real `kiln ui` subprocess on a store filled by real training, driven by headless Chromium.

Chromium is Debian's (scripts/setup.sh installs it for the dev extra), driven through Playwright; nothing is
downloaded here. Every page load also fails the test on a JavaScript error or a Content-Security-Policy violation
(both reach the console), and on any dialog: the hostile run's strings must show as text, never run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.serve.local import predict_local
from kiln.store import Store

from .conftest import CHROMIUM, HOSTILE_METRIC, HOSTILE_NAME, HOSTILE_TAG, Filled, serve_ui

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium: bash scripts/setup.sh dev"
)


@pytest.fixture(scope="module")
def served(filled: Filled, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the filled store: the live test adds a run to it, and other modules count the runs."""
    path = tmp_path_factory.mktemp("browser") / "store"
    shutil.copytree(filled.path, path)
    return path


@pytest.fixture(scope="module")
def server(served: Path) -> Iterator[str]:
    with serve_ui(served) as url:
        yield url


def test_runs_filter_run_compare_models_try_it(page: Any, server: str, filled: Filled) -> None:
    page.goto(server + "/")
    assert page.locator("table.runs tbody tr").count() == 3
    page.fill("input[name=q]", "blobs")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/?q=blobs**")
    assert page.locator("table.runs tbody tr").count() == 2

    page.click(f"a[href='/runs/{filled.runs[1]}']")
    page.wait_for_selector("#charts[data-ready] .chart canvas")
    charts = {c.get_attribute("data-title"): c.get_attribute("data-series") for c in page.locator(".chart").all()}
    # batch, train and validation loss on one chart; the doctor's update ratios of the MLP's two layers on another
    assert charts == {"loss": "3", "accuracy": "1", "lr": "1", "update_ratio": "2"}
    assert page.locator(".chart canvas").count() == 4
    assert page.get_attribute(".chart[data-title=loss]", "data-log") == "0"
    page.check("#log-y")
    assert page.get_attribute(".chart[data-title=loss]", "data-log") == "1"

    page.go_back()
    page.go_back()
    for run_id in filled.runs:
        page.check(f"input[name=run][value='{run_id}']")
    page.click("#compare-button")
    page.wait_for_selector("#compare-charts[data-ready] .chart canvas")
    assert page.locator(".chart[data-title=val_loss]").get_attribute("data-series") == "2"
    differing = [row.locator("th").inner_text() for row in page.locator("#params-table tr.differs").all()]
    assert "lr" in differing and "epochs" not in differing
    page.select_option("#x-mode", "time")  # seconds since each run's start: the runs overlay
    assert page.locator("#compare-charts .chart canvas").count() == len(page.locator(".chart").all()) > 0

    page.click("header nav >> text=Models")
    page.click("a.card")
    page.click("a:text('v1')")
    page.wait_for_selector("#tryit-input")
    inputs = filled.x[:2].tolist()
    page.fill("#tryit-input", json.dumps({"inputs": inputs}))
    page.click("#tryit-run")
    page.wait_for_selector("#tryit-output[data-outputs]")
    shown = np.asarray(json.loads(page.get_attribute("#tryit-output", "data-outputs")))
    np.testing.assert_allclose(shown, predict_local("blobs@1", inputs, store=filled.path), rtol=1e-6)
    assert "ms with onnx" in page.inner_text("#tryit-latency")


def test_hostile_strings_show_as_text_and_never_run(page: Any, server: str, filled: Filled) -> None:
    page.goto(server + "/")
    assert page.get_by_text(HOSTILE_NAME, exact=True).is_visible()
    page.goto(f"{server}/runs/{filled.hostile}")
    page.wait_for_selector("#charts[data-ready] .chart canvas")
    assert page.locator("h1").inner_text() == HOSTILE_NAME
    assert page.get_by_text(f"note={HOSTILE_TAG}").first.is_visible()
    assert page.locator(f".chart[data-title='{HOSTILE_METRIC}'] h3").inner_text() == HOSTILE_METRIC
    assert page.locator("img").count() == 0  # no markup got through
    page.goto(server + "/models")
    assert f"owner={HOSTILE_TAG}" in page.inner_text(".card")
    # the page fixture fails the test on any dialog, console error or CSP violation seen on these pages


def test_a_running_run_updates_live(page: Any, server: str, served: Path) -> None:
    from playwright.sync_api import expect

    with Store(served) as store:
        run = store.start_run("live", flush_seconds=0.0)
        try:
            run.log({"loss": 1.0}, step=1)
            page.goto(f"{server}/runs/{run.id}")
            chart = page.locator(".chart[data-title=loss][data-last-step]")  # drawn, not just laid out
            chart.wait_for()
            assert chart.get_attribute("data-last-step") == "1" and page.inner_text("#run-status") == "running"
            run.log({"loss": 0.5}, step=2)  # flushed at once (flush_seconds=0)
            logged = time.monotonic()
            expect(chart).to_have_attribute("data-last-step", "2", timeout=10_000)  # polls; page scripts stay CSP-bound
            waited = time.monotonic() - logged
        finally:
            run.finish()
        expect(page.locator("#run-status")).to_have_text("finished", timeout=10_000)
    assert waited < 3.0, f"the new value took {waited:.2f} s to appear (the page polls every 1.5 s)"


def test_a_run_opened_before_its_first_metric_draws_it_live(page: Any, server: str, served: Path) -> None:
    from playwright.sync_api import expect

    with Store(served) as store:
        run = store.start_run("fresh", flush_seconds=0.0)
        try:
            page.goto(f"{server}/runs/{run.id}")
            expect(page.locator("#charts-empty")).to_contain_text("they appear here as it logs them")
            run.log({"loss": 0.75}, step=1)
            chart = page.locator(".chart[data-title=loss][data-last-step]")
            expect(chart).to_have_attribute("data-last-step", "1", timeout=10_000)  # no reload
            expect(page.locator("#charts-empty")).to_have_count(0)
            run.log({"loss": 0.5}, step=2)
            expect(chart).to_have_attribute("data-last-step", "2", timeout=10_000)  # and it stays live
        finally:
            run.finish()
