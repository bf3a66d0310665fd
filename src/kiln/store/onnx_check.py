"""Judge an ONNX graph before anything runs it: every weight inside the file, only standard operator domains.

An ONNX tensor may keep its bytes outside the model file (``data_location: EXTERNAL``, ``location: "x.bin"``), and
onnxruntime then reads that path relative to the working directory: a crafted package could make a server read
``../kiln.db`` or ``/etc/shadow`` and return the bytes as model output. A kiln package keeps every weight inside
``model.onnx``, so any tensor with external data, anywhere in the graph (initializers, Constant nodes, attributes,
the bodies of If/Loop/Scan, model-local functions, training graphs), is refused, naming the tensor and the location.

Operators must come from the standard domains (ONNX, ONNX-ML, onnxruntime's built-in ``com.microsoft``) or from a
function defined in the model itself; any other domain needs a custom-op library, which kiln never registers, and
is refused unless the user trusts it by name (the same ``trust`` list as factories). Parsing uses the ``onnx``
package's protobuf classes and never loads external data itself. No torch here: the server's ONNX path stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, IntegrityError, TrustError

__all__ = ["STANDARD_DOMAINS", "check_onnx"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _parse(data: bytes | bytearray | memoryview, label: str) -> Any:
    try:
        from onnx import ModelProto
    except ImportError as error:
        raise ConfigError(f"reading ONNX graphs needs the 'onnx' extra: pip install 'kiln[onnx]' ({error}).") from error
    model = ModelProto()
    try:
        model.ParseFromString(bytes(data))
    except Exception as error:  # protobuf's DecodeError, or ValueError/RuntimeError from its C implementation
        raise IntegrityError(f"{label}: model.onnx is not a valid ONNX model ({type(error).__name__}).") from error
    return model


class _Walk:
    """Visits every graph, node and tensor of a model, recursing into subgraphs; refuses external data on sight."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.domains: set[str] = set()

    def graph(self, graph: Any, where: str) -> None:
        for tensor in graph.initializer:
            self.tensor(tensor, where)
        for sparse in graph.sparse_initializer:
            self.tensor(sparse.values, where)
            self.tensor(sparse.indices, where)
        self.nodes(graph.node, where)

    def nodes(self, nodes: Any, where: str) -> None:
        for node in nodes:
            self.domains.add(node.domain)
            for attribute in node.attribute:
                inner = f"{where}/{node.name or node.op_type}.{attribute.name}"
                tensors = [attribute.t] if attribute.HasField("t") else []
                sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
                for tensor in (*tensors, *attribute.tensors):
                    self.tensor(tensor, inner)
                for item in (*sparse, *attribute.sparse_tensors):
                    self.tensor(item.values, inner)
                    self.tensor(item.indices, inner)
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    self.graph(sub, inner)

    def tensor(self, tensor: Any, where: str) -> None:
        if tensor.data_location == _EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "(none given)")
            raise IntegrityError(
                f"{self.label}: the ONNX tensor {tensor.name or '(unnamed)'!r} in {where} keeps its data outside the "
                f"graph, at {location!r}. kiln refuses external data (onnxruntime would read that path from the "
                "server's disk); export the model again so that every weight is inside model.onnx."
            )


def _under(domain: str, prefix: str) -> bool:
    return domain == prefix or domain.startswith(prefix + ".")


def check_onnx(data: bytes | bytearray | memoryview, *, label: str, trust: Sequence[str] | None) -> None:
    """Raise IntegrityError for external data and TrustError for an untrusted operator domain; else return.

    ``trust=None`` judges the data only (register time: which code to trust is a question for whoever loads).

    Example:
        >>> check_onnx(open("model.onnx", "rb").read(), label="digits@3", trust=[])
    """
    model = _parse(data, label)
    walk = _Walk(label)
    walk.graph(model.graph, "the main graph")
    for info in model.training_info:
        walk.graph(info.initialization, "a training initialization graph")
        walk.graph(info.algorithm, "a training graph")
    for function in model.functions:
        walk.nodes(function.node, f"the function {function.domain}.{function.name}")
    if trust is None:
        return
    domains = walk.domains | {opset.domain for opset in model.opset_import}
    domains |= {opset.domain for function in model.functions for opset in function.opset_import}
    local = {function.domain for function in model.functions}
    foreign = sorted(d for d in domains - STANDARD_DOMAINS - local if not any(_under(d, prefix) for prefix in trust))
    if foreign:
        raise TrustError(
            f"{label}: the ONNX graph uses operators from the domain(s) {foreign}, which need a custom-op library "
            f"and are not trusted here. If you trust them, load with trust=[{foreign[0]!r}] (--trust {foreign[0]}); "
            f"kiln accepts the standard domains {sorted(STANDARD_DOMAINS - {''})} and functions the model defines."
        )
