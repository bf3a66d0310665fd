"""What kiln shows of a study and of its trials: plain records, read from Optuna's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StudySummary", "TrialSummary"]


@dataclass(frozen=True)
class TrialSummary:
    """One trial: its state ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"), value, params and kiln run."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_id: str | None
    epochs: int  # epochs reported to the pruner
    seconds: float | None
    retry_of: int | None = None  # the trial (killed with its process) this one re-runs
    error: str | None = None


@dataclass(frozen=True)
class StudySummary:
    name: str
    metric: str | None
    direction: str
    trials: int
    best_value: float | None
    states: dict[str, int] = field(default_factory=dict)
