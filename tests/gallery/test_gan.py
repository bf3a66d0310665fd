"""examples/gan.py: a custom train_step with two optimizers covers the modes of a 2-D Gaussian mixture; the
registered generator serves samples."""

from __future__ import annotations

import re

from PIL import Image

from test_examples import run_example


def test_gan_covers_the_ring_and_its_generator_serves_samples(tmp_path):
    output = run_example("gan.py", "--epochs", "15", "--samples", "4096", "--plot", str(tmp_path / "gan.png"),
                         cwd=tmp_path)  # fmt: skip
    modes, share = re.search(r"^modes covered (\d)/8  high-quality samples ([0-9.]+)$", output, re.MULTILINE).groups()
    assert int(modes) >= 6 and float(share) >= 0.2  # a collapsed generator covers 1-2 modes; noise ~0.01 of samples
    assert re.search(r"last epoch: d_loss [0-9.]+  g_loss [0-9.]+", output)  # both losses tracked, finite
    served = re.search(r"served ring-gan@production: 1000 samples over HTTP, modes covered (\d)/8, high-quality "
                       r"([0-9.]+)", output)  # fmt: skip
    assert served, output
    assert int(served.group(1)) >= 6 and float(served.group(2)) >= 0.2
    with Image.open(tmp_path / "gan.png") as image:
        assert image.size == (550, 550)
