"""Shared fixture for the Triton kernel checks in this directory.

They run where a Triton kernel can run: on CPU tensors under the Triton interpreter, or on a CUDA device. Triton
decides between interpreting and compiling when a kernel is *defined* (at import of `kiln.kernels.triton_*`), so
TRITON_INTERPRET=1 must be in the environment before the process starts; tests/kernels/test_kernels_interpreter.py
runs each file here in a fresh `python -m pytest` with it set. Run one by hand with
`TRITON_INTERPRET=1 python -m pytest tests/kernels/interpreter`.
"""

from __future__ import annotations

import os

import pytest
import torch

from kiln.kernels import _ops

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

if not INTERPRETING and not torch.cuda.is_available():
    # Nothing here can run in this process: do not even collect (test_kernels_interpreter.py runs these files).
    collect_ignore_glob = ["test_interp_*.py"]


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """The device the kernels run on; the kiln ops are routed to the Triton kernels on it."""
    pytest.importorskip("triton")
    if INTERPRETING:
        selected = torch.device("cpu")
    elif torch.cuda.is_available():
        selected = torch.device("cuda")
    else:
        pytest.skip("needs TRITON_INTERPRET=1 (see tests/kernels/test_kernels_interpreter.py) or a CUDA device")
    # Route every op to its Triton kernel, CPU tensors included (the interpreter runs them).
    monkeypatch.setattr(_ops, "use_triton", lambda tensor: True)
    return selected
