"""Tabular data: an MLP on scikit-learn's breast-cancer table, read from CSV, standardised, registered and served.

The data is scikit-learn's bundled breast-cancer table (569 tumours, 30 measurements, no download), written to a CSV
file with a header and a text label, as a spreadsheet would export it, and read back with
`kiln.data.read_csv(path, label="diagnosis")`: text labels become class ids, `dataset.classes` names them. The
features span four orders of magnitude (areas in the thousands, smoothness around 0.1), so they are standardised with
the training set's mean and standard deviation — `kiln.data.Normalize(mean, std)` as the datasets' batch transform —
and the same numbers are registered as the package's declared preprocessing (`kiln.export.preprocess`): a
`standardize` input step with the means, the standard deviations and the feature names, and a `classes` output step
with the diagnoses. The server applies it on `/v1` and in `kiln predict`, so a client sends raw CSV rows as they are
(`{"inputs": [[17.99, 10.38, ...30 values], ...]}`), the server computes `(x - mean) / std` as `Normalize` does and
answers `"labels"` ("benign" or "malignant") next to the raw `"outputs"`; `/v2` still takes standardised rows.

```bash
python examples/tabular.py --epochs 30
```

```text
read breast_cancer.csv: 569 rows, 30 features, classes ['benign', 'malignant']
test accuracy 0.9561  test loss 0.0917
registered breast-cancer@1 (run 046e2919d3104e67b70fe9d0e33ba392) and promoted it to production

serve it:   kiln serve breast-cancer@production
query it:   kiln predict breast-cancer --input @breast_cancer.json
            # or: curl -s localhost:8000/v1/models/breast-cancer:predict -d @breast_cancer.json
            the request holds one raw CSV row: the server standardises it and answers its diagnosis
  labels of the first five test rows: ['benign', 'benign', 'benign', 'benign', 'benign']
served breast-cancer@1 (onnx): 114 raw test rows standardised by the server, accuracy 0.9561, agreement with the
in-process model 1.0000
```

Tested: `tests/gallery/test_tabular.py` runs it with `--epochs 25` and requires a test accuracy of at least 0.93
(an untrained model, or one fed unstandardised features, is far below), the same over HTTP from the 114 raw rows the
server standardised, an agreement of 1.0 with the model in memory, and a request file that holds one raw row of 30
measurements.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from serving import example_parser, promote, served, show_commands
from sklearn.datasets import load_breast_cancer
from torch import nn

import kiln
import kiln.store
from kiln.data import Normalize, read_csv

NAME = "breast-cancer"


def write_csv(path: Path) -> None:
    """The data set as a CSV file: 30 named feature columns, then the diagnosis as text."""
    data = load_breast_cancer()
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*data.feature_names, "diagnosis"])
        for row, target in zip(data.data, data.target, strict=True):
            writer.writerow([*(f"{value:.6g}" for value in row), data.target_names[target]])


def mlp(features: int, hidden: int = 64, classes: int = 2) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Dropout(0.1),  # (B, H)
        nn.Linear(hidden, hidden),
        nn.ReLU(),  # (B, H)
        nn.Linear(hidden, classes),  # (B, 2): one logit per class
    )


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=Path("breast_cancer.csv"), help="where to write the table")
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    write_csv(args.csv)
    data = read_csv(args.csv, label="diagnosis")  # the header names the label; text labels become class ids
    print(f"read {args.csv}: {len(data)} rows, {data.x.shape[1]} features, classes {data.classes}")
    train, test = data.split(0.8, seed=args.seed)
    train, val = train.split(0.9, seed=args.seed)

    mean, std = train.x.mean(0), train.x.std(0)  # (30,) each: the training set's statistics only
    for dataset in (train, val, test):
        dataset.batch_transform = Normalize(mean, std)  # Normalize's channel dim is dim 1: one per feature

    torch.manual_seed(args.seed)
    model = kiln.Model(
        mlp(data.x.shape[1]),
        loss="cross_entropy",
        optimizer="adamw",
        lr=1e-3,
        optimizer_options={"weight_decay": 1e-2},
        metrics=["accuracy"],
        store=kiln.store.Store(),
    )
    model.fit(
        train,
        epochs=args.epochs,
        batch_size=32,
        validation=val,
        seed=args.seed,
        run="breast-cancer-mlp",
        lr_schedule="cosine",
        verbose=0,
    )
    result = model.evaluate(test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")

    preprocessing = {  # what the server does with a request: raw rows in, diagnoses out (kiln.export.preprocess)
        "format": "kiln.preprocessing/1",
        "input": {"type": "standardize", "mean": mean.tolist(), "std": std.tolist(),  # (x - mean) / std, per feature
                  "features": list(load_breast_cancer().feature_names)},  # the column order the model expects
        "output": {"type": "classes", "names": data.classes},  # answers carry "labels" next to the logits
    }  # fmt: skip
    version = model.register(
        NAME,
        preprocessing=preprocessing,
        example_input=Normalize(mean, std)(test.x[:1]),
        description="MLP on scikit-learn's breast-cancer table (standardised by the server)",
    )
    promote(version, model.run_id)

    raw = test.x.numpy()  # (N, 30): measurements as they are in the CSV, not standardised
    show_commands(
        f"{NAME}@production",
        {"inputs": raw[:1]},
        Path("breast_cancer.json"),
        note="the request holds one raw CSV row: the server standardises it and answers its diagnosis",
    )
    if args.no_serve:
        return
    expected = [data.classes[i] for i in model.predict(test).argmax(-1).tolist()]
    with served(f"{NAME}@production") as client:
        metadata = client.metadata(NAME)  # version, runtime, signature, the preprocessing and what the server applies
        labels = client.answer(NAME, raw)["labels"]  # raw rows in, diagnoses out
    truth = [data.classes[i] for i in test.y.tolist()]
    accuracy = float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))
    agree = float(np.mean([a == b for a, b in zip(labels, expected, strict=True)]))
    print(f"  labels of the first five test rows: {labels[:5]}")
    print(
        f"served {metadata['reference']} ({metadata['runtime']}): {len(raw)} raw test rows standardised by the "
        f"server, accuracy {accuracy:.4f}, agreement with the in-process model {agree:.4f}"
    )


if __name__ == "__main__":
    main()
