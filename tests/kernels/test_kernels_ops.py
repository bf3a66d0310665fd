"""The `kiln::` custom ops as torch sees them: opcheck (schema, fake kernels, autograd registration, AOT dispatch),
torch.compile with fullgraph=True, and torch.export."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln.kernels as kk


def _op_cases() -> list[tuple[str, tuple[Any, ...]]]:
    torch.manual_seed(0)
    target = torch.randint(0, 33, (12,))
    target[2] = -100
    hidden = torch.randn(12, 8, requires_grad=True)  # (N, H)
    weight = torch.randn(33, 8, requires_grad=True)  # (V, H)
    bias = torch.randn(33, requires_grad=True)  # (V,)
    rows = torch.randn(6, 16, requires_grad=True)  # (N, H)
    norm_weight = torch.randn(16, requires_grad=True)  # (H,)
    norm_bias = torch.randn(16, requires_grad=True)  # (H,)
    lse = torch.logsumexp(hidden.detach() @ weight.detach().T, dim=-1)  # (N,)
    return [
        ("cross_entropy", (torch.randn(12, 33, requires_grad=True), target, -100, 0.1)),
        ("cross_entropy_backward", (torch.rand(12), torch.randn(12, 33), target, torch.rand(12), -100, 0.1)),
        ("fused_linear_cross_entropy", (hidden, weight, target, bias, -100, 0.1, "mean", 5, [True, True, True])),
        ("fused_linear_cross_entropy", (hidden, weight, target, None, -100, 0.0, "sum", 4, [True, False, False])),
        ("fused_linear_cross_entropy", (hidden, weight, target, bias, -100, 0.0, "none", 5, [False, False, False])),
        (
            "fused_linear_cross_entropy_backward",
            (torch.rand(12), hidden.detach(), weight.detach(), target, None, lse, -100, 0.0, 5, [True, True, False]),
        ),
        ("rms_norm", (rows, norm_weight, 1e-6)),
        ("rms_norm", (rows, None, 1e-6)),
        ("rms_norm_backward", (torch.randn(6, 16), rows.detach(), norm_weight.detach(), torch.rand(6))),
        ("layer_norm", (rows, norm_weight, norm_bias, 1e-5)),
        ("layer_norm", (rows, None, None, 1e-5)),
        (
            "layer_norm_backward",
            (torch.randn(6, 16), rows.detach(), norm_weight.detach(), None, torch.rand(6), torch.rand(6)),
        ),
        ("swiglu", (torch.randn(4, 9, requires_grad=True), torch.randn(4, 9, requires_grad=True))),
        ("swiglu_backward", (torch.randn(4, 9), torch.randn(4, 9), torch.randn(4, 9))),
    ]


@pytest.mark.parametrize(("name", "args"), _op_cases(), ids=lambda case: case if isinstance(case, str) else "")
def test_opcheck(name: str, args: tuple[Any, ...]) -> None:
    torch.library.opcheck(getattr(torch.ops.kiln, name).default, args)


class _TinyLanguageModel(nn.Module):
    def __init__(self, vocab: int = 40, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = kk.RMSNorm(width)
        self.mlp = kk.SwiGLU(width, 24)
        self.final_norm = kk.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.loss = kk.LinearCrossEntropyLoss(chunk_size=8)

    def forward(self, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, T, C)
        x = x + self.mlp(self.norm(x))
        return self.loss(self.final_norm(x), self.head.weight, target)


def test_compile_fullgraph_matches_eager() -> None:
    torch.manual_seed(0)
    model = _TinyLanguageModel()
    tokens, target = torch.randint(0, 40, (2, 12)), torch.randint(0, 40, (2, 12))
    eager_loss = model(tokens, target)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(tokens, target)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(grads, eager_grads)


def test_export_keeps_the_kiln_ops() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), kk.LayerNorm(16), nn.Linear(16, 8), kk.RMSNorm(8)).eval()
    x = torch.randn(5, 8)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert {"kiln.layer_norm.default", "kiln.rms_norm.default"} <= targets
    torch.testing.assert_close(exported.module()(x), model(x))


def test_cross_entropy_compiles_with_dynamic_batch() -> None:
    loss_fn = torch.compile(kk.CrossEntropyLoss(label_smoothing=0.1), backend="aot_eager", fullgraph=True, dynamic=True)
    for rows in (6, 9):
        logits, target = torch.randn(rows, 7), torch.randint(0, 7, (rows,))
        torch.testing.assert_close(loss_fn(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1))
