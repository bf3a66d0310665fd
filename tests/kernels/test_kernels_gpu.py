"""The compiled Triton kernels on CUDA at LLM shapes, bfloat16 and float32, against torch in float32.

Tolerances compare whole tensors by relative L2 error: at most 1e-4 in float32 (sums over up to 128K columns in
another order) and 1e-2 in bfloat16 (inputs and outputs are rounded to bfloat16, about 4e-3 relative each), which
catches any wrong formula or indexing while allowing rounding. Losses: atol=1e-2 on a sum of ~3500 rows, 1e-3 on a
mean.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln.kernels as kk

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def _needs_triton() -> None:
    pytest.importorskip("triton")


def _assert_close(actual: torch.Tensor | None, expected: torch.Tensor | None, dtype: torch.dtype) -> None:
    assert actual is not None and expected is not None
    limit = 1e-4 if dtype == torch.float32 else 1e-2
    error = (actual.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-12)
    assert error.item() <= limit, f"relative L2 error {error.item():.2e} > {limit:.0e} ({dtype})"


def test_cuda_dispatches_to_triton() -> None:
    assert kk.backend("cuda") == "triton"
    model = kk.apply(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)).cuda())
    assert type(model[1]) is kk.LayerNorm


@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(vocab: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    logits = (2 * torch.randn(4096, vocab, device="cuda")).to(dtype).requires_grad_()  # (N, V)
    target = torch.randint(0, vocab, (4096,), device="cuda")
    target[::7] = -100
    reference = logits.detach().float().requires_grad_()
    loss = kk.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")
    expected = F.cross_entropy(reference, target, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, expected, atol=1e-2, rtol=1e-5)
    loss.backward()
    expected.backward()
    _assert_close(logits.grad, reference.grad, dtype)


@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_linear_cross_entropy(vocab: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(4096, 4096, device="cuda").to(dtype).requires_grad_()  # (N, H)
    weight = (torch.randn(vocab, 4096, device="cuda") / 64).to(dtype).requires_grad_()  # (V, H)
    target = torch.randint(0, vocab, (4096,), device="cuda")
    target[::5] = -100
    loss = kk.fused_linear_cross_entropy(hidden, weight, target)
    loss.backward()
    leaves = [hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()]
    expected = F.cross_entropy((leaves[0] @ leaves[1].T).float(), target)  # matmul in the same dtype
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-3, rtol=1e-3)
    _assert_close(hidden.grad, leaves[0].grad, dtype)
    _assert_close(weight.grad, leaves[1].grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["rms_norm", "layer_norm"])
def test_norms(kind: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    if kind == "rms_norm":
        module, expected_module = kk.RMSNorm(4096, eps=1e-6), nn.RMSNorm(4096, eps=1e-6)
    else:
        module, expected_module = kk.LayerNorm(4096), nn.LayerNorm(4096)
    for parameter in expected_module.parameters():
        nn.init.normal_(parameter)
    expected_module.cuda()
    module.cuda().load_state_dict(expected_module.state_dict())
    x = (1 + torch.randn(8192, 4096, device="cuda")).to(dtype).requires_grad_()  # (N, H)
    reference = x.detach().float().requires_grad_()
    output, expected = module(x), expected_module(reference)
    assert output.dtype == dtype
    _assert_close(output, expected, dtype)
    upstream = torch.randn(8192, 4096, device="cuda")
    output.backward(upstream.to(dtype))
    expected.backward(upstream.to(dtype).float())
    _assert_close(x.grad, reference.grad, dtype)
    for parameter, expected_parameter in zip(module.parameters(), expected_module.parameters(), strict=True):
        _assert_close(parameter.grad, expected_parameter.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    gate = torch.randn(8192, 14336, device="cuda").to(dtype).requires_grad_()  # (N, I)
    up = torch.randn(8192, 14336, device="cuda").to(dtype).requires_grad_()  # (N, I)
    leaves = [gate.detach().float().requires_grad_(), up.detach().float().requires_grad_()]
    output, expected = kk.swiglu(gate, up), F.silu(leaves[0]) * leaves[1]
    _assert_close(output, expected, dtype)
    upstream = torch.randn_like(expected).to(dtype)
    output.backward(upstream)
    expected.backward(upstream.float())
    _assert_close(gate.grad, leaves[0].grad, dtype)
    _assert_close(up.grad, leaves[1].grad, dtype)
