"""A training job and a release pipeline: the digits model and data named by `job.toml`, released by `pipeline.toml`.

This file holds the two factories that `examples/pipeline/job.toml` names, `digits_pipeline:cnn` (a small CNN) and
`digits_pipeline:data` (scikit-learn's bundled 8×8 digits, no download); kiln finds it through the job's
`job.python_path` (the config's own folder) and trusts it because your own config names it. The job describes the
training once (`kiln train job.toml`) and records all that is needed to run it again (`kiln runs rerun`);
`pipeline.toml` trains it, evaluates it on the held-out test set, and registers, promotes and exports it only when
it beats the model production serves now.

```bash
cd examples/pipeline
kiln train job.toml                # one recorded run
kiln run pipeline.toml             # train, evaluate, gate, register, promote, export
kiln models rollback digits        # undo the last promotion
```

The walk-through, with each command's output, is [Jobs and pipelines](docs/pipelines.md).

Tested: `tests/jobs/test_examples.py` loads the job and the pipeline, checks that the page shows these files as they
are and that its commands parse, and (marked slow) runs the walk-through: a job trained and rerun to the same
result, a first release, a gate that holds back a model no better than production, a better model released after 8
epochs, and a rollback.
"""

from __future__ import annotations

from sklearn.datasets import load_digits
from torch import nn

from kiln.data import ArrayDataset


def cnn(channels: int = 16, classes: int = 10) -> nn.Module:
    """A small CNN for (B, 1, 8, 8) images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),  # (B, C, 8, 8)
        nn.MaxPool2d(2),  # (B, C, 4, 4)
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),  # (B, 2C, 4, 4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 2C)
        nn.Linear(2 * channels, classes),  # (B, classes)
    )  # fmt: skip


def data() -> ArrayDataset:
    """All 1797 digits as (N, 1, 8, 8) float32 pixels in [0, 1] with their labels; job.toml's [split] splits them."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]  # (N, 1, 8, 8)
    return ArrayDataset(x, digits.target, classes=[str(c) for c in range(10)])
