import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.data import ArrayDataset, BatchLoader, DatasetLoader, ImageFolder, Normalize, make_loader
from kiln.errors import ConfigError, DataError

from .files import inputs, targets, write_png

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/blue/{0,1,2}.png and root/red/{0,1,2}.png of varied sizes, plus files to ignore."""
    root = tmp_path / "images"
    for i in range(3):
        write_png(root / "red" / f"{i}.png", RED, size=(6 + i, 5))
        write_png(root / "blue" / f"{i}.png", BLUE, size=(4, 7 - i))
    (root / "red" / "notes.txt").write_text("not an image")
    write_png(root / "blue" / ".hidden.png", RED)
    return root


def color_label(x: torch.Tensor) -> int:
    """The class a solid test image shows: blue (0) or red (1)."""
    return 1 if x[0].mean() > x[2].mean() else 0


def test_batches_have_the_requested_shape_and_correct_labels(folder: Path) -> None:
    dataset = ImageFolder(folder, size=(8, 10))
    assert dataset.classes == ["blue", "red"] and len(dataset) == 6
    loader = make_loader(dataset, 4, shuffle=True, seed=0, num_workers=0)
    assert isinstance(loader, DatasetLoader)
    batches = list(loader.epoch(0))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 10), (2, 3, 8, 10)]
    for xs, ys in batches:
        assert xs.dtype == torch.float32 and xs.min() >= 0.0 and xs.max() <= 1.0
        assert ys.dtype == torch.int64
        assert [color_label(x) for x in xs] == ys.tolist()
    assert sorted(y for _, ys in batches for y in ys.tolist()) == [0, 0, 0, 1, 1, 1]


def test_grayscale_gives_one_channel(folder: Path) -> None:
    x, label = ImageFolder(folder, size=4, grayscale=True)[0]
    assert x.shape == (1, 4, 4) and label == 0
    assert torch.allclose(x, torch.full_like(x, 29 / 255), atol=1 / 255)  # Pillow's luma of pure blue


def test_workers_shuffle_reproducibly_and_apply_the_batch_transform(folder: Path) -> None:
    dataset = ImageFolder(folder, size=4, batch_transform=Normalize([0.5] * 3, [0.5] * 3))

    def epoch_labels(seed: int) -> list[list[int]]:
        loader = make_loader(dataset, 2, shuffle=True, seed=seed, num_workers=1)
        batches = list(loader.epoch(0))
        for x, _ in batches:
            assert x.min() == -1.0 and x.max() == 1.0  # normalised from [0, 1] to [-1, 1]
        return [y.tolist() for _, y in batches]

    first = epoch_labels(11)
    assert first == epoch_labels(11)
    assert sorted(y for batch in first for y in batch) == [0, 0, 0, 1, 1, 1]


def test_to_memory_matches_the_files_and_uses_the_batch_loader(folder: Path) -> None:
    dataset = ImageFolder(folder, size=5)
    memory = dataset.to_memory()
    assert isinstance(memory, ArrayDataset) and memory.classes == ["blue", "red"]
    assert inputs(memory).shape == (6, 3, 5, 5)
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert torch.equal(inputs(memory)[i], x) and int(targets(memory)[i]) == y
    assert isinstance(make_loader(memory, 3, shuffle=True), BatchLoader)


def test_mixed_sizes_without_resizing_fail_with_a_hint(folder: Path) -> None:
    loader = make_loader(ImageFolder(folder), 6, shuffle=False, num_workers=0)
    with pytest.raises(DataError, match="pass size="):
        list(loader.epoch(0))


def test_corrupt_image_names_the_file(folder: Path) -> None:
    from PIL import Image

    broken = folder / "red" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    dataset = ImageFolder(folder, size=4)
    with pytest.raises(DataError, match=r"broken\.png"):
        list(make_loader(dataset, 7, shuffle=False, num_workers=0).epoch(0))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    noise.save(broken)
    broken.write_bytes(broken.read_bytes()[:1500])  # cut off in the middle of the pixel data
    with pytest.raises(DataError, match="image file is truncated") as error:
        dataset[dataset.samples.index((str(broken), 1))]
    assert str(broken) in str(error.value)


def test_jpeg_and_palette_images_with_transparency_decode(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(tmp_path / "a" / "photo.JPG")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.save(tmp_path / "a" / "icon.png", transparency=b"\x00\xff")
    dataset = ImageFolder(tmp_path, size=8)
    assert len(dataset) == 2
    for i in range(2):
        x, _ = dataset[i]
        assert abs(float(x[1].mean()) - 200 / 255) < 0.02 and float(x[0].mean()) < 0.02


def test_classes_pin_ids_for_a_split_missing_a_folder(folder: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_png(val / "red" / "0.png", RED)
    dataset = ImageFolder(val, size=3, classes=["blue", "red"])
    assert dataset.classes == ["blue", "red"] and dataset[0][1] == 1
    with pytest.raises(DataError, match=r"folders \['red'\].*not in classes"):
        ImageFolder(val, classes=["blue"])


def test_empty_or_missing_roots_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a directory"):
        ImageFolder(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no class subfolders"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no files ending in"):
        ImageFolder(tmp_path)
    with pytest.raises(ConfigError, match="size"):
        ImageFolder(tmp_path, size=(0, 4))


def test_missing_pillow_names_the_extra(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'kiln\[data\]'"):
        ImageFolder(folder)


def test_importing_kiln_data_does_not_import_pillow() -> None:
    code = "import sys, kiln.data; assert 'PIL' not in sys.modules, 'kiln.data imported Pillow'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
