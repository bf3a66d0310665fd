"""1,000 seeded mutations of a real package's spec.json and manifest.json: every load works on the genuine content
or raises a KilnError, never another exception, and never runs code the package names."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kiln.errors import IntegrityError, KilnError
from kiln.export import load_package
from kiln.store.manifest import MANIFEST

from .forge import EXAMPLE, forget, genuine, marker_module, reseal

EVIL = "kiln_test_fuzz_marker"
ROUNDS = 1000


def hostile_values(marker: Path) -> list[Any]:
    return [
        "os:system", "subprocess:run", f"{EVIL}:factory", "kiln.cli:main", "builtins:eval", "os", ":", "a:b:c",
        "../../etc/passwd", "/etc/passwd", "", " ", "\x00", "é", "x" * 5000, None, True, 0, -1, 2**63, -(2**63),
        10**400, 1e308, float("nan"), [], {}, [[]], [["Linear", {}]], [["Sequential", {"layers": "x"}]],
        [["Linear", {"in_features": -4, "out_features": 3}]], [["Linear", {"in_features": 4, "out_features": 10**12}]],
        [["NotALayer", {}]], {"command": f"touch {marker}"}, {"args": ["touch", str(marker)]}, {"layers": None},
        "kiln.package/1", {"inputs": "x"}, [{"name": 1, "dtype": "float32", "shape": [None, 4]}],
    ]  # fmt: skip


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (dict keys and list indices)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


FACTORIES = ["os:system", "subprocess:run", f"{EVIL}:factory", "kiln.cli:main", "builtins:eval", "shutil:rmtree"]


def mutate_json(document: Any, rng: random.Random, pool: list[Any]) -> Any:
    document = json.loads(json.dumps(document))
    if isinstance(document, dict) and "module" in document and rng.random() < 0.2:
        document["module"] = rng.choice(FACTORIES)  # the attack itself, often, besides random damage
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths(document))
        if not path:
            document = rng.choice(pool) if rng.random() < 0.1 else document
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["module", "config", "format", "extra", "files"])] = rng.choice(pool)
        else:
            parent[path[-1]] = rng.choice(pool)
    return document


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    action = rng.random()
    if action < 0.4 and out:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif action < 0.7:
        out = out[: rng.randrange(len(out) + 1)]
    else:
        at = rng.randrange(len(out) + 1)
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return bytes(out)


def dumps(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


def test_mutated_packages_load_or_raise_kiln_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    monkeypatch.syspath_prepend(str(marker_module(tmp_path / "site", EVIL, marker)))
    forget(EVIL)
    package = genuine(tmp_path / "pkg", onnx=True)
    spec_bytes, manifest_bytes = (package / "spec.json").read_bytes(), (package / MANIFEST).read_bytes()
    spec = json.loads(spec_bytes)
    with torch.no_grad():
        expected = load_package(package).model(EXAMPLE)
    rng, pool = random.Random(20261207), hostile_values(marker)
    outcomes: dict[str, int] = {}
    for round_ in range(ROUNDS):
        new_spec = dumps(mutate_json(spec, rng, pool)) if rng.random() < 0.7 else mutate_bytes(spec_bytes, rng)
        (package / "spec.json").write_bytes(new_spec if rng.random() < 0.9 else spec_bytes)
        sealed = rng.random() < 0.6
        if sealed:
            reseal(package)  # the attacker recomputes the manifest: only the trust rules stand in the way
            if rng.random() < 0.2:
                manifest = json.loads((package / MANIFEST).read_bytes())
                (package / MANIFEST).write_bytes(dumps(mutate_json(manifest, rng, pool)))
        elif rng.random() < 0.5:
            (package / MANIFEST).write_bytes(mutate_bytes(manifest_bytes, rng))
        else:
            (package / MANIFEST).write_bytes(manifest_bytes)
        unchanged = (package / "spec.json").read_bytes() == spec_bytes
        runtime = rng.choice(["auto", "torch", "onnx"])
        try:
            loaded = load_package(package, runtime=runtime)
        except KilnError as error:
            outcomes[type(error).__name__] = outcomes.get(type(error).__name__, 0) + 1
            if not sealed and not unchanged and (package / MANIFEST).read_bytes() == manifest_bytes:
                assert isinstance(error, IntegrityError), (round_, error)  # an edit under the genuine manifest
        except Exception as error:  # the point of the test: nothing but KilnError escapes
            pytest.fail(f"round {round_}: {type(error).__name__}: {error}\nspec: {new_spec[:300]!r}")
        else:
            outcomes["loaded"] = outcomes.get("loaded", 0) + 1
            if unchanged and loaded.runtime == "torch":
                with torch.no_grad():
                    assert torch.equal(loaded.model(EXAMPLE), expected)
        assert not marker.exists(), f"round {round_} ran the package's code: {new_spec[:300]!r}"
        assert EVIL not in sys.modules
    # The mutations reached every outcome: loads, integrity failures and trust refusals.
    assert outcomes.get("loaded", 0) > 50 and outcomes.get("IntegrityError", 0) > 100, outcomes
    assert outcomes.get("TrustError", 0) > 10, outcomes
