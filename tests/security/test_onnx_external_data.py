"""ONNX tensors whose bytes live outside the graph (a file onnxruntime would read from the server's disk) are refused
at register, verify and load, wherever they hide; so are operator domains that need a custom-op library."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln.store.blobs
from kiln.errors import IntegrityError, TrustError
from kiln.export import load
from kiln.serve.runtime import load_runtime
from kiln.store import Store
from kiln.store.onnx_check import check_onnx

from .forge import genuine, reseal

SECRET = np.arange(4, dtype=np.float32) + 1234.5  # what the "secret" file holds: 16 bytes


def _external(name: str, location: str) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(graph: onnx.GraphProto, domains: tuple[str, ...] = ()) -> bytes:
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def leaking_graph(location: str) -> bytes:
    """output = the initializer "stolen", whose 16 bytes onnxruntime reads from ``location``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["stolen"], ["output"])],
        "leak",
        [],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [4])],
        initializer=[_external("stolen", location)],
    )
    return _model(graph)


def loop_body_graph(location: str) -> bytes:
    """The external tensor hides in a Constant node inside a Loop body."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Constant", [], ["inner"], value=_external("hidden", location)),
            helper.make_node("Add", ["carried", "inner"], ["carried_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, [4]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "start"], ["output"], body=body)],
        "looped",
        [],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [4])],
        initializer=[
            helper.make_tensor("trips", TensorProto.INT64, [], [1]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
            helper.make_tensor("start", TensorProto.FLOAT, [4], [0.0] * 4),
        ],
    )
    return _model(graph)


LOCATIONS = ["secret.bin", "../../secret.bin", "/etc/passwd"]


def test_the_threat_is_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain onnxruntime, given such a graph as bytes, returns a file from its working directory as model output
    (onnxruntime 1.32: the initializer without graph optimisations, the Loop body even with them)."""
    import onnxruntime

    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    monkeypatch.chdir(tmp_path)
    plain = onnxruntime.SessionOptions()
    plain.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(leaking_graph("secret.bin"), plain, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {})[0], SECRET)
    session = onnxruntime.InferenceSession(loop_body_graph("secret.bin"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {})[0], SECRET)


def _package_with(tmp_path: Path, graph: bytes) -> Path:
    package = genuine(tmp_path / "pkg", onnx=True)
    (package / "model.onnx").write_bytes(graph)
    reseal(package)
    return package


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("make", [leaking_graph, loop_body_graph], ids=["initializer", "loop-body"])
def test_external_data_is_refused_at_register_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str, make
) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    monkeypatch.chdir(tmp_path)
    package = _package_with(tmp_path, make(location))
    tensor = "stolen" if make is leaking_graph else "hidden"
    expected = rf"ONNX tensor '{tensor}' in .* outside the graph, at '{re.escape(location)}'"
    with pytest.raises(IntegrityError, match=expected):
        load(package, runtime="onnx")
    with pytest.raises(IntegrityError, match=expected):
        load_runtime(package, runtime="onnx")
    store = Store(tmp_path / "store")
    with pytest.raises(IntegrityError, match=expected):
        store.register("leak", package)
    assert store.models() == []


def test_a_store_written_before_the_check_is_refused_at_serve_and_flagged_by_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version that got in before kiln checked graphs (simulated: the register-time check switched off)."""
    package = _package_with(tmp_path, leaking_graph("../../kiln.db"))
    store = Store(tmp_path / "store")
    with monkeypatch.context() as patch:
        patch.setattr(kiln.store.blobs, "check_onnx", lambda *args, **kwargs: None)
        store.register("old", package)
    with pytest.raises(IntegrityError, match=r"outside the graph, at '\.\./\.\./kiln\.db'"):
        load_runtime("old@1", store=store)  # the server's path: auto prefers ONNX
    with pytest.raises(IntegrityError, match="outside the graph"):
        load("old@1", store=store, runtime="onnx")
    report = store.verify()
    assert [(p.reference, p.file) for p in report.problems] == [("old@1", "model.onnx")]
    assert "outside the graph" in report.problems[0].message


def custom_domain_graph() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Pwn", ["x"], ["output"], domain="evil.ops")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])],
    )
    return _model(graph, domains=("evil.ops",))


def test_non_standard_operator_domains_need_trust(tmp_path: Path) -> None:
    graph = custom_domain_graph()
    with pytest.raises(TrustError, match=r"domain\(s\) \['evil.ops'\].*trust=\['evil.ops'\]"):
        check_onnx(graph, label="x", trust=[])
    check_onnx(graph, label="x", trust=["evil"])  # trusted by prefix: no complaint
    check_onnx(graph, label="x", trust=None)  # register time judges data only
    package = _package_with(tmp_path, graph)
    with pytest.raises(TrustError, match=r"evil\.ops"):
        load(package, runtime="onnx")
    # Trusted, it reaches onnxruntime, which has no such operator (kiln registers no custom-op library): a
    # KilnError, not onnxruntime's own exception.
    with pytest.raises(IntegrityError, match=r"onnxruntime cannot load model\.onnx"):
        load(package, runtime="onnx", trust=["evil.ops"])


def test_garbage_is_not_a_graph() -> None:
    with pytest.raises(IntegrityError, match="not a valid ONNX model"):
        check_onnx(b"\xff" * 64, label="x", trust=[])
