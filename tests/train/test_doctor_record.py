"""What the gradient doctor leaves in a tracked run (doctor.json, update_ratio/<layer>) and its silence when asked."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import nn

import kiln
from kiln.errors import ConfigError, NonFiniteLossError
from kiln.store import Store
from kiln.train.doctor import GradientDoctor
from kiln.train.doctor_record import DOCTOR_ARTIFACT, RATIO_PREFIX, choose_layers
from kiln.train.tracking import TrackingCallback


def deep_sigmoid() -> nn.Sequential:
    """Eight Sigmoid layers: the first Linear layers' gradients vanish (Linear layers at 0, 2, ..., 16)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip([64, *[32] * 7], [32] * 8, strict=True):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 10))


def healthy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def tracked_fit(store: Store, module: nn.Module, data, *, doctor, optimizer="sgd", lr=0.1, callbacks=()):
    model = kiln.Model(module, loss="cross_entropy", optimizer=optimizer, lr=lr, store=store)
    model.fit(data, epochs=1, batch_size=64, seed=0, run="doctor-test", doctor=doctor, callbacks=list(callbacks),
              verbose=0)  # fmt: skip
    return model


def recorded_findings(store: Store, run_id: str) -> list[dict] | None:
    blob = store.run(run_id).artifacts.get(DOCTOR_ARTIFACT)
    return None if blob is None else json.loads(bytes(store.blobs.read(blob, label=DOCTOR_ARTIFACT)))


def ratio_series(store: Store, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: values for key, values in store.metrics(run_id).items() if key.startswith(RATIO_PREFIX)}


class ReadRunMidway(kiln.Callback):
    """Reads the run's doctor.json from a second Store at a step, while the fit is still running."""

    def __init__(self, path, at_step: int) -> None:
        self.path, self.at_step, self.seen = path, at_step, None

    def on_train_batch_end(self, model, step, loss):
        if step == self.at_step:
            with Store(self.path) as reader:
                self.seen = recorded_findings(reader, model.run_id), reader.run(model.run_id).status


def test_vanishing_model_records_its_finding_and_update_ratios_in_the_run(digits, tmp_path):
    midway = ReadRunMidway(tmp_path / "store", at_step=10)
    doctor = GradientDoctor(print_findings=False)
    with Store(tmp_path / "store") as store:
        model = tracked_fit(store, deep_sigmoid(), digits, doctor=doctor, callbacks=[midway])
        found = recorded_findings(store, model.run_id)
        series = ratio_series(store, model.run_id)
    assert found == [finding.to_dict() for finding in doctor.findings]
    assert [f["kind"] for f in found] == ["vanishing"] and found[0]["layers"][:2] == ["0", "2"]
    assert found[0]["remedies"] and "'0'" in found[0]["evidence"]
    # while the run was still training (step 10; the finding came at step <= 2), the store already held it
    assert midway.seen == (found, "running")
    # every Linear layer (9 <= 12) on every look: steps 0, 1, 2, 4, 8, 16 of 29, at the step count after the update
    assert sorted(series) == sorted(RATIO_PREFIX + str(i) for i in range(0, 17, 2))
    for values in series.values():
        assert [step for step, _ in values] == [1, 2, 3, 5, 9, 17]
        assert all(math.isfinite(v) and v > 0 for _, v in values)
    last = {key.removeprefix(RATIO_PREFIX): values[-1][1] for key, values in series.items()}
    assert last == pytest.approx(doctor.stats["update_ratios"], rel=1e-6)
    assert last["0"] < 1e-3 * last["16"]  # the vanishing first layer barely moves next to the output layer


def test_healthy_model_records_an_empty_list(digits, tmp_path):
    with Store(tmp_path / "store") as store:
        model = tracked_fit(store, healthy(), digits, doctor=GradientDoctor(print_findings=False), optimizer="adamw",
                            lr=1e-3)  # fmt: skip
        assert recorded_findings(store, model.run_id) == []
        assert sorted(ratio_series(store, model.run_id)) == [RATIO_PREFIX + "0", RATIO_PREFIX + "2"]


class NaNAtBatch(nn.Module):
    """A linear model whose output turns NaN on one forward call: fit stops with NonFiniteLossError there."""

    def __init__(self, call: int) -> None:
        super().__init__()
        self.lin, self.calls, self.call = nn.Linear(64, 10), 0, call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.lin(x)
        return out * float("nan") if self.calls == self.call else out


def test_a_crashed_fit_keeps_the_finding_that_explains_it(digits, tmp_path):
    # The tracking callback comes first, so its on_fit_end finishes the run before the doctor's on_fit_end finds the
    # NaN loss among its last batches: the doctor still stores it with the (now failed) run.
    torch.manual_seed(0)
    doctor = GradientDoctor(print_findings=False)
    model = kiln.Model(NaNAtBatch(20), loss="cross_entropy", optimizer="adamw", lr=1e-3)
    with Store(tmp_path / "store") as store:
        with pytest.raises(NonFiniteLossError):
            model.fit(digits, epochs=1, batch_size=64, seed=0, verbose=0,
                      callbacks=[TrackingCallback(store, "nan"), doctor])  # fmt: skip
        assert store.run(model.run_id).status == "failed"
        found = recorded_findings(store, model.run_id)
    assert [f["kind"] for f in found] == ["nonfinite"] and found[0]["layers"] == ["lin"] and found[0]["step"] == 19


class CrashAt(kiln.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, model, step, loss):
        if step == self.step:
            raise RuntimeError("the machine went away")


def test_a_resumed_fit_keeps_recording_into_the_same_run(digits, tmp_path):
    def fit(callbacks=()):
        model = kiln.Model(deep_sigmoid(), loss="cross_entropy", optimizer="sgd", lr=0.1, store=store)
        model.fit(digits, epochs=2, batch_size=64, seed=0, run="resumed", checkpoint=tmp_path / "ckpt",
                  resume="latest", doctor=GradientDoctor(every=10, print_findings=False), callbacks=list(callbacks),
                  verbose=0)  # fmt: skip
        return model

    with Store(tmp_path / "store") as store:
        with pytest.raises(RuntimeError, match="went away"):
            fit([CrashAt(40)])  # in the second epoch (29 steps each), after the checkpoint of the first
        (crashed,) = store.runs()
        assert crashed.status == "failed" and [f["kind"] for f in recorded_findings(store, crashed.id)] == ["vanishing"]
        model = fit()
        assert model.run_id == crashed.id and store.run(crashed.id).status == "finished"
        found = recorded_findings(store, crashed.id)
        steps = [step for step, _ in ratio_series(store, crashed.id)[RATIO_PREFIX + "0"]]
    assert [f["kind"] for f in found] == ["vanishing"]  # the finding from before the restart, once
    # every 10 steps plus the early looks; the resume replays from the checkpoint at step 29, so the look at 30 was
    # measured by both attempts (as their batch losses were), then 40 and 50 by the resumed one
    assert steps == [1, 2, 3, 5, 9, 11, 17, 21, 31, 31, 41, 51]


def test_doctor_off_records_neither(digits, tmp_path):
    with Store(tmp_path / "store") as store:
        model = tracked_fit(store, deep_sigmoid(), digits, doctor=False)
        assert recorded_findings(store, model.run_id) is None
        assert ratio_series(store, model.run_id) == {}
        assert "batch_loss" in store.metrics(model.run_id)  # the run itself was recorded


def test_untracked_fit_still_diagnoses_and_writes_nothing(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default store would appear here
    doctor = GradientDoctor(print_findings=False)
    model = kiln.Model(deep_sigmoid(), loss="cross_entropy", optimizer="sgd", lr=0.1)
    model.fit(digits, epochs=1, batch_size=64, seed=0, doctor=doctor, verbose=0)
    assert [f.kind for f in doctor.findings] == ["vanishing"] and model.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_a_deep_model_logs_twelve_layers_spread_over_the_depth(digits, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 8), *[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(38)],
                           nn.Linear(8, 10))  # 40 layers with parameters  # fmt: skip
    with Store(tmp_path / "store") as store:
        model = tracked_fit(store, module, digits, doctor=GradientDoctor(print_findings=False), optimizer="adamw",
                            lr=1e-3)  # fmt: skip
        logged = {key.removeprefix(RATIO_PREFIX) for key in ratio_series(store, model.run_id)}
    names = ["0", *(f"{i}.0" for i in range(1, 39)), "39"]
    assert logged == {names[i] for i in choose_layers(names, 12)}
    assert len(logged) == 12 and {"0", "39"} <= logged


def test_record_layers_by_name_and_none(digits, tmp_path):
    with Store(tmp_path / "store") as store:
        named = tracked_fit(store, deep_sigmoid(), digits, doctor=GradientDoctor(record_layers=["2", "16"],
                                                                              print_findings=False))  # fmt: skip
        off = tracked_fit(store, deep_sigmoid(), digits, doctor=GradientDoctor(record_layers=0, print_findings=False))
        assert sorted(ratio_series(store, named.run_id)) == [RATIO_PREFIX + "16", RATIO_PREFIX + "2"]
        assert ratio_series(store, off.run_id) == {}
        assert [f["kind"] for f in recorded_findings(store, off.run_id)] == ["vanishing"]  # findings still kept
        with pytest.raises(ConfigError, match=r"record_layers names '3'.*'0', '2', '4'"):
            tracked_fit(store, deep_sigmoid(), digits, doctor=GradientDoctor(record_layers=["3"]))


def test_choose_layers_keeps_first_and_last_and_spreads_the_rest():
    names = [f"blocks.{i}" for i in range(200)]
    assert choose_layers(names, 4) == [0, 66, 133, 199]
    assert len(choose_layers(names, 12)) == 12 and choose_layers(names, 12)[::11] == [0, 199]
    assert choose_layers(names[:5], 12) == [0, 1, 2, 3, 4]
    assert choose_layers(names, 1) == [0] and choose_layers(names, 0) == []
    assert choose_layers(names, ["blocks.7", "blocks.3"]) == [3, 7]


@pytest.mark.parametrize("value", [-1, True, "0", 1.5, [0]])
def test_bad_record_layers_name_the_value(value):
    with pytest.raises(ConfigError, match="record_layers must be an int >= 0 or a list of layer names"):
        GradientDoctor(record_layers=value)


def test_print_findings_false_is_silent_without_logging_configured(digits, capfd, monkeypatch):
    # As in a plain script: no handler anywhere above kiln.doctor (pytest's capture handlers sit on the root logger).
    monkeypatch.setattr(logging.getLogger("kiln.doctor"), "propagate", False)
    assert not logging.getLogger("kiln.doctor").hasHandlers()
    quiet = GradientDoctor(print_findings=False)
    model = kiln.Model(deep_sigmoid(), loss="cross_entropy", optimizer="sgd", lr=0.1)
    model.fit(digits, epochs=1, batch_size=64, seed=0, doctor=quiet, verbose=1)  # verbose: the epoch line only
    out, err = capfd.readouterr()
    assert [f.kind for f in quiet.findings] == ["vanishing"] and model.history.diagnostics == quiet.findings
    assert "kiln doctor" not in out and "kiln doctor" not in err, (out, err)

    loud = GradientDoctor(print_findings=True)
    kiln.Model(deep_sigmoid(), loss="cross_entropy", optimizer="sgd", lr=0.1).fit(
        digits, epochs=1, batch_size=64, seed=0, doctor=loud, verbose=0
    )
    out, err = capfd.readouterr()
    assert out.count("kiln doctor: vanishing gradients") == 1 and "kiln doctor" not in err, (out, err)
