"""examples/gradients.py: the doctor diagnoses a deep sigmoid MLP and an exploding one; the remedies it names train."""

from __future__ import annotations

import re

from PIL import Image

from test_examples import run_example


def table(output: str) -> dict[str, tuple[float, float, float, str]]:
    """variant -> (test accuracy, first-layer gradient norm, last-layer gradient norm, doctor's finding kinds)."""
    rows = re.findall(r"^(\S+)\s+(nan|[0-9.]+)\s+([0-9.e+-]+)\s+([0-9.e+-]+)  (.+)$", output, flags=re.MULTILINE)
    return {name: (float(acc), float(first), float(last), kinds) for name, acc, first, last, kinds in rows}


def test_gradient_remedies_fix_what_the_doctor_finds(tmp_path):
    output = run_example("gradients.py", "--epochs", "5", "--plot", str(tmp_path / "gradients.png"), "--no-serve",
                         cwd=tmp_path)  # fmt: skip
    rows = table(output)
    assert set(rows) == {"sigmoid", "relu", "gelu", "xavier", "relu-he", "batchnorm", "residual", "exploding",
                         "clipped"}  # fmt: skip
    accuracy, first, last, kinds = rows["sigmoid"]
    assert "vanishing" in kinds and accuracy < 0.2 and first < 1e-12 * last  # the gradient never reaches layer 1
    assert "kiln doctor: vanishing gradients in '0', '2'" in output
    for remedy in ("Use ReLU or GELU instead of Sigmoid", "Add normalisation between layers", "kiln.init(module, "
                   "'kaiming')", "Add residual connections"):  # fmt: skip
        assert remedy in output
    for remedy in ("relu-he", "batchnorm", "residual"):  # each a working fix on its own
        accuracy, first, last, kinds = rows[remedy]
        assert accuracy >= 0.6 and kinds == "-" and first > 1e-3 * last, (remedy, rows[remedy])
    accuracy, first, _, kinds = rows["exploding"]
    assert "exploding" in kinds and accuracy != accuracy and first > 10  # nan: the loss overflowed
    assert "Clip gradients: fit(..., clip_grad_norm=" in output
    accuracy, _, _, kinds = rows["clipped"]
    assert accuracy >= 0.4 and kinds == "-"
    assert "registered digits-deep-mlp@1" in output
    with Image.open(tmp_path / "gradients.png") as image:
        assert image.size[0] > 1000
