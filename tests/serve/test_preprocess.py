"""The declared preprocessing vocabulary (kiln.export.preprocess): strict checks of a spec, and each step's decoding.

A package is data: a spec may only name known steps with typed, bounded fields, at register time (ConfigError)
and at load time (IntegrityError, for a package whose spec.json was written by hand and re-hashed).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import wave

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kiln.data import Vocabulary, read_wav
from kiln.errors import ConfigError, IntegrityError
from kiln.export import register_module, save_package
from kiln.export.preprocess import FORMAT, InputError, parse_preprocessing
from kiln.serve.runtime import load_runtime
from kiln.store import Store
from kiln.store.blobs import Blob
from kiln.store.manifest import dump_manifest

TEXT = {"type": "text", "tokenizer": "word", "vocabulary": ["<pad>", "<unk>", "the", "goal", "rain"], "max_length": 4}


def declared(**parts) -> dict:
    return {"format": FORMAT, **parts}


def wav_bytes(samples: np.ndarray, rate: int, *, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


# ---------------------------------------------------------------- what counts as declared
@pytest.mark.parametrize("value", [None, {}, {"scale": 1 / 16}, {"format": "RGB", "classes": ["a"]}, ["x"]])
def test_free_form_preprocessing_stays_metadata(value):
    assert parse_preprocessing(value) is None


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (declared(input={"type": "python", "code": "import os; os.system('id')"}), "'python'"),
        (declared(input={"type": "lambda"}), "known input steps"),
        (declared(input={**TEXT, "path": "/etc/passwd"}), "'path'"),
        (declared(input={**TEXT, "vocabulary": "/etc/passwd"}), "'vocabulary'"),
        (declared(input={**TEXT, "tokenizer": "module:function"}), "'tokenizer'"),
        (declared(input={**TEXT, "vocabulary": ["the", "<pad>", "<unk>"]}), "starting"),
        (declared(input={**TEXT, "vocabulary": ["<pad>", "<unk>", "a", "a"]}), "distinct"),
        (declared(input={**TEXT, "vocabulary": ["<pad>", "<unk>", "x" * 1001]}), "'vocabulary'"),
        (declared(input={**TEXT, "max_length": 10**9}), "'max_length'"),
        (declared(input={**TEXT, "max_length": True}), "'max_length'"),
        (declared(input={"type": "audio", "sample_rate": 8000, "channels": 1, "samples": 10**12}), "'samples'"),
        (declared(input={"type": "audio", "sample_rate": 8000, "channels": 2, "samples": 8, "layout": "T"}), "'CT'"),
        (declared(input={"type": "image", "mode": "RGB", "size": [100_000, 1]}), "'size'"),
        (declared(input={"type": "image", "mode": "CMYK", "size": [4, 4]}), "'mode'"),
        (declared(input={"type": "image", "mode": "RGB", "size": [4, 4], "divide_by": 0}), "'divide_by'"),
        (declared(input={"type": "image", "mode": "RGB", "size": [4, 4], "mean": [0.5] * 3}), "'std'"),
        (declared(input={"type": "standardize", "mean": [0.0, 1.0], "std": [1.0, 0.0]}), "'std'"),
        (declared(input={"type": "standardize", "mean": [float("nan")], "std": [1.0]}), "'mean'"),
        (declared(input={"type": "standardize", "mean": [0.0, 1.0], "std": [1.0]}), "one each"),
        (declared(output={"type": "classes", "names": "cat,dog"}), "'names'"),
        (declared(output={"type": "softmax"}), "output steps"),
        (declared(input=["text"]), "must be an object"),
        (declared(classes=["a", "b"]), "'classes'"),
        ({"format": "kiln.preprocessing/2", "input": TEXT}, "newer kiln"),
    ],
)
def test_bad_specs_are_refused_naming_the_problem(spec, named):
    with pytest.raises(IntegrityError, match=named.replace("(", r"\(")):
        parse_preprocessing(spec)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        parse_preprocessing(spec, error=ConfigError)


# ---------------------------------------------------------------- the steps
def test_text_uses_the_training_vocabulary_and_maps_unknown_words_to_unk():
    vocabulary = Vocabulary.build(["the striker scored a goal", "rain and wind tonight"])
    spec = declared(input={"type": "text", "tokenizer": "word", "vocabulary": vocabulary.state_dict()["tokens"],
                           "max_length": 6})  # fmt: skip
    steps = parse_preprocessing(spec)
    texts = ["The STRIKER scored, again!", "zebra quantum rain", "a " * 20]
    ids, single = steps.from_json(texts)
    assert not single and ids.dtype == np.int64 and ids.shape == (3, 6)
    np.testing.assert_array_equal(ids, vocabulary.encode_batch(texts, max_length=6).numpy())  # one implementation
    assert ids[1].tolist() == [1, 1, vocabulary.encode("rain")[0], 0, 0, 0]  # unknown words -> <unk>, then padding
    one, single = steps.from_json("the goal")
    assert single and one.shape == (1, 6)
    with pytest.raises(InputError, match="takes text") as error:
        steps.from_json([[2, 3, 4]])
    assert error.value.status == 422


def test_audio_cuts_or_pads_and_refuses_other_rates_and_channels(tmp_path):
    steps = parse_preprocessing(declared(input={"type": "audio", "sample_rate": 8000, "channels": 1, "samples": 100}))
    tone = np.sin(np.arange(150) / 5.0) * 0.5
    data = wav_bytes(tone, 8000)
    (tmp_path / "tone.wav").write_bytes(data)
    cut = steps.from_file(data)
    assert cut.shape == (1, 1, 100) and cut.dtype == np.float32
    np.testing.assert_array_equal(cut[0, 0], read_wav(tmp_path / "tone.wav")[0][:100])  # the training decoder's samples
    padded = steps.from_file(wav_bytes(tone[:40], 8000))[0, 0]
    assert np.all(padded[40:] == 0) and np.any(padded[:40] != 0)
    with pytest.raises(InputError, match=r"16000 Hz .* takes 8000 Hz") as error:
        steps.from_file(wav_bytes(tone, 16000))
    assert error.value.status == 400 and "does not resample" in error.value.message
    with pytest.raises(InputError, match="2 channel"):
        steps.from_file(wav_bytes(np.repeat(tone, 2), 8000, channels=2))
    with pytest.raises(InputError, match="cannot decode the WAV"):
        steps.from_file(b"RIFF\x00\x00\x00\x00WAVEjunk")
    batch, single = steps.from_json([{"b64": base64.b64encode(data).decode()}] * 3)
    assert batch.shape == (3, 1, 100) and not single
    with pytest.raises(InputError, match="base64"):
        steps.from_json({"b64": "not base64!"})


def test_images_are_decoded_like_image_folder_with_bounded_size():
    steps = parse_preprocessing(declared(input={"type": "image", "mode": "RGB", "size": [4, 6], "divide_by": 255}))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = steps.from_file(png_bytes(pixels))
    assert image.shape == (1, 3, 4, 6) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0).numpy())
    assert steps.from_file(png_bytes(np.zeros((40, 30, 3), np.uint8), "JPEG")).shape == (1, 3, 4, 6)  # resized
    with pytest.raises(InputError, match="pixels") as error:  # a few kB of PNG that would decode to 75 MB
        steps.from_file(png_bytes(np.zeros((5000, 5000), np.uint8)))
    assert error.value.status == 400
    gif = io.BytesIO()
    Image.fromarray(pixels).save(gif, format="GIF")
    with pytest.raises(InputError, match="PNG or JPEG"):
        steps.from_file(gif.getvalue())


def test_standardize_takes_raw_rows():
    steps = parse_preprocessing(declared(input={"type": "standardize", "mean": [10.0, -2.0], "std": [2.0, 0.5]}))
    rows, single = steps.from_json([[12.0, -2.0], [10.0, -1.0]])
    np.testing.assert_allclose(rows, [[1.0, 0.0], [0.0, 2.0]])
    assert rows.dtype == np.float32 and not single
    assert steps.from_json([14, -3])[1] is True
    with pytest.raises(InputError, match="raw rows of 2 numbers"):
        steps.from_json([[1.0, 2.0, 3.0]])


# ---------------------------------------------------------------- register time and load time
def test_register_refuses_a_declaration_that_does_not_fit_the_model(tmp_path):
    module = nn.Linear(3, 2)
    with Store(tmp_path / "store") as store:
        with pytest.raises(ConfigError, match="text preprocessing makes integers"):
            register_module(module, "m", store=store, example_input=torch.zeros(1, 3), preprocessing=declared(
                input=TEXT))  # fmt: skip
        with pytest.raises(ConfigError, match="3 class names"):
            register_module(module, "m", store=store, example_input=torch.zeros(1, 3),
                            preprocessing=declared(output={"type": "classes", "names": ["a", "b", "c"]}))  # fmt: skip
        with pytest.raises(ConfigError, match="'lua'"):
            register_module(module, "m", store=store, example_input=torch.zeros(1, 3),
                            preprocessing=declared(input={"type": "lua"}))  # fmt: skip
        assert store.models() == []  # nothing was published


def test_a_hand_edited_package_is_refused_at_load_time(tmp_path):
    """Someone rewrote spec.json (and the manifest's hashes to match): loading still checks the declaration."""
    good = declared(input={"type": "standardize", "mean": [0.0] * 3, "std": [1.0] * 3})
    root = save_package(nn.Linear(3, 2), tmp_path / "package", example_input=torch.zeros(1, 3), preprocessing=good)
    assert load_runtime(root).steps.input.kind == "standardize"
    spec = json.loads((root / "spec.json").read_text())
    spec["preprocessing"]["input"] = {"type": "exec", "source": "__import__('os').system('id')"}
    (root / "spec.json").write_text(json.dumps(spec))
    manifest = json.loads((root / "manifest.json").read_text())
    blobs = {}
    for name in manifest["files"]:
        data = (root / name).read_bytes()
        blobs[name] = Blob(hashlib.sha256(data).hexdigest(), len(data))
    (root / "manifest.json").write_bytes(dump_manifest(blobs))
    with pytest.raises(IntegrityError, match="'exec'"):
        load_runtime(root)


def test_the_preprocessing_path_imports_no_torch(tmp_path):
    """The server's ONNX path decodes text, WAV and PNG requests without torch (numpy, wave and Pillow only)."""
    (tmp_path / "a.wav").write_bytes(wav_bytes(np.zeros(10), 8000))
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    code = f"""
import sys
from pathlib import Path
import kiln.serve.app
from kiln.export.preprocess import FORMAT, parse_preprocessing
root = Path({str(tmp_path)!r})
text = parse_preprocessing({{"format": FORMAT, "input": {TEXT!r}}})
audio = parse_preprocessing({{"format": FORMAT, "input": {{"type": "audio", "sample_rate": 8000, "channels": 1,
                                                          "samples": 8}}}})
image = parse_preprocessing({{"format": FORMAT, "input": {{"type": "image", "mode": "L", "size": [2, 2]}}}})
shapes = [text.from_json(["the goal"])[0].shape, audio.from_file((root / "a.wav").read_bytes()).shape,
          image.from_file((root / "a.png").read_bytes()).shape]
print(shapes, "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[(1, 4), (1, 1, 8), (1, 1, 2, 2)] False", done.stderr
