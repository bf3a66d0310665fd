"""The run page of a fit the gradient doctor watched: its finding and the update/weight-ratio chart, from a real
`kiln ui` subprocess on a store filled by a real tracked fit (and, where Debian's Chromium is installed, as drawn)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch
from torch import nn

import kiln
from kiln.store import Store
from kiln.train.doctor import GradientDoctor
from kiln.train.doctor_record import DOCTOR_ARTIFACT
from kiln.ui.run import DOCTOR_ARTIFACT as UI_DOCTOR_ARTIFACT

from .conftest import CHROMIUM, serve_ui

LINEAR = [str(i) for i in range(0, 17, 2)]  # the deep sigmoid MLP's Linear layers, by their module paths


@dataclass(frozen=True)
class Watched:
    url: str
    sick: str  # the run id of the vanishing-gradient fit
    healthy: str


def _fit(store: Store, module: nn.Module, digits: Any, run: str, **options: Any) -> str:
    model = kiln.Model(module, loss="cross_entropy", store=store, **options)
    model.fit(digits, epochs=1, batch_size=64, seed=0, run=run, doctor=GradientDoctor(print_findings=False),
              verbose=0)  # fmt: skip
    assert model.run_id is not None
    return model.run_id


@pytest.fixture(scope="module")
def watched(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    path = tmp_path_factory.mktemp("doctor") / "store"
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip([64, *[32] * 7], [32] * 8, strict=True):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    with Store(path) as store:
        sick = _fit(store, nn.Sequential(*layers, nn.Linear(32, 10)), digits, "deep-sigmoid", optimizer="sgd", lr=0.1)
        healthy = _fit(store, nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), digits, "relu-mlp",
                       optimizer="adamw", lr=1e-3)  # fmt: skip
    with serve_ui(path) as url:
        yield Watched(url, sick, healthy)


def test_the_run_page_lists_the_finding_and_charts_the_update_ratios(watched: Watched) -> None:
    assert DOCTOR_ARTIFACT == UI_DOCTOR_ARTIFACT  # the name train writes is the name the UI reads
    page = httpx.get(f"{watched.url}/runs/{watched.sick}", timeout=10)
    assert page.status_code == 200
    assert "<h2>Gradient doctor</h2>" in page.text
    assert "<strong>vanishing</strong> in 0, 2," in page.text and "try: " in page.text
    run = httpx.get(f"{watched.url}/api/runs/{watched.sick}", timeout=10).json()
    assert [f["kind"] for f in run["findings"]] == ["vanishing"]
    ratio = next(chart for chart in run["charts"] if chart["title"] == "update_ratio")
    assert ratio["log"] is True and sorted(label for _, label in ratio["series"]) == sorted(LINEAR)

    healthy = httpx.get(f"{watched.url}/runs/{watched.healthy}", timeout=10).text
    assert "The doctor watched this run and found nothing wrong." in healthy


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: bash scripts/setup.sh dev")
def test_the_update_ratio_chart_is_drawn_in_a_browser(watched: Watched) -> None:
    from playwright.sync_api import sync_playwright  # the dev extra

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox",
                                                                              "--disable-gpu"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.set_default_timeout(15_000)
            page.goto(f"{watched.url}/runs/{watched.sick}")
            page.wait_for_selector("#charts[data-ready] .chart[data-title=update_ratio] canvas")
            chart = page.locator(".chart[data-title=update_ratio]")
            assert chart.get_attribute("data-series") == str(len(LINEAR))
            assert chart.get_attribute("data-log") == "1"  # ratios span decades: log y from the start
            assert chart.get_attribute("data-last-step") == "17"  # the update of the look at step 16
            finding = page.locator("ul.findings li").first
            assert finding.is_visible() and "vanishing" in finding.inner_text()
        finally:
            browser.close()
    assert problems == [], problems
