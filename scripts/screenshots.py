"""Regenerate the pictures of docs/ui.md: a demo store filled by real training, `kiln ui` on it, headless Chromium.

    .venv/bin/python scripts/screenshots.py              # writes docs/images/ui-*.png (1280x800)
    .venv/bin/python scripts/screenshots.py --out /tmp/shots --store /tmp/demo/.kiln

The store: three MLPs on scikit-learn's digits at different learning rates (tagged) and two on its wine and breast
cancer tables, all really trained; three models (two versions of digits-mlp with lineage and aliases); one run still
going (this script logs into it while the pictures are taken) and one long run of 200,000 logged steps with a spike
and a NaN, logged through the store API, to show the downsampling. Needs the dev extra (Playwright) and Debian's
chromium (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.store import Store
from kiln.train.tracking import TrackingCallback

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}


def mlp(features: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def table(loader: object) -> tuple[ArrayDataset, ArrayDataset]:
    bunch = loader()  # type: ignore[operator]
    x = bunch.data.astype("float32")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return ArrayDataset(x, bunch.target).split(0.8, seed=0)


def train(store: Store, data: tuple[ArrayDataset, ArrayDataset], *, name: str, lr: float, hidden: int, epochs: int,
          tags: dict[str, str], every: int = 2, **options: object) -> kiln.Model:  # fmt: skip
    torch.manual_seed(0)
    features, classes = data[0].x.shape[1], int(data[0].y.max()) + 1
    model = kiln.Model(mlp(features, hidden, classes), loss="cross_entropy", optimizer="adamw", lr=lr,
                       metrics=["accuracy"])  # fmt: skip
    tracking = TrackingCallback(store, name, params={"hidden": hidden}, tags=tags, every=every)
    model.fit(data[0], epochs=epochs, batch_size=32, validation=data[1], callbacks=[tracking], verbose=0, **options)
    return model


def fill(store: Store) -> threading.Event:
    """Train the demo runs and register the versions; returns the event that stops the live run's logger."""
    digits = load_digits()
    data = ArrayDataset((digits.data / 16.0).astype("float32"), digits.target).split(0.8, seed=0)
    print("training the demo runs (small MLPs on scikit-learn's bundled datasets)...")
    long_run(store)
    wine = train(store, table(load_wine), name="wine-mlp", lr=3e-3, hidden=32, epochs=30, tags={"team": "tabular"})
    cancer = train(store, table(load_breast_cancer), name="cancer-mlp", lr=1e-3, hidden=32, epochs=15,
                   tags={"team": "tabular"})  # fmt: skip
    slow = train(store, data, name="digits-mlp", lr=1e-3, hidden=64, epochs=20, tags={"team": "vision", "sweep": "lr"})
    best = train(store, data, name="digits-mlp", lr=3e-3, hidden=128, epochs=20,
                 tags={"team": "vision", "sweep": "lr"})  # fmt: skip
    train(store, data, name="digits-mlp", lr=1e-2, hidden=128, epochs=20, tags={"team": "vision", "sweep": "lr"})
    wine.register("wine", store=store, description="Wine cultivar from 13 chemical measurements (3 classes).",
                  tags={"dataset": "sklearn-wine"})  # fmt: skip
    cancer.register("breast-cancer", store=store, description="Benign or malignant from 30 cell-nucleus features.",
                    tags={"dataset": "sklearn-breast-cancer", "review": "pending"})  # fmt: skip
    first = slow.register("digits-mlp", store=store, description="MLP on 8x8 digits, first baseline (64 hidden units).",
                          tags={"dataset": "sklearn-digits"})  # fmt: skip
    second = best.register("digits-mlp", store=store, parent=first.reference, tags={"dataset": "sklearn-digits"},
                           description="MLP on 8x8 digits, 128 hidden units, lr 3e-3: the one we ship.")  # fmt: skip
    store.promote("digits-mlp", first.version, "production")
    store.promote("digits-mlp", second.version, "staging")
    store.promote("digits-mlp", second.version, "production")
    stop = threading.Event()
    run = store.start_run("digits-cnn", params={"channels": 32, "lr": 3e-3}, tags={"team": "vision"},
                          flush_seconds=0.5)  # fmt: skip
    rng = np.random.default_rng(0)

    def live() -> None:  # a run still going: the run page polls it
        step = 0
        while not stop.is_set():
            for _ in range(20):
                step += 1
                run.log({"batch_loss": 2.3 * np.exp(-step / 400) + 0.05 + 0.08 * rng.random()}, step=step)
            if step % 200 == 0:
                run.log({"loss": 2.3 * np.exp(-step / 400) + 0.1, "val_loss": 2.3 * np.exp(-step / 450) + 0.15},
                        step=step)  # fmt: skip
            run.flush()
            stop.wait(0.2)
        run.finish()

    thread = threading.Thread(target=live, daemon=True)
    thread.start()
    return stop


def long_run(store: Store, steps: int = 200_000) -> None:
    """A long run logged through the store API: a noisy falling loss with one spike and one NaN step."""
    rng = np.random.default_rng(1)
    loss = 2.0 * np.exp(-np.arange(steps) / 30_000) + 0.1 + 0.05 * rng.random(steps)
    loss[120_000] = 9.0  # one spike: a bad batch
    loss[160_000] = np.nan  # one NaN step
    with store.start_run("long-run", params={"steps": steps}, tags={"note": "store API"}, flush_rows=50_000) as run:
        run.log_rows(("batch_loss", step, float(value), None) for step, value in enumerate(loss))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_ui(store: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "kiln.cli", "ui", "--store", str(store), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"kiln ui did not start: {line}{process.stdout.read()}")
    return process, f"http://127.0.0.1:{port}"


def shoot(url: str, out: Path, store: Store) -> None:
    from playwright.sync_api import sync_playwright

    runs = store.runs(limit=20)
    sweep = [r for r in runs if r.tags.get("sweep") == "lr"]
    long = next(r for r in runs if r.name == "long-run")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)

        def save(name: str) -> None:
            page.screenshot(path=str(out / f"ui-{name}.png"))
            print(f"  docs/images/ui-{name}.png")

        page.goto(url + "/")
        save("runs")
        page.goto(f"{url}/runs/{sweep[1].id}")
        page.wait_for_selector("#charts[data-ready] .chart canvas")
        save("run")
        page.goto(f"{url}/runs/{long.id}")
        page.wait_for_selector("#charts[data-ready] .chart canvas")
        save("run-long")
        running = next(r for r in store.runs(limit=20) if r.status == "running")
        page.goto(f"{url}/runs/{running.id}")
        page.wait_for_selector("#charts[data-ready] .chart canvas")
        page.wait_for_timeout(3000)  # let two live updates land (a picture, not a test)
        save("run-live")
        page.goto(f"{url}/compare?" + "&".join(f"run={r.id}" for r in sweep))
        page.wait_for_selector("#compare-charts[data-ready] .chart canvas")
        save("compare")
        page.goto(url + "/models")
        save("models")
        page.goto(url + "/models/digits-mlp")
        save("model")
        page.goto(url + "/models/digits-mlp/2")
        save("version")
        page.click("#tryit-run")
        page.wait_for_selector("#tryit-output[data-outputs]")
        page.locator("#tryit").scroll_into_view_if_needed()
        save("tryit")
        browser.close()


def shoot_empty(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as empty:
        Store(Path(empty) / ".kiln").close()
        process, url = start_ui(Path(empty) / ".kiln")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url + "/")
                page.screenshot(path=str(out / "ui-empty.png"))
                print("  docs/images/ui-empty.png")
                browser.close()
        finally:
            process.terminate()
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "kiln-demo" / ".kiln",
                        help="where to build the demo store (emptied first; default /tmp/kiln-demo/.kiln)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.store, ignore_errors=True)
    store = Store(args.store)
    stop = fill(store)
    process, url = start_ui(args.store)
    try:
        shoot(url, args.out, store)
        shoot_empty(args.out)
    finally:
        stop.set()
        process.terminate()
        process.wait(10)
        store.close()


if __name__ == "__main__":
    main()
