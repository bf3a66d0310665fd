"""What the gradient doctor leaves in a tracked fit's run: its findings and a few layers' update/weight ratios.

- ``doctor.json``, a run artifact: the findings so far as a JSON list of :meth:`Finding.to_dict` (the first
  :data:`MAX_FINDINGS`). Written when the fit starts (an empty list: the doctor is watching), whenever a look adds a
  finding, and when the fit ends, so a crashed or still-running run shows what was found. ``kiln ui`` lists them on
  the run page.
- ``update_ratio/<layer>`` metrics: ``||w_after - w_before|| / ||w_before||`` of one optimizer step, measured on the
  doctor's looks, for at most ``record_layers`` layers chosen when the fit starts (see :func:`choose_layers`), so
  that a 200-layer model gives a chart a person can read and the run's metric list stays short.

Only rank zero records (the tracking callback runs there only); an untracked fit records nothing and pays nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, KilnError
from .findings import Finding

if TYPE_CHECKING:
    from ..store import Run

__all__ = ["DOCTOR_ARTIFACT", "MAX_FINDINGS", "RATIO_PREFIX", "DoctorRecord", "choose_layers"]

DOCTOR_ARTIFACT = "doctor.json"  # kiln.ui.run reads it under the same name
RATIO_PREFIX = "update_ratio/"
MAX_FINDINGS = 100  # as many as the run page lists
_MAX_KEY = 200  # the store's limit on a metric name

logger = logging.getLogger("kiln.doctor")


def choose_layers(names: Sequence[str], record_layers: int | Sequence[str]) -> list[int]:
    """Indices into ``names`` (layers in registration order) whose update/weight ratio is logged.

    An int ``n`` keeps every layer when there are at most ``n``, else ``n`` spread evenly over the depth, the first
    and the last included; a list keeps the layers it names (an unknown name is a ConfigError listing known ones).

    Example:
        >>> choose_layers([f"blocks.{i}" for i in range(200)], 4)
        [0, 66, 133, 199]
    """
    if isinstance(record_layers, int):
        count = len(names)
        if count <= record_layers:
            return list(range(count))
        if record_layers <= 1:
            return [0][:record_layers]
        return sorted({round(i * (count - 1) / (record_layers - 1)) for i in range(record_layers)})
    index = {name: i for i, name in enumerate(names)}
    unknown = [name for name in record_layers if name not in index]
    if unknown:
        known = ", ".join(repr(name) for name in names[:8]) + (", ..." if len(names) > 8 else "")
        raise ConfigError(
            f"GradientDoctor record_layers names {unknown[0]!r}, which is no layer with trainable parameters of this "
            f"module; layers are named as module.named_modules() spells them: {known or 'none'}."
        )
    return sorted({index[name] for name in record_layers})


class DoctorRecord:
    """Writes the doctor's findings and update/weight ratios into ``run``; store errors are logged, never raised.

    Example:
        >>> record = DoctorRecord(run)
        >>> record.save_findings(doctor.findings)          # doctor.json, when it changed
        >>> record.log_ratios({"0": 1e-3}, step=51, epoch=2)
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self._written: bytes | None = None
        self._warned = False

    def save_findings(self, findings: Sequence[Finding]) -> bool:
        """Store ``findings`` as the run's ``doctor.json`` unless it already holds them; True once they are stored."""
        data = json.dumps([finding.to_dict() for finding in findings[:MAX_FINDINGS]], indent=1).encode()
        if data == self._written:
            return True
        try:
            with tempfile.TemporaryDirectory(prefix="kiln-doctor-") as folder:
                path = Path(folder) / DOCTOR_ARTIFACT
                path.write_bytes(data)
                self.run.log_artifact(DOCTOR_ARTIFACT, path)  # copied into the store's blobs: the temp file may go
        except (KilnError, OSError) as error:  # a full disk or an unreachable store must not stop training
            self._warn(f"could not store the doctor's findings with run {self.run.id}: {error}")
            return False
        self._written = data
        return True

    def log_ratios(self, ratios: Mapping[str, float], *, step: int, epoch: int) -> None:
        """Buffer ``update_ratio/<layer>`` rows at ``step``; the tracking callback's next flush writes them."""
        rows = [(RATIO_PREFIX + name, step, float(ratio), epoch) for name, ratio in ratios.items()]
        self.run.log_rows(row for row in rows if len(row[0]) <= _MAX_KEY and row[0].isprintable())

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(message)
        else:
            logger.debug(message)
