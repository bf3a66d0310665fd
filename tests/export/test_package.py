"""Register a module as a package, load it back through torch and onnxruntime, and refuse what cannot load."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kiln.errors import ConfigError, IntegrityError, InvalidNameError, NotFoundError
from kiln.export import load, load_package, register_module, save_package
from kiln.store import Store

TRUST = [__name__]  # the factories below live in this test module: loading them with torch needs it trusted


class TinyNet(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 16, n_out: int = 3) -> None:
        super().__init__()
        self.config = {"d_in": d_in, "hidden": hidden, "n_out": n_out}
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class DataDependent(TinyNet):
    """Python control flow on tensor values: torch.export cannot trace it, so ONNX is skipped."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.body(features)
        return out if float(out.sum()) > 0 else -out


class NeedsArguments(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class WithComputedBuffer(TinyNet):
    def __init__(self, d_in: int = 8, hidden: int = 16, n_out: int = 3) -> None:
        super().__init__(d_in=d_in, hidden=hidden, n_out=n_out)
        self.register_buffer("offset", torch.arange(float(n_out)), persistent=False)  # not in the state_dict

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features) + self.offset


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def _net(cls: type[nn.Module] = TinyNet) -> nn.Module:
    torch.manual_seed(0)
    return cls()


def test_register_then_load_with_torch_and_onnx(store: Store) -> None:
    net, x = _net(), torch.randn(1, 8)
    version = register_module(net, "tiny", store=store, example_input=x, metrics={"val_accuracy": 0.9},
                              preprocessing={"mean": [0.5] * 8, "std": [0.25] * 8}, description="first",
                              tags={"data": "synthetic"})  # fmt: skip
    assert version.reference == "tiny@1"
    assert set(version.files) == {"weights.safetensors", "model.onnx", "spec.json", "manifest.json"}
    assert version.signature == {
        "inputs": [{"name": "features", "dtype": "float32", "shape": [None, 8]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [None, 3]}],
    }
    assert load_package("tiny@1", store=store).runtime == "onnx"  # untrusted factory: the graph, nothing imported
    loaded = load_package("tiny@1", store=store, trust=TRUST)
    assert loaded.runtime == "torch" and loaded.spec["module"] == f"{__name__}:TinyNet"
    assert loaded.preprocessing == {"mean": [0.5] * 8, "std": [0.25] * 8}
    assert not loaded.model.training
    # Weights come back 64-byte aligned, as torch allocates them, so the same kernels give the same bits.
    assert all(p.data_ptr() % 64 == 0 for p in loaded.model.parameters() if p.nbytes % 64 == 0)
    batch = torch.randn(5, 8)
    with torch.no_grad():
        expected = net(batch)
        assert torch.equal(loaded.model(batch), expected)
    session = load("tiny", store=store, runtime="onnx")
    (got,) = session.run(None, {"features": batch.numpy()})  # batch 5: the batch dimension is dynamic
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.warns(DeprecationWarning, match=r"kiln\.export\.load"):
        assert isinstance(store.load("tiny@1", trust=TRUST), TinyNet)


def test_module_that_does_not_export_is_packaged_without_onnx(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    net = _net(DataDependent)
    with caplog.at_level(logging.WARNING, logger="kiln.export"):
        version = register_module(net, "dd", store=store, example_input=torch.randn(2, 8))
    assert "model.onnx" not in version.files
    assert any("packaging without ONNX" in r.getMessage() for r in caplog.records)
    spec = load_package("dd", store=store, trust=TRUST).spec
    assert "torch.onnx.export failed" in spec["onnx"]["skipped"]
    with pytest.raises(NotFoundError, match="has no ONNX graph"):
        load("dd", store=store, runtime="onnx")
    x = torch.randn(3, 8)
    assert torch.equal(load("dd", store=store, trust=TRUST)(x), net.eval()(x))


def test_sequential_of_standard_layers_needs_no_factory(store: Store) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 4 * 4, 10), nn.Dropout(0.1)),
        nn.LogSoftmax(dim=-1),
    ).eval()
    register_module(net, "cnn", store=store, example_input=torch.randn(1, 1, 8, 8), onnx=False)
    loaded = load_package("cnn", store=store)
    assert loaded.spec["module"] == "kiln.export.sequential:sequential"
    x = torch.randn(6, 1, 8, 8)
    assert torch.equal(loaded.model(x), net(x))


def test_half_precision_weights_keep_their_dtype(store: Store) -> None:
    net = _net().half()
    register_module(net, "half", store=store, example_input=torch.randn(1, 8).half(), onnx=False)
    assert {p.dtype for p in load("half", store=store, trust=TRUST).parameters()} == {torch.float16}


def test_non_persistent_buffers_are_rebuilt(store: Store) -> None:
    net = _net(WithComputedBuffer).eval()
    register_module(net, "buffered", store=store, example_input=torch.randn(1, 8), onnx=False)
    x = torch.randn(2, 8)
    assert torch.equal(load("buffered", store=store, trust=TRUST)(x), net(x))


def test_factory_that_builds_another_module_is_refused(store: Store) -> None:
    with pytest.raises(ConfigError, match="builds a different module"):
        register_module(_net(), "tiny", store=store, example_input=torch.randn(1, 8), config={"hidden": 4}, onnx=False)
    with pytest.raises(ConfigError, match="not importable"):
        register_module(_net(), "tiny", store=store, example_input=torch.randn(1, 8), factory=lambda: TinyNet())
    assert store.models() == []


def test_module_nothing_can_load_is_refused(store: Store) -> None:
    with pytest.raises(ConfigError, match="neither by torch nor by onnxruntime"):
        register_module(NeedsArguments(4), "x", store=store, example_input=torch.randn(1, 4), onnx=False)
    version = register_module(
        NeedsArguments(4),
        "x",
        store=store,
        example_input=torch.randn(1, 4),
        factory=NeedsArguments,
        config={"width": 4},
        onnx=False,
    )
    assert load_package(version.reference, store=store, trust=TRUST).spec["config"] == {"width": 4}


def test_bad_name_fails_before_any_work(store: Store) -> None:
    before = sorted(p.name for p in store.path.rglob("*"))
    with pytest.raises(InvalidNameError):
        register_module(_net(), "../escape", store=store, example_input=torch.randn(1, 8))
    assert sorted(p.name for p in store.path.rglob("*")) == before


def test_package_directory_round_trip_and_tampering(tmp_path: Path) -> None:
    net = _net().eval()
    directory = save_package(net, tmp_path / "pkg", example_input=torch.randn(1, 8), onnx=False)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "spec.json", "weights.safetensors"]
    x = torch.randn(2, 8)
    assert torch.equal(load(directory, trust=TRUST)(x), net(x))
    with pytest.raises(ConfigError, match="already exists"):
        save_package(net, directory, example_input=x, onnx=False)
    (directory / "notes.txt").write_text("hello")
    with pytest.raises(IntegrityError, match=r"not in manifest\.json: \['notes\.txt'\]"):
        load(directory)
    (directory / "notes.txt").unlink()
    weights = directory / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"file 'weights\.safetensors'"):
        load(directory, trust=TRUST)


def test_load_refuses_a_blob_edited_after_publish(store: Store) -> None:
    version = register_module(_net(), "tiny", store=store, example_input=torch.randn(1, 8), onnx=False)
    blob = store.blobs.path(version.files["weights.safetensors"].sha256)
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x10
    blob.chmod(0o644)  # blobs are stored read-only
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"tiny@1 file 'weights\.safetensors'.*does not match its SHA-256"):
        load("tiny@1", store=store, trust=TRUST)
    report = store.verify("tiny")
    assert [(p.reference, p.file) for p in report.problems] == [("tiny@1", "weights.safetensors")]


def test_runtime_and_reference_are_checked(store: Store) -> None:
    with pytest.raises(ConfigError, match="runtime must be"):
        load("tiny", store=store, runtime="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        load("tiny", store=store)
    with pytest.raises(ConfigError, match="reference string"):
        load(42, store=store)  # type: ignore[arg-type]
