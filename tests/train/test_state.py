"""TrainState: the Model is what every hook receives, and it has every member the protocol names."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import kiln
from kiln.train.state import TrainState

X, Y = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.randint(0, 2, (64,))
MEMBERS = sorted({*TrainState.__annotations__, *(k for k, v in vars(TrainState).items() if isinstance(v, property))})


class Snapshot(kiln.Callback):
    """Records, at every hook, whether it got the Model itself and the protocol's members it could read."""

    def __init__(self, model: kiln.Model) -> None:
        self.model = model
        self.seen: list[tuple[str, bool, dict[str, Any]]] = []

    def _record(self, hook: str, state: TrainState) -> None:
        self.seen.append((hook, state is self.model, {name: getattr(state, name) for name in MEMBERS}))

    def on_fit_start(self, model: TrainState) -> None:
        self._record("fit_start", model)

    def on_before_optimizer_step(self, model: TrainState, step: int) -> None:
        self._record("before_step", model)

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        self._record("epoch_end", model)

    def on_fit_end(self, model: TrainState) -> None:
        self._record("fit_end", model)


def test_the_protocol_names_what_callbacks_read_and_change():
    assert {"module", "optimizer", "optimizers", "schedule", "schedules", "precision", "epoch", "global_step",
            "history", "stop_training", "fit_config", "fit_status"} <= set(MEMBERS)  # fmt: skip


@pytest.mark.parametrize("lr_schedule", [None, "cosine"])
def test_every_hook_gets_the_model_with_every_train_state_member(lr_schedule):
    torch.manual_seed(0)
    model = kiln.Model(nn.Linear(4, 2), loss="cross_entropy", lr=1e-2)
    snapshot = Snapshot(model)
    model.fit((X, Y), epochs=2, batch_size=32, lr_schedule=lr_schedule, callbacks=[snapshot], verbose=0)
    assert [hook for hook, _, _ in snapshot.seen] == ["fit_start", *(["before_step"] * 2 + ["epoch_end"]) * 2,
                                                      "fit_end"]  # fmt: skip
    assert all(is_model for _, is_model, _ in snapshot.seen)
    _, _, last = snapshot.seen[-1]
    assert dict(last["optimizers"]) == {"default": model.optimizer}
    if lr_schedule is None:
        assert last["schedule"] is None and dict(last["schedules"]) == {}
    else:
        assert last["schedule"] is not None and dict(last["schedules"]) == {"default": last["schedule"]}
    assert [values["global_step"] for hook, _, values in snapshot.seen if hook == "epoch_end"] == [2, 4]
    assert last["history"] is model.history and last["fit_status"] == "finished"


def test_a_callback_stops_the_fit_through_the_protocol():
    class StopAfterFirstEpoch(kiln.Callback):
        def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
            model.stop_training = True

    model = kiln.Model(nn.Linear(4, 2), loss="cross_entropy", lr=1e-2)
    history = model.fit((X, Y), epochs=5, batch_size=32, callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert history.epochs == [0]
