"""Vanishing and exploding gradients: a deep sigmoid MLP the gradient doctor diagnoses, then each remedy it names.

This is the tutorial on the remedies the gradient doctor proposes. Every variant is the same network — 20 hidden
layers of 64 units between the 64 pixels of scikit-learn's digits (no download) and the 10 classes — trained the
same way (AdamW, learning rate 1e-3, batch 64); only what a remedy changes differs:

- `sigmoid`: the plain network;
- `relu`, `gelu`: activations whose slope is 1 (or close) where they are active;
- `xavier`: sigmoid again, with Glorot initialisation (`kiln.init(net, "xavier", nonlinearity="sigmoid")`);
- `relu-he`: ReLU with He initialisation (`kiln.init(net, "kaiming")`);
- `batchnorm`: sigmoid with BatchNorm before each activation;
- `residual`: sigmoid inside residual blocks, `x + W·sigmoid(x)`;
- `exploding`: ReLU with weights initialised 1.2 times larger than He's scheme and SGD with momentum at a learning
  rate of 0.05; `clipped`: the same with `clip_grad_norm=1.0`.

Each variant is a recorded run; the script prints a table (test accuracy, gradient norms of the first and last hidden
layer at initialisation, the doctor's findings), saves a plot of per-layer gradient norms and accuracy per epoch,
registers the best variant and serves it. `kiln runs list` shows the nine runs side by side.

```bash
python examples/gradients.py --epochs 10 --plot gradients.png
```

## The diagnosis

The plain network uses sigmoids. Backpropagation multiplies the gradient, layer after layer, by each activation's
slope — at most 0.25 for a sigmoid — and by the layer's weights, which torch initialises for a gain of about 0.6. By
the first layer the gradient is 10⁻¹⁷ of what the last layer gets: the first layers never learn, and the network stays
at chance. The doctor sees it on its second look and names the remedies:

```text
--- sigmoid
kiln doctor: vanishing gradients in '0', '2', '4', '6', '8', '10', '12', '14', '16', '18', '20', '22', '24', ...
  evidence: gradient norms '0' 1.1e-17, '2' 7.6e-17, '4' 5.8e-16, '6' 4.4e-15, '8' 3.3e-14 ... at step 1 are below
  0.001x the largest, '40' 0.82 (smallest ratio 1.4e-17), on 2 looks in a row
  try: Use ReLU or GELU instead of Sigmoid (at '1', '3', '5', '7' ...): a saturating activation's slope is at most 1
  (0.25 for Sigmoid) and shrinks the gradient at every layer.
  try: Add normalisation between layers: BatchNorm (MLPs, CNNs) or LayerNorm (transformers, RNNs) keeps every
  layer's activations and gradients at a similar scale.
  try: Initialise for the activation: kiln.init(module, 'kaiming') for ReLU/GELU networks, kiln.init(module,
  'xavier', nonlinearity='tanh') for tanh/sigmoid ones.
  try: Add residual connections (x + layer(x)) so the gradient reaches early layers directly.
```

The same 20 layers with ReLU, weights initialised 1.2 times larger than He's scheme and SGD with momentum at a
learning rate of 0.05 fail the other way: each layer multiplies the signal by about 1.2, the gradient is in the
hundreds at initialisation, the first step makes it larger still, and by the third step the loss is NaN:

```text
--- exploding
kiln doctor: exploding gradients in '16', '14', '18' (step 1)
  evidence: the total gradient norm 1.09e+06 at step 1 is 1536x the median 711 of 1 earlier looks (largest earlier
  711); largest layers: '16' 6.22e+05, '14' 3.88e+05, '18' 3.44e+05; the update after the previous look moved '16'
  by 2.1e+03 of its norm (1e-3 is usual)
  try: Clip gradients: fit(..., clip_grad_norm=710), the 90th percentile of the total gradient norm over 1 healthy
  looks (median 711).
  try: Lower the learning rate (now 0.05), e.g. to 0.005, and warm it up and decay it:
  lr_schedule=LRSchedule('cosine', warmup_steps=10).
  try: Add normalisation (BatchNorm for MLPs and CNNs, LayerNorm for transformers and RNNs) to keep activations and
  gradients in range.
  try: Average the weights to smooth out unstable steps: callbacks=[EMA(decay=0.999)] from kiln.train.averaging.
kiln doctor: non-finite values in '40', '38', '36', '34', '32', '30', '28', '26', '24', '22', '20', '18', '16', ...
  evidence: the gradient norm of '40' (Linear) is nan at step 2; every layer's gradient is non-finite, so it starts
  at the loss or the output layer; all weights are still finite, so it arises in this step's backward pass
  try: Check the forward of '40' (Linear) and what follows it for operations whose gradient overflows or divides by
  zero (log, sqrt, pow, division, exp, the norm of a zero vector): add an epsilon or clamp.
  try: Run one step under torch.autograd.set_detect_anomaly(True) to name the operation that made it.
diverged: the loss became nan at epoch 0, batch 2 (around optimizer step 21). Lower the learning rate, set
clip_grad_norm (e.g. 1.0), pass on_nonfinite='skip', or check that batch's inputs for NaN/Inf.
```

The doctor's clipping value comes from the looks before the blow-up; here there was one, already at 711, so the
suggested 710 would not have helped. The script clips at 1.0 instead, as the loop's own error message suggests.

## The remedies, one at a time

```text
variant    test accuracy  grad norm, first layer  last layer  doctor
sigmoid           0.1003                5.89e-18    4.38e-01  vanishing
relu              0.1058                1.08e-08    2.96e-02  dead_relu, vanishing
gelu              0.1058                1.39e-11    1.70e-02  vanishing
xavier            0.1058                2.42e-13    7.03e-01  vanishing
relu-he           0.8969                2.32e+00    3.11e+00  -
batchnorm         0.8969                7.62e-02    4.44e-01  -
residual          0.8886                8.86e-02    5.83e-01  -
exploding            nan                1.24e+02    2.61e+02  exploding, nonfinite
clipped           0.8273                1.24e+02    2.61e+02  -
```

![Gradient norm per layer at initialisation and accuracy per epoch, per variant](docs/images/gallery/gradients.png)

What each row teaches:

- **ReLU or GELU alone (`relu`, `gelu`) is not enough at this depth.** Their slope is 1 where they are active, but
  torch's default initialisation (uniform with a gain of 1/√3) shrinks the signal at every layer, and ReLU halves
  it again; 20 layers still lose 10⁸–10¹¹. The doctor keeps reporting vanishing gradients and, for ReLU, dead units
  whose input is negative for every sample.
- **Initialisation for the activation is what makes the activation work.** `kiln.init(net, "kaiming")` draws each
  weight with a standard deviation of √2/√fan_in, which exactly compensates ReLU's halving: the gradient reaching
  layer 1 is the same size as the last layer's (`relu-he`, the purple line at 10⁰ in the plot), and the network
  trains. Glorot's scheme (`xavier`) is the right one for sigmoid and tanh, but it cannot undo a slope of 0.25 per
  layer: alone it leaves the sigmoid network at chance. Activation and initialisation are one remedy in two parts.
- **Normalisation (`batchnorm`)** re-centres and re-scales every layer's pre-activations to mean 0 and variance 1,
  where a sigmoid's slope is largest; the gradients stay within a factor of 10 across all 20 layers, even with
  sigmoids and the default initialisation.
- **Residual connections (`residual`)**, `x + W·sigmoid(x)`, give the gradient a path around every layer: the
  identity's derivative is 1, so what reaches layer 1 is no longer a product of 20 small factors.
- **Clipping (`clipped`)** does not change the gradients' size at initialisation (same line as `exploding`), but it
  caps every update: `clip_grad_norm=1.0` rescales the gradient to norm 1 when it is larger, so no single step can
  throw the weights far enough to overflow, and the network trains to 0.83. Lowering the learning rate and adding
  normalisation (the doctor's other suggestions) work too.

The script registers the best variant and serves it:

```text
test accuracy 0.8969 (relu-he, the best variant)
registered digits-deep-mlp@1 (run dd326c42904d4c2d806d557de78b2a87) and promoted it to production
served digits-deep-mlp@production: 359 test digits over HTTP, accuracy 0.8969
```

Tested: `tests/gallery/test_gradients.py` runs it with `--epochs 5` and requires: `sigmoid` below 0.2 in accuracy
with the doctor's vanishing-gradient finding and a first-layer gradient under 1e-12 of the last layer's; `relu-he`,
`batchnorm` and `residual` each at least 0.6 with no finding; `exploding` diverged (NaN) with the doctor's
exploding-gradient finding and a first-layer gradient above 10; `clipped` at least 0.4 with no finding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from serving import example_parser, promote, served, show_commands
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
    parser = example_parser(__doc__, __file__)
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
