"""ONNX export with a dynamic batch dimension, checked against torch by running it in onnxruntime.

Export is best effort: a module that does not export (or whose graph disagrees with torch) is packaged without
ONNX, and the reason is logged and kept in the package spec, so the torch runtime still serves it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OnnxGraph", "export_onnx", "make_session"]

logger = logging.getLogger(__name__)

_RTOL, _ATOL = 1e-3, 1e-4  # float32 parity tolerance (sums over thousands of products reorder)
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


@dataclass(frozen=True)
class OnnxGraph:
    """The serialised graph (None when skipped), why it was skipped, and the parity it reached."""

    model: bytes | None
    skipped: str | None = None
    max_abs_diff: float | None = None
    opset: int | None = None

    def spec(self) -> dict[str, Any]:
        if self.model is None:
            return {"skipped": self.skipped}
        return {"file": "model.onnx", "opset": self.opset, "parity_max_abs_diff": self.max_abs_diff}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporter warnings and log lines are expected noise here; keep them out of the user's output."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def make_session(model: bytes) -> Any:
    """An onnxruntime CPU session for ``model`` using as many threads as torch does."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _max_diff(session: Any, module: torch.nn.Module, inputs: Sequence[torch.Tensor], names: Sequence[str]) -> float:
    with torch.inference_mode():
        expected = module(*inputs)
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    got = session.run(None, {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)})
    worst = 0.0
    for want, have in zip(expected, got, strict=True):
        want_t, have_t = want.detach().cpu(), torch.from_numpy(have)
        if want_t.shape != have_t.shape:
            raise ValueError(f"output shape {tuple(have_t.shape)} differs from torch's {tuple(want_t.shape)}")
        if not want_t.is_floating_point():
            if not torch.equal(want_t, have_t.to(want_t.dtype)):
                raise ValueError("integer outputs differ from torch's")
            continue
        want_f, have_f = want_t.double(), have_t.double()
        excess = (want_f - have_f).abs() - _RTOL * want_f.abs()
        if want_f.numel() and float(excess.max()) > _ATOL:
            raise ValueError(f"outputs differ from torch's by up to {float((want_f - have_f).abs().max()):.3g}")
        worst = max(worst, float((want_f - have_f).abs().max()) if want_f.numel() else 0.0)
    return worst


def export_onnx(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], input_names: Sequence[str], output_names: Sequence[str]
) -> OnnxGraph:
    """Export ``module`` (in eval mode) with batch dimension 0 dynamic; parity-check at two batch sizes."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        return _skip(f"onnx export needs the 'onnx' extra (pip install 'kiln[onnx]'): {error}")
    # Batch 1 would be specialised to a constant by torch.export; export at batch 2 and check batch 3 as well.
    export_inputs = tuple(t if t.shape[0] >= 2 else torch.cat([t, t]) for t in inputs)
    batch = torch.export.Dim("batch")
    try:
        with _quiet():
            program = torch.onnx.export(
                module,
                export_inputs,
                dynamo=True,
                dynamic_shapes=tuple({0: batch} for _ in inputs),
                input_names=list(input_names),
                output_names=list(output_names),
                verbose=False,
            )
            assert program is not None
            proto = program.model_proto
            model = proto.SerializeToString()
    except Exception as error:  # the exporter raises many kinds; every one means "no ONNX for this module"
        return _skip(f"torch.onnx.export failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
    try:
        session = make_session(model)
        larger = tuple(torch.cat([t, t, t])[: max(3, t.shape[0] + 1)] for t in inputs)
        diff = max(_max_diff(session, module, inputs, input_names), _max_diff(session, module, larger, input_names))
    except Exception as error:
        return _skip(f"ONNX parity check failed: {type(error).__name__}: {str(error).strip()[:300]}")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return OnnxGraph(model, max_abs_diff=diff, opset=opset)


def _skip(reason: str) -> OnnxGraph:
    logger.warning("packaging without ONNX: %s", reason)
    return OnnxGraph(None, skipped=reason)
