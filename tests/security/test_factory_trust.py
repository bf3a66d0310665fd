"""A package naming code (os:system, subprocess:run, a module whose import writes a file) runs nothing on any load
path unless the user trusts it; trusting it does run it (so the gate, not luck, is what stops it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import main
from kiln.errors import ConfigError, KilnError, TrustError
from kiln.export import load, load_package
from kiln.export.sequential import FACTORY
from kiln.export.trust import KILN_FACTORIES, check_trust, trusted_by
from kiln.serve.runtime import load_runtime
from kiln.store import Store

from .forge import EXAMPLE, forget, genuine, marker_module, set_factory

EVIL = "kiln_test_evil_marker"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


@pytest.fixture
def evil_path(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module on sys.path whose import writes the marker: "an installed module" as far as importlib can tell."""
    root = marker_module(tmp_path / "site", EVIL, marker)
    monkeypatch.syspath_prepend(str(root))
    forget(EVIL)
    yield root
    forget(EVIL)


def forgeries(marker: Path) -> dict[str, tuple[str, dict]]:
    return {
        "os.system": ("os:system", {"command": f"touch {marker}"}),
        "subprocess.run": ("subprocess:run", {"args": ["touch", str(marker)]}),
        "import side effect": (f"{EVIL}:factory", {}),
    }


FORGERIES = ["os.system", "subprocess.run", "import side effect"]


@pytest.mark.parametrize("kind", FORGERIES)
@pytest.mark.parametrize("onnx", [True, False], ids=["with-onnx", "torch-only"])
def test_forged_directory_runs_nothing(tmp_path: Path, marker: Path, evil_path: Path, kind: str, onnx: bool) -> None:
    module, config = forgeries(marker)[kind]
    package = set_factory(genuine(tmp_path / "pkg", onnx=onnx), module, config)
    with pytest.raises(TrustError, match=rf"'{module}'.*not trusted.*trust=\[.*--trust .*runtime='onnx'"):
        load(package, runtime="torch")
    if onnx:  # auto falls back to the graph, which imports nothing, and it really works
        loaded = load_package(package)
        assert loaded.runtime == "onnx"
        assert loaded.model.run(None, {"input": EXAMPLE.numpy()})[0].shape == (2, 3)
    else:
        with pytest.raises(TrustError, match="not trusted"):
            load_package(package)
    assert not marker.exists()
    assert EVIL not in sys.modules


@pytest.mark.parametrize("kind", FORGERIES)
def test_forged_store_version_runs_nothing(tmp_path: Path, marker: Path, evil_path: Path, kind: str) -> None:
    module, config = forgeries(marker)[kind]
    store = Store(tmp_path / "store")
    store.register("forged", set_factory(genuine(tmp_path / "pkg", onnx=False), module, config))
    assert store.verify("forged").ok  # integrity and trust are separate questions: the hashes all match
    with pytest.raises(TrustError, match="not trusted"):
        load_package("forged@1", store=store)
    with pytest.raises(TrustError), pytest.warns(DeprecationWarning):
        store.load("forged@1")
    with pytest.raises(TrustError):
        load_runtime("forged@1", store=store, runtime="torch")  # what `kiln serve` and `predict --local` use
    assert main(["predict", "forged@1", "--local", "--store", str(store.path), "--input", "[[0, 0, 0, 0]]"]) == 2
    assert not marker.exists()
    assert EVIL not in sys.modules


def test_trusting_the_module_runs_it(tmp_path: Path, marker: Path, evil_path: Path) -> None:
    """The positive control: with trust=[...] the same package imports and calls the factory."""
    package = set_factory(genuine(tmp_path / "pkg", onnx=False), f"{EVIL}:factory", {})
    module = load(package, trust=[EVIL])
    assert marker.read_text() == "called"
    assert module(EXAMPLE).shape == (2, 3)


def test_kiln_trust_environment_variable_is_read_for_servers(
    tmp_path: Path, marker: Path, evil_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    store.register("forged", set_factory(genuine(tmp_path / "pkg", onnx=False), f"{EVIL}:factory", {}))
    monkeypatch.setenv("KILN_TRUST", f"unrelated, {EVIL}")
    loaded = load_runtime("forged@1", store=store, runtime="torch")
    assert loaded.kind == "torch" and marker.read_text() == "called"
    assert loaded.run([np.zeros((2, 4), np.float32)])[0].shape == (2, 3)


def test_kiln_serve_refuses_an_untrusted_factory(tmp_path: Path, marker: Path) -> None:
    """A real `kiln serve --runtime torch` subprocess: it exits 1, logging one line that names the factory and how
    to trust it, and the marker never appears."""
    store = Store(tmp_path / "store")
    store.register(
        "forged", set_factory(genuine(tmp_path / "pkg", onnx=False), "os:system", {"command": f"touch {marker}"})
    )
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "serve", "forged@1", "--store", str(store.path), "--runtime", "torch",
         "--port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "KILN_TRUST": ""},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "could not load the model: TrustError: forged@1 names the factory 'os:system'" in done.stderr
    assert "--trust os" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_trust_is_a_prefix_on_the_module_path_only() -> None:
    assert trusted_by("mypkg.nets:Net", ["mypkg"]) == "trust=['mypkg']"
    assert trusted_by("mypkg:Net", ["mypkg"]) is not None
    assert trusted_by("mypkgevil:Net", ["mypkg"]) is None
    assert trusted_by("os:system", ["mypkg"]) is None
    assert trusted_by("mypkg.nets:Net", ["mypkg.other"]) is None
    assert FACTORY in KILN_FACTORIES and trusted_by(FACTORY) == "kiln's own"
    assert trusted_by("kiln.cli:main") is None  # kiln's own means the listed factories, not any kiln module
    with pytest.raises(ConfigError, match="list of module names"):
        check_trust("mypkg")
    for bad in ("", "my pkg", "../x", "mypkg:Net", "a..b"):
        with pytest.raises(ConfigError, match="dotted module names"):
            check_trust([bad])


def test_entry_point_declared_factories_are_trusted(
    tmp_path: Path, marker: Path, evil_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed distribution that declares the factory under kiln.factories is trusted (metadata only)."""
    info = tmp_path / "dist" / "kiln_test_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiln-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[kiln.factories]\nnet = {EVIL}:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path / "dist"))
    assert trusted_by(f"{EVIL}:factory") == "entry point kiln.factories of kiln-test-plugin"
    assert trusted_by(f"{EVIL}:other") is None  # the declared factory, not its whole module
    assert not marker.exists()  # reading entry points imported nothing
    package = set_factory(genuine(tmp_path / "pkg", onnx=False), f"{EVIL}:factory", {})
    assert load(package)(EXAMPLE).shape == (2, 3)


def test_models_verify_and_show_report_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "store")
    store.register("own", genuine(tmp_path / "own", onnx=False))
    store.register("forged", set_factory(genuine(tmp_path / "pkg", onnx=False), "os:system", {"command": "true"}))
    args = ["--store", str(store.path)]
    assert main(["models", "verify", *args]) == 0  # intact packages: exit 0 whatever their factory
    out = capsys.readouterr().out
    assert "own@1: factory kiln.export.sequential:sequential trusted (kiln's own)" in out
    assert "forged@1: factory os:system untrusted" in out
    assert main(["models", "verify", "--strict", *args]) == 1
    assert "--strict" in capsys.readouterr().err
    assert main(["models", "verify", "own", "--strict", *args]) == 0
    assert main(["models", "verify", "forged", "--strict", "--trust", "os", *args]) == 0
    assert "forged@1: factory os:system trusted (trust=['os'])" in capsys.readouterr().out
    assert main(["models", "show", "forged@1", *args]) == 0
    assert "untrusted" in capsys.readouterr().out
    assert main(["models", "show", "own", *args]) == 0
    assert "trusted (kiln's own)" in capsys.readouterr().out


def test_errors_are_kiln_errors_with_advice(tmp_path: Path) -> None:
    package = set_factory(genuine(tmp_path / "pkg", onnx=False), "os:system", {"command": "true"})
    with pytest.raises(KilnError) as caught:
        load(package)
    message = str(caught.value)
    assert "trust=['os']" in message and "--trust os" in message and "KILN_TRUST=os" in message
