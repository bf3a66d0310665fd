"""Images from a folder: a CNN on PNG files read through `kiln.data.ImageFolder`, with batch-level augmentation.

The script draws 1,600 coloured shapes (circle, cross, square, triangle; random size, position, rotation and colours
on a noisy background) with Pillow and writes them as `root/<split>/<class>/<n>.png`, the layout most image data
sets use, in a cache folder it reuses (`--data`). `ImageFolder` reads them (class ids from the sorted folder names)
and `to_memory()` decodes each file once. Augmentation runs on whole batches, only while training:
`Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), GaussianNoise(0.05)])`. The model is a small CNN; it is
registered with a declared image step (`kiln.export.preprocess`: RGB, 32×32, divided by 255, CHW) and a `classes`
output step, promoted to `shapes@production` and served. The server applies the step on `/v1` and in
`kiln predict`: a client sends the PNG (or JPEG) file itself, as the body (`Content-Type: image/png`) or base64 in
JSON (`{"inputs": [{"b64": "..."}, ...]}`), the server decodes it as `ImageFolder` does (resized to 32×32 if it is
not) and answers the shape's name under `"labels"` next to the raw `"outputs"`. The script sends one test file as a
body and all 400 as base64, 64 a request; `/v2` still takes the decoded tensor.

```bash
python examples/image_folder.py --epochs 8 --samples shapes.png
```

```text
ImageFolder('/tmp/kiln-examples/shapes-300-100-0/train', n=1200, classes=4, size=None)
ImageFolder('/tmp/kiln-examples/shapes-300-100-0/test', n=400, classes=4, size=None)
test accuracy 1.0000  test loss 0.0112
registered shapes@1 (run f9993ba0756c41e291b4c6c11af539c8) and promoted it to production

serve it:   kiln serve shapes@production
query it:   kiln predict shapes --file /tmp/kiln-examples/shapes-300-100-0/test/circle/0000.png
            # or: curl -s localhost:8000/v1/models/shapes:predict
            #       --data-binary @/tmp/kiln-examples/shapes-300-100-0/test/circle/0000.png -H 'Content-Type: image/png'
            the server decodes the PNG file as ImageFolder does and answers its shape
  circle   <- test/circle/0000.png
served shapes@production: 400 PNG files sent as they are over HTTP, accuracy 1.0000, agreement with the
in-process model 1.0000
```

Eight training images (top) and one augmented draw of the same batch (bottom: shifted by the padded crop, some
mirrored, with noise), as `--samples` saves them:

![Training shapes and their augmented versions](docs/images/gallery/shapes_augmentation.png)

Tested: `tests/gallery/test_image_folder.py` runs it with `--epochs 6 --per-class 150 --test-per-class 50` and
requires a test accuracy of at least 0.9 (chance is a quarter), the 200 test PNG files sent as they are over HTTP
labelled with at least 0.9 and an agreement of 1.0 with the model in memory, the `kiln predict --file` and `curl`
commands printed, and the files and the picture of the sizes expected.
"""

from __future__ import annotations

import base64
import math
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from serving import example_parser, promote, served, show_file_commands
from torch import nn

import kiln
import kiln.store
from kiln.data import Compose, GaussianNoise, ImageFolder, RandomCrop, RandomHorizontalFlip

NAME = "shapes"
CLASSES = ("circle", "cross", "square", "triangle")
SIZE = 32


def polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The corners of a square, triangle or cross of radius ``r`` around (cx, cy), rotated by ``angle``."""
    points: list[tuple[float, float]]
    if kind == "square":
        points = [(0.75, 0.75), (-0.75, 0.75), (-0.75, -0.75), (0.75, -0.75)]
    elif kind == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:  # a plus sign with arms 0.3 r wide
        w = 0.3
        points = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w),
                  (1, w), (w, w)]  # fmt: skip
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def draw_shape(kind: str, rng: random.Random) -> Image.Image:
    """One SIZE x SIZE RGB image of ``kind``."""
    background = tuple(rng.randrange(0, 120) for _ in range(3))
    foreground = tuple(rng.randrange(130, 256) for _ in range(3))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (SIZE, SIZE, 3))
    pixels = np.clip(np.array(background, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    r = rng.uniform(6, 12)
    cx, cy = rng.uniform(r, SIZE - r), rng.uniform(r, SIZE - r)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=foreground)
    else:
        draw.polygon(polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=foreground)
    return image


def write_dataset(root: Path, *, per_class: int, test_per_class: int, seed: int) -> Path:
    """PNG files under root/train/<class>/ and root/test/<class>/; written once, then reused."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    rng = random.Random(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))  # renamed into place when complete
    for split, count in (("train", per_class), ("test", test_per_class)):
        for kind in CLASSES:
            folder = partial / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                draw_shape(kind, rng).save(folder / f"{i:04d}.png")
    try:
        partial.rename(root)
    except OSError:  # another process wrote the same data set first
        shutil.rmtree(partial)
    return root


def cnn(classes: int = len(CLASSES)) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 16, 16)
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 8, 8)
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 4, 4)
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),  # (B, 64, 4, 4)
        nn.MaxPool2d(4), nn.Flatten(),  # (B, 64): the largest response anywhere in the image
        nn.Linear(64, classes),  # (B, 4)
    )  # fmt: skip


def save_samples(dataset: kiln.data.ArrayDataset, path: Path, count: int = 8) -> None:
    """A PNG of ``count`` training images (top row) and an augmented draw of the same images (bottom row)."""
    images = dataset.x[:count]  # (count, 3, H, W) in [0, 1]
    with torch.enable_grad():  # batch transforms augment only while gradients are on, i.e. while training
        augmented = dataset.batch_transform(images.clone())
    rows = torch.cat([torch.cat(list(images), dim=2), torch.cat(list(augmented.clamp(0, 1)), dim=2)], dim=1)
    grid = (rows.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (2H, count*W, 3)
    Image.fromarray(grid, "RGB").resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=300, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="where the PNG files go (default: a cache in /tmp)")
    parser.add_argument("--samples", type=Path, default=None, help="also save a PNG of images and their augmentation")
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    cache = Path(tempfile.gettempdir()) / "kiln-examples" / f"shapes-{args.per_class}-{args.test_per_class}-{args.seed}"
    root = write_dataset(args.data or cache, per_class=args.per_class, test_per_class=args.test_per_class,
                         seed=args.seed)  # fmt: skip
    augment = Compose([RandomCrop(SIZE, padding=4), RandomHorizontalFlip(), GaussianNoise(0.05)])
    train_folder = ImageFolder(root / "train", batch_transform=augment)
    test_folder = ImageFolder(root / "test", classes=train_folder.classes)
    print(f"{train_folder}\n{test_folder}")
    train, test = train_folder.to_memory(), test_folder.to_memory()  # decode each PNG once
    train, val = train.split(0.9, seed=args.seed)
    if args.samples:
        save_samples(train, args.samples)

    torch.manual_seed(args.seed)
    model = kiln.Model(cnn(), loss="cross_entropy", optimizer="adamw", lr=1e-2, metrics=["accuracy"],
                       store=kiln.store.Store())  # fmt: skip
    model.fit(train, epochs=args.epochs, batch_size=32, validation=val, seed=args.seed, run="shapes-cnn",
              lr_schedule=kiln.LRSchedule("cosine", warmup_steps=20), verbose=0)  # fmt: skip
    result = model.evaluate(test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")

    preprocessing = {  # what the server does with a request: a PNG or JPEG in, the shape out (kiln.export.preprocess)
        "format": "kiln.preprocessing/1",
        "input": {"type": "image", "mode": "RGB", "size": [SIZE, SIZE], "divide_by": 255, "layout": "CHW"},
        "output": {"type": "classes", "names": train_folder.classes},  # answers carry "labels" next to the logits
    }  # decoded as ImageFolder decodes: RGB, resized to 32x32 if it is not, / 255, (3, H, W) float32
    version = model.register(
        NAME,
        preprocessing=preprocessing,
        example_input=test.x[:1],
        description="small CNN on PNG shapes read through ImageFolder, with augmentation; PNG in, shape out",
    )
    promote(version, model.run_id)

    files = [Path(path) for path, _ in test_folder.samples]
    show_file_commands(f"{NAME}@production", files[0], "image/png",
                       note="the server decodes the PNG file as ImageFolder does and answers its shape")  # fmt: skip
    if args.no_serve:
        return
    expected = [train_folder.classes[i] for i in model.predict(test.x).argmax(-1).tolist()]
    with served(f"{NAME}@production") as client:
        one = client.answer(NAME, data=files[0].read_bytes(), content_type="image/png")["labels"]  # one file, raw
        labels = [label for i in range(0, len(files), 64)  # the rest 64 at a time, base64 in JSON
                  for label in client.answer(NAME, [{"b64": base64.b64encode(f.read_bytes()).decode()}
                                                    for f in files[i : i + 64]])["labels"]]  # fmt: skip
    print(f"  {one:<8} <- {files[0].relative_to(root)}")
    truth = [train_folder.classes[i] for i in test.y.tolist()]
    accuracy = float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))
    agree = float(np.mean([a == b for a, b in zip(labels, expected, strict=True)]))
    print(f"served {NAME}@production: {len(files)} PNG files sent as they are over HTTP, accuracy {accuracy:.4f}, "
          f"agreement with the in-process model {agree:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
