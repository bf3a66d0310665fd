"""A run with many metrics (a 100-layer model's per-layer update ratios and 50 other curves) on the run page.

The series route answers at most 64 metrics per request (it protects the server), so the page must ask chart by
chart: every chart gets drawn once it is scrolled into view, and only charts near the view are fetched. Layer names
list in natural order (``layer2`` before ``layer10``), and a log axis spanning eight decades labels its ticks so
that they stay readable. Runs against a real `kiln ui` subprocess in Debian's Chromium.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.store import Store
from kiln.ui import UiConfig, create_app

from .conftest import CHROMIUM, Client, serve_ui

LAYERS = 100
PROBES = 50
STEPS = 30

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium: bash scripts/setup.sh dev"
)


def fill_wide(path: Path) -> tuple[str, str]:
    """A store with two finished runs; returns their ids. The first logs 152 metrics: loss, val_loss, 50 probes and
    100 layers' update ratios spread over eight decades (1e-8 for layer0 up to 1 for layer11 and after: the chart
    draws the first 12). The second logs loss and val_loss only."""
    with Store(path) as store, store.start_run("wide", params={"layers": LAYERS}) as run:
        for step in range(STEPS):
            values = {"loss": 2.0 / (step + 1), "val_loss": 2.2 / (step + 1)}
            values.update({f"probe{i}": math.sin(step / 5 + i) for i in range(PROBES)})
            wobble = 1 + 0.2 * math.sin(step)
            values.update({f"update_ratio/layer{i}": 10 ** (-8 + 8 * min(i, 11) / 11) * wobble for i in range(LAYERS)})
            run.log(values, step=step)
    with Store(path) as store, store.start_run("narrow") as other:  # to compare with: loss and val_loss only
        for step in range(STEPS):
            other.log({"loss": 1.5 / (step + 1), "val_loss": 1.8 / (step + 1)}, step=step)
    return run.id, other.id


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("wide") / "store"
    return (path, *fill_wide(path))


@pytest.fixture(scope="module")
def wide_server(wide: tuple[Path, str, str]) -> Iterator[str]:
    with serve_ui(wide[0]) as url:
        yield url


def test_the_series_route_keeps_its_limit_and_the_charts_list_layers_in_natural_order(
    wide: tuple[Path, str, str],
) -> None:
    path, run_id, _ = wide
    app = create_app(UiConfig(store=path))
    client = Client(app)
    try:
        everything = client.get(f"/api/runs/{run_id}/series")
        assert everything.status_code == 400 and "at most 64 metrics" in everything.json()["error"]
        keys = [f"update_ratio/layer{i}" for i in range(64)]
        assert client.get(f"/api/runs/{run_id}/series", params={"key": keys}).status_code == 200
        charts = client.get(f"/api/runs/{run_id}").json()["charts"]
        html = client.get(f"/runs/{run_id}").text  # the latest-values table
        keys = client.get("/api/runs").json()["keys"]  # the metric picker of the runs list
    finally:
        app.state.ui.store.close()
    assert html.index(">probe2<") < html.index(">probe10<") < html.index(">update_ratio/layer2<")
    assert html.index(">update_ratio/layer9<") < html.index(">update_ratio/layer10<")
    assert keys.index("probe9") + 1 == keys.index("probe10")
    titles = [c["title"] for c in charts]
    assert titles == ["loss", *(f"probe{i}" for i in range(PROBES)), "update_ratio"]  # probe2 before probe10
    ratios = charts[-1]
    assert [label for _, label in ratios["series"]] == [f"layer{i}" for i in range(12)]
    assert ratios["total"] == LAYERS and ratios["log"] is True


def test_every_chart_of_a_run_with_152_metrics_draws_as_it_scrolls_into_view(
    page: Any, wide_server: str, wide: tuple[Path, str, str]
) -> None:
    asked: list[int] = []  # metrics per series request
    page.on("request", lambda r: asked.append(r.url.count("key=")) if "/series" in r.url else None)
    page.goto(f"{wide_server}/runs/{wide[1]}")
    page.wait_for_selector("#charts[data-ready] .chart canvas")
    boxes = page.locator("#charts .chart")
    assert boxes.count() == 2 + PROBES  # loss, 50 probes, update_ratio
    drawn_first = page.locator("#charts .chart canvas").count()
    assert 0 < drawn_first < boxes.count()  # only the charts near the view were fetched and drawn
    for i in range(boxes.count()):
        box = boxes.nth(i)
        box.scroll_into_view_if_needed()
        box.locator("canvas").first.wait_for()
    assert page.locator("#charts .chart canvas").count() >= boxes.count()
    assert page.get_attribute("#charts", "data-error") is None
    assert asked and max(asked) <= 64, asked
    ratios = page.locator(".chart[data-title=update_ratio]")
    assert ratios.get_attribute("data-series") == "12"
    legend = [t.strip() for t in ratios.locator(".u-legend .u-series th").all_inner_texts()][1:]  # after x
    assert legend == [f"layer{i}" for i in range(12)]
    assert "12 of 100 series" in ratios.locator(".note").inner_text()


def test_a_log_axis_over_eight_decades_keeps_its_labels_apart(
    page: Any, wide_server: str, wide: tuple[Path, str, str]
) -> None:
    page.goto(f"{wide_server}/runs/{wide[1]}")
    ratios = page.locator(".chart[data-title=update_ratio]")
    ratios.scroll_into_view_if_needed()
    page.wait_for_selector(".chart[data-title=update_ratio][data-y-labels]")
    assert ratios.get_attribute("data-log") == "1"
    labels = json.loads(ratios.get_attribute("data-y-labels"))  # [[text, y in CSS px], ...] as drawn
    texts = [text for text, _ in labels]
    assert 3 <= len(texts) <= 10, texts
    assert all(text and text != "–" for text in texts), texts
    ys = sorted(y for _, y in labels)
    assert min(b - a for a, b in itertools.pairwise(ys)) >= 16, labels  # 12 px text: no overlap, air between
    assert {"1e-8", "1"} & set(texts), texts  # decades labelled as powers of ten


def test_compare_draws_every_metric_of_a_wide_and_a_narrow_run(
    page: Any, wide_server: str, wide: tuple[Path, str, str]
) -> None:
    asked: list[int] = []
    page.on("request", lambda r: asked.append(r.url.count("key=")) if "/series" in r.url else None)
    page.goto(f"{wide_server}/compare?run={wide[1]}&run={wide[2]}")
    page.wait_for_selector("#compare-charts[data-ready] .chart canvas")
    boxes = page.locator("#compare-charts .chart")
    assert boxes.count() == 2 + PROBES + LAYERS  # one chart per metric here
    assert page.locator(".chart[data-title=val_loss]").get_attribute("data-series") == "2"  # both runs
    names = [boxes.nth(i).get_attribute("data-title") for i in range(boxes.count())]
    assert names[-3:] == ["update_ratio/layer97", "update_ratio/layer98", "update_ratio/layer99"]  # natural order
    for i in (boxes.count() // 2, boxes.count() - 1):  # the middle and the last: fetched when scrolled to
        boxes.nth(i).scroll_into_view_if_needed()
        boxes.nth(i).locator("canvas").first.wait_for()
        assert boxes.nth(i).get_attribute("data-series") == "1"  # the narrow run never logged it, nor was asked
    assert page.get_attribute("#compare-charts", "data-error") is None
    assert asked and max(asked) <= 64, asked
