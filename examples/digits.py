"""Digits: kiln's main job on scikit-learn's bundled digits, train -> register -> serve -> query.

The 1,797 8×8 images of handwritten digits that ship with scikit-learn (no download) train a small CNN; the script
then does what every gallery example does after training:

1. records the run in the store (`$KILN_HOME`, default `./.kiln`: SQLite and content-addressed files);
2. registers the model as the next version of `digits` (safetensors, ONNX, signature, SHA-256 manifest), points the
   `production` alias at it and shows `kiln models show digits`;
3. starts `kiln serve digits@production` as a real server on 127.0.0.1 and queries it over HTTP, checking the answers
   against the model in this process.

```bash
python examples/digits.py --epochs 15
```

The [tutorial](docs/tutorial.md) walks through the same steps one at a time, with resuming and the doctor.

Tested: `tests/test_examples.py` runs it with `--epochs 6` and requires a test accuracy of at least 0.95, and the
359 test images served over HTTP answered with an accuracy of at least 0.95 and an agreement of 1.0 with the model
in memory.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import torch
from serving import example_parser
from sklearn.datasets import load_digits
from torch import nn

import kiln
import kiln.cli
import kiln.store
from kiln.data import ArrayDataset


def digits_cnn(channels: int = 32, classes: int = 10) -> nn.Module:
    """A small CNN for 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),  # (B, C, 8, 8)
        nn.MaxPool2d(2),  # (B, C, 4, 4)
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),  # (B, 2C, 4, 4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 2C)
        nn.Linear(2 * channels, classes),
    )


def load_data(seed: int = 0) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]  # (N, 1, 8, 8) in [0, 1]
    data = ArrayDataset(x, digits.target, classes=[str(c) for c in range(10)])
    train, test = data.split(0.8, seed=seed)
    train, val = train.split(0.9, seed=seed)
    return train, val, test


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, val, test = load_data(args.seed)
    store = kiln.store.Store()  # $KILN_HOME or ./.kiln
    model = kiln.Model(digits_cnn(), loss="cross_entropy", optimizer="adamw", lr=3e-3, metrics=["accuracy"],
                       store=store)
    model.fit(train, epochs=args.epochs, batch_size=64, validation=val, lr_schedule="cosine", seed=args.seed,
              run="digits-cnn")
    result = model.evaluate(test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")

    version = model.register("digits", description="small CNN on scikit-learn digits")
    kiln.store.Store().promote("digits", version.version, "production")
    print(f"registered digits@{version.version} (run {model.run_id}) and promoted it to production\n")
    kiln.cli.main(["models", "show", "digits"])

    expected = model.predict(test.x).argmax(-1).numpy()
    served = query_server("digits@production", test.x.numpy())
    agree = float((served == expected).mean())
    accuracy = float((served == test.y.numpy()).mean())
    print(f"\nserved digits@production: {len(served)} test images over HTTP, accuracy {accuracy:.4f}, "
          f"agreement with the in-process model {agree:.4f}")
    if agree < 1.0:
        raise SystemExit("the served model disagrees with the trained one")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def query_server(reference: str, images: np.ndarray) -> np.ndarray:
    """Start `kiln serve` on 127.0.0.1, send the images in requests of 32, stop the server; return the classes."""
    from kiln.serve import Client

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "kiln.cli", "serve", reference, "--port", str(port),
                               "--no-access-log"])
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            client.wait_ready(timeout=120)
            name = reference.split("@")[0]
            logits = [client.predict(name, images[i : i + 32]) for i in range(0, len(images), 32)]
    finally:
        server.terminate()  # SIGTERM: the server drains in-flight requests and exits 0
        server.wait(timeout=60)
    return np.concatenate(logits).argmax(-1)


if __name__ == "__main__":
    main()
