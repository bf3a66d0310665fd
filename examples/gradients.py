"""Vanishing and exploding gradients, shown: a deep plain sigmoid MLP the gradient doctor diagnoses, then each remedy.

On scikit-learn's digits (no download), every variant is the same 20-layer MLP (64 units a layer) trained the same
way; only what the remedy changes differs:

- ``sigmoid``: the plain network. Each sigmoid multiplies the gradient by its slope, at most 0.25, so the first
  layers get almost nothing: the doctor reports vanishing gradients and names its remedies;
- ``relu``, ``gelu``: activations whose slope is 1 (or close) where they are active;
- ``xavier``: sigmoid again, with Glorot initialisation (``kiln.init(net, "xavier", nonlinearity="sigmoid")``);
- ``relu-he``: ReLU with He initialisation (``kiln.init(net, "kaiming")``), which keeps the signal's scale layer
  after layer;
- ``batchnorm``: sigmoid with BatchNorm before each activation;
- ``residual``: sigmoid inside residual blocks, ``x + W sigmoid(x)``, so the gradient has a path around every layer;
- ``exploding``: ReLU with weights initialised 1.2 times too large (the signal grows 1.2x a layer, 38x over 20) and
  SGD with momentum at a learning rate of 0.05: the gradients blow up, the doctor reports it and the loss overflows;
  ``clipped``: the same with ``clip_grad_norm=1.0``, the first remedy the doctor names for it.

Each variant is a recorded run; the script prints a table (test accuracy, gradient norms of the first and last
hidden layer at initialisation, the doctor's findings), saves a plot of per-layer gradient norms and accuracy per
epoch, and registers the best remedy. Run it with:

    python examples/gradients.py --epochs 10 --plot gradients.png
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from serving import promote, served, show_commands
from sklearn.datasets import load_digits
from torch import nn

import kiln
import kiln.store
from kiln.data import ArrayDataset
from kiln.errors import NonFiniteLossError

NAME = "digits-deep-mlp"
VARIANTS = ("sigmoid", "relu", "gelu", "xavier", "relu-he", "batchnorm", "residual", "exploding", "clipped")


class Residual(nn.Module):
    """``x + linear(activation(x))``: the identity carries the gradient around the layer."""

    def __init__(self, width: int, activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.activation, self.linear = activation(), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(self.activation(x))  # (B, W)


def deep_mlp(variant: str, *, depth: int, width: int = 64) -> nn.Module:
    """``depth`` hidden layers of ``width`` units between 64 pixels and 10 classes, built as ``variant`` says."""
    activation: Callable[[], nn.Module] = {"relu": nn.ReLU, "relu-he": nn.ReLU, "gelu": nn.GELU, "exploding": nn.ReLU,
                                           "clipped": nn.ReLU}.get(variant, nn.Sigmoid)  # fmt: skip
    layers: list[nn.Module] = [nn.Linear(64, width)]
    for _ in range(depth - 1):
        if variant == "residual":
            layers.append(Residual(width, activation))
        elif variant == "batchnorm":
            layers += [nn.BatchNorm1d(width), activation(), nn.Linear(width, width)]
        else:
            layers += [activation(), nn.Linear(width, width)]
    net = nn.Sequential(*layers, activation(), nn.Linear(width, 10))  # (B, 10)
    if variant == "xavier":
        kiln.init(net, "xavier", nonlinearity="sigmoid")
    elif variant == "relu-he":
        kiln.init(net, "kaiming")
    elif variant in ("exploding", "clipped"):
        kiln.init(net, "kaiming", gain=1.2 * 2**0.5)  # 1.2 times He's gain: the signal grows 1.2x a layer
    return net


def gradient_norms(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The gradient norm of every Linear layer's weight, input to output, for one batch."""
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    grads = [m.weight.grad for m in net.modules() if isinstance(m, nn.Linear)]
    norms = [float(g.norm()) if g is not None else 0.0 for g in grads]
    net.zero_grad()
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--depth", type=int, default=20, help="hidden layers")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--plot", type=Path, default=None, help="save the plot here (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    digits = load_digits()
    data = ArrayDataset((digits.data / 16.0).astype("float32"), digits.target)  # (1797, 64) in [0, 1]
    train, test = data.split(0.8, seed=args.seed)
    train, val = train.split(0.9, seed=args.seed)
    probe_x, probe_y = train.x[:256], train.y[:256]  # the batch the gradient norms are measured on
    store = kiln.store.Store()
    # The doctor's findings are kept in history.diagnostics and printed below, one of a kind per variant; the
    # handler stops its logger from printing every one of them a second time on stderr.
    logging.getLogger("kiln.doctor").addHandler(logging.NullHandler())

    results: dict[str, dict] = {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        torch.manual_seed(args.seed)
        net = deep_mlp(variant, depth=args.depth)
        norms = gradient_norms(net, probe_x, probe_y)
        exploding = variant in ("exploding", "clipped")
        optimizer = ("sgd", 0.05, {"momentum": 0.9}) if exploding else ("adamw", 1e-3, {})
        model = kiln.Model(net, loss="cross_entropy", optimizer=optimizer[0], lr=optimizer[1],
                           optimizer_options=optimizer[2], metrics=["accuracy"], store=store)  # fmt: skip
        print(f"\n--- {variant}")
        try:
            model.fit(train, epochs=args.epochs, batch_size=64, validation=val, seed=args.seed, verbose=0,
                      clip_grad_norm=1.0 if variant == "clipped" else None, run=f"deep-mlp-{variant}",
                      doctor=kiln.GradientDoctor(print_findings=False))  # fmt: skip
            accuracy = model.evaluate(test)["accuracy"]
        except NonFiniteLossError as error:  # the loss overflowed: the run is recorded as failed
            print(f"diverged: {error}")
            accuracy = float("nan")
        history = model.history
        shown = set()
        for finding in history.diagnostics:  # the first finding of each kind (dead ReLUs come one per layer)
            if finding.kind not in shown:
                shown.add(finding.kind)
                print(finding)
        curve = history.history.get("val_accuracy", [])  # empty when the first epoch diverged
        results[variant] = {"model": model, "accuracy": accuracy, "norms": norms, "val_accuracy": curve,
                            "findings": history.diagnostics}  # fmt: skip

    print(f"\n{'variant':<10} {'test accuracy':>13} {'grad norm, first layer':>23} {'last layer':>11}  doctor")
    for variant, r in results.items():
        kinds = ", ".join(sorted({f.kind for f in r["findings"]})) or "-"
        print(f"{variant:<10} {r['accuracy']:>13.4f} {r['norms'][0]:>23.2e} {r['norms'][-1]:>11.2e}  {kinds}")
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot saved to {args.plot}")

    best = max(
        (v for v in results if results[v]["accuracy"] == results[v]["accuracy"]), key=lambda v: results[v]["accuracy"]
    )
    model = results[best]["model"]
    print(f"test accuracy {results[best]['accuracy']:.4f} ({best}, the best variant)")
    version = model.register(NAME, preprocessing={"divide_by": 16.0},
                             description=f"{args.depth}-layer MLP on digits, remedy: {best}")  # fmt: skip
    promote(version, model.run_id)
    show_commands(f"{NAME}@production", {"inputs": test.x[:1].numpy()}, Path("digits.json"),
                  note="the request holds one digit's 64 pixels divided by 16")  # fmt: skip
    if not args.no_serve:
        with served(f"{NAME}@production") as client:
            served_accuracy = float((client.predict(NAME, test.x.numpy()).argmax(-1) == test.y.numpy()).mean())
        print(f"served {NAME}@production: {len(test)} test digits over HTTP, accuracy {served_accuracy:.4f}")


def plot(results: dict[str, dict], path: Path) -> None:
    """Left: the gradient norm of each layer at initialisation; right: validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant, r in results.items():
        style = {"sigmoid": "--", "exploding": ":"}.get(variant, "-")  # the two broken baselines
        marker = "x" if variant == "exploding" else "."
        label = f"{variant} (diverged)" if not r["val_accuracy"] else variant
        left.plot(range(1, len(r["norms"]) + 1), r["norms"], style, marker=marker, label=label)
        right.plot(range(1, len(r["val_accuracy"]) + 1), r["val_accuracy"], style, marker=marker, label=label)
    left.set(yscale="log", xlabel="layer (input → output)", ylabel="gradient norm at initialisation",
             title="Gradient reaching each layer")  # fmt: skip
    right.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1), title="Training")
    left.legend(loc="lower right", fontsize="small", ncols=2)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
