"""fit(profile=...): a window of steps split by phase, the top operators, peak memory, a Chrome trace in the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.cli import main
from kiln.data import ArrayDataset
from kiln.errors import ConfigError
from kiln.store import Store
from kiln.train.profiler import PHASES, ProfileOptions, Profiler


def _model(store: Store | None = None) -> kiln.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return kiln.Model(net, loss="cross_entropy", optimizer="adamw", lr=1e-3, store=store)


def _train(digits: tuple[np.ndarray, np.ndarray]) -> ArrayDataset:
    return ArrayDataset(*digits).split(0.5, seed=0)[0]  # 898 rows: 29 batches of 32


def test_profile_prints_the_table_and_stores_the_trace_with_the_run(
    digits: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "store")
    model = _model(store)
    model.fit(
        _train(digits), epochs=1, verbose=0, doctor=False, run="prof", profile=ProfileOptions(steps=6, skip_first=3)
    )
    out = capsys.readouterr().out
    assert "kiln profile: 6 steps on cpu, mean time per step" in out
    for phase in PHASES:
        assert f"\n  {phase} " in out
    assert "top 15 operators by self time" in out and "aten::addmm" in out and "peak memory:" in out
    assert f"stored as artifact profile_trace.json of run {model.run_id}" in out
    run = store.run(model.run_id)
    trace = json.loads(bytes(store.blobs.read(run.artifacts["profile_trace.json"], label="trace")))
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert len(steps) == 6  # Perfetto shows the six profiled steps
    assert main(["runs", "show", model.run_id, "--store", str(store.path)]) == 0
    assert "profile_trace.json" in capsys.readouterr().out


def test_the_phases_add_up_to_the_step_and_the_hooks_go_after_the_window(
    digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model = _model()
    profiler = Profiler(ProfileOptions(steps=8, skip_first=2, top=5, trace=tmp_path / "trace.json"))
    model.fit(_train(digits), epochs=1, verbose=0, doctor=False, callbacks=[profiler])
    report = profiler.report
    assert report is not None and report.steps == 8 and report.run_id is None
    assert sum(report.step_ms[p] for p in PHASES) == pytest.approx(report.step_ms["total"])
    for phase in ("forward", "backward", "optimizer"):
        assert report.step_ms[phase] > 0, phase
    assert len(report.operators) == 5 and all(calls > 0 and ms >= 0 for _, calls, ms, _ in report.operators)
    assert report.peak_memory_bytes is not None and report.peak_memory_bytes > 0
    assert report.trace == (tmp_path / "trace.json").absolute() and json.loads(report.trace.read_text())
    module = model.module
    assert not module._forward_hooks and not module._forward_pre_hooks  # nothing left outside the window
    assert not model.optimizer._optimizer_step_pre_hooks and not model.optimizer._optimizer_step_post_hooks


def test_a_fit_that_ends_inside_the_window_reports_the_steps_it_had(
    digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    profiler = Profiler(ProfileOptions(steps=1000, skip_first=0, trace=tmp_path / "t.json"))
    _model().fit(_train(digits), epochs=1, batch_size=128, verbose=0, doctor=False, callbacks=[profiler])
    assert profiler.report is not None and profiler.report.steps == 8  # ceil(898 / 128)


@pytest.mark.parametrize("options", [{"steps": 0}, {"skip_first": -1}, {"top": 0}])
def test_bad_profile_options_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="ProfileOptions"):
        ProfileOptions(**options)


def test_fit_refuses_a_profile_value_it_does_not_know(digits: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ConfigError, match=r"profile must be True, False or a kiln\.ProfileOptions"):
        _model().fit(_train(digits), epochs=1, verbose=0, profile="yes")
