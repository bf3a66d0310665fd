"""A GAN: a custom training step, two networks and two optimizers, on a 2-D mixture of eight Gaussians.

The discriminator learns to tell real points from generated ones, then the generator learns to fool it, each with its
own Adam, in a `train_step` the script writes ([custom training steps](docs/custom_step.md)):
`optimizer={"generator": ("adam", {..., "params": "generator"}), "discriminator": ...}`. fit keeps the data loading,
the run tracking of both losses, checkpoints and the doctor.

The data is the classic test of mode collapse: eight Gaussians on a ring of radius 2 with a standard deviation of
0.05. The script measures how many modes get at least 2% of 2,000 samples, and the share of samples within four
standard deviations of a mode ("high quality"), saves a picture of real and generated points, then registers the
generator alone (8 noise values in, a 2-D point out) and serves it: the server turns noise into samples.

```bash
python examples/gan.py --epochs 30 --plot gan.png
```

```text
last epoch: d_loss 0.913  g_loss 2.125
modes covered 7/8  high-quality samples 0.6375
plot saved to gan.png
registered ring-gan@1 (run 7907c4ac5a764204b6048dd1add5e669) and promoted it to production

serve it:   kiln serve ring-gan@production
query it:   kiln predict ring-gan --input @gan_noise.json
            # or: curl -s localhost:8000/v1/models/ring-gan:predict -d @gan_noise.json
            the request holds 8 standard-normal numbers; the answer is a 2-D point
served ring-gan@production: 1000 samples over HTTP, modes covered 6/8, high-quality 0.6250
```

![Real points on eight modes and the generator's samples](docs/images/gallery/gan.png)

The generator has found seven of the eight modes and strings some samples along the ring between them, the typical
picture of a small GAN after a short training; the served samples (other noise) cover six with 2% or more.

Tested: `tests/gallery/test_gan.py` runs it with `--epochs 15 --samples 4096` and requires at least 6 of the 8 modes
covered and a high-quality share of at least 0.2, in the script and over HTTP (a collapsed generator covers one or
two modes, and almost no sample of an untrained one is near a mode).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from serving import example_parser, promote, served, show_commands
from torch import nn

import kiln
import kiln.store
from kiln.data import ArrayDataset
from kiln.export import register_module

NAME = "ring-gan"
MODES, RADIUS, STD, NOISE = 8, 2.0, 0.05, 8


def centres() -> torch.Tensor:
    angles = torch.arange(MODES) * (2 * math.pi / MODES)
    return RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)  # (8, 2)


def ring(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mode = torch.randint(0, MODES, (n,), generator=generator)
    return centres()[mode] + STD * torch.randn(n, 2, generator=generator)  # (n, 2)


def quality(samples: torch.Tensor) -> tuple[int, float]:
    """(modes holding at least 2% of the samples, share of samples within 4 standard deviations of a mode)."""
    distance, nearest = torch.cdist(samples, centres()).min(dim=1)  # (n,) each
    close = distance < 4 * STD
    counts = torch.bincount(nearest[close], minlength=MODES)
    return int((counts >= 0.02 * len(samples)).sum()), float(close.float().mean())


class GAN(kiln.Model):
    """The discriminator learns to tell real points from generated ones; the generator learns to fool it."""

    def train_step(self, batch: tuple[torch.Tensor, None]) -> dict[str, torch.Tensor]:
        real, _ = batch  # (B, 2): the data has inputs only
        generator, discriminator = self.module["generator"], self.module["discriminator"]
        fake = generator(torch.randn(len(real), NOISE, device=self.device))  # (B, 2)
        ones, zeros = torch.ones(len(real), 1, device=self.device), torch.zeros(len(real), 1, device=self.device)

        d_loss = F.binary_cross_entropy_with_logits(discriminator(real), ones) + F.binary_cross_entropy_with_logits(
            discriminator(fake.detach()), zeros
        )
        self.backward(d_loss, "discriminator")  # gradients for the discriminator's parameters only
        self.step("discriminator")

        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)  # non-saturating generator loss
        self.backward(g_loss, "generator")
        self.step("generator")
        return {"d_loss": d_loss, "g_loss": g_loss}


def mlp(inputs: int, outputs: int, width: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
                         nn.Linear(width, outputs))  # fmt: skip


def plot(real: torch.Tensor, fake: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(real[:, 0], real[:, 1], s=4, alpha=0.4, label="real")
    axis.scatter(fake[:, 0], fake[:, 1], s=4, alpha=0.4, label="generated")
    axis.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title=title)
    axis.legend(loc="upper right", markerscale=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=8192, help="real points to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="save real and generated points here (PNG)")
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    module = nn.ModuleDict({"generator": mlp(NOISE, 2), "discriminator": mlp(2, 1)})
    adam = {"lr": 1e-3, "betas": (0.5, 0.999)}
    store = kiln.store.Store()
    optimizers = {name: ("adam", {**adam, "params": name}) for name in ("generator", "discriminator")}
    gan = GAN(module, optimizer=optimizers, store=store)
    history = gan.fit(ArrayDataset(ring(args.samples, args.seed)), epochs=args.epochs, batch_size=64,
                      seed=args.seed, run="ring-gan", verbose=0)  # fmt: skip
    print(f"last epoch: d_loss {history['d_loss'][-1]:.3f}  g_loss {history['g_loss'][-1]:.3f}")

    generator = module["generator"].eval()
    with torch.no_grad():
        fake = generator(torch.randn(2000, NOISE, generator=torch.Generator().manual_seed(1)))  # (2000, 2)
    modes, share = quality(fake)
    print(f"modes covered {modes}/{MODES}  high-quality samples {share:.4f}")
    if args.plot:
        plot(ring(2000, seed=1), fake, args.plot, f"{modes}/{MODES} modes, {share:.0%} within 4σ of one")
        print(f"plot saved to {args.plot}")

    noise = torch.randn(1, NOISE)
    version = register_module(generator, NAME, store=store, example_input=noise, run_id=gan.run_id,
                              metrics={"modes": modes, "high_quality": share},
                              description="GAN generator, eight Gaussians: noise (8) in, a 2-D point out")  # fmt: skip
    promote(version, gan.run_id)
    show_commands(f"{NAME}@production", {"inputs": noise.numpy()}, Path("gan_noise.json"),
                  note=f"the request holds {NOISE} standard-normal numbers; the answer is a 2-D point")  # fmt: skip
    if args.no_serve:
        return
    with served(f"{NAME}@production") as client:
        points = torch.from_numpy(client.predict(NAME, torch.randn(1000, NOISE).numpy())).float()  # (1000, 2)
    modes, share = quality(points)
    print(f"served {NAME}@production: 1000 samples over HTTP, modes covered {modes}/{MODES}, high-quality {share:.4f}")


if __name__ == "__main__":
    main()
