"""examples/image_folder.py: PNG files -> ImageFolder with batch augmentation -> CNN -> registered -> served."""

from __future__ import annotations

import re

from PIL import Image

from test_examples import accuracy, run_example


def test_image_folder_writes_pngs_trains_with_augmentation_and_serves(tmp_path):
    data = tmp_path / "shapes"
    output = run_example("image_folder.py", "--epochs", "6", "--per-class", "150", "--test-per-class", "50",
                         "--data", str(data), "--samples", str(tmp_path / "samples.png"), cwd=tmp_path)  # fmt: skip
    assert accuracy(output) >= 0.9  # chance is 0.25
    for split, count in (("train", 150), ("test", 50)):
        for kind in ("circle", "cross", "square", "triangle"):
            files = sorted((data / split / kind).glob("*.png"))
            assert len(files) == count
    with Image.open(files[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    with Image.open(tmp_path / "samples.png") as image:  # 8 images, then the same 8 augmented, 4x enlarged
        assert image.size == (8 * 32 * 4, 2 * 32 * 4)
    served = re.search(r"served shapes@production: 200 PNG files sent as they are over HTTP, accuracy ([0-9.]+), "
                       r"agreement with the in-process model ([0-9.]+)", output)  # fmt: skip
    assert served, output
    assert float(served.group(1)) >= 0.9 and float(served.group(2)) == 1.0  # labels of raw PNG files, served
    assert re.search(r"^  (circle|cross|square|triangle) +<- test/", output, re.MULTILINE), output
    assert "kiln predict shapes --file " in output and "-H 'Content-Type: image/png'" in output
