"""`kiln.kernels.apply`, `fused_loss` and `backend`: what gets swapped, and that results do not change."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln.kernels as kk


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 16)
        self.rms = nn.RMSNorm(16, eps=1e-6)
        self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rms(self.proj(self.norm(x)))  # (N, 16)


class _CustomNorm(nn.LayerNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(input)


def _block() -> _Block:
    torch.manual_seed(0)
    block = _Block()
    for parameter in block.parameters():
        nn.init.normal_(parameter)
    return block


def test_backend_is_reference_on_cpu() -> None:
    assert kk.backend("cpu") == "reference"
    assert kk.backend(torch.device("cpu")) == "reference"


def test_apply_leaves_cpu_modules_unchanged() -> None:
    block = _block()
    assert kk.apply(block) is block
    assert type(block.norm) is nn.LayerNorm and type(block.rms) is nn.RMSNorm
    assert type(block.loss) is nn.CrossEntropyLoss


def test_forced_apply_swaps_in_place_and_keeps_results() -> None:
    block = _block()
    x = torch.randn(8, 16)
    expected = block(x)
    parameters = dict(block.named_parameters())
    state_keys = list(block.state_dict())
    assert kk.apply(block, force=True) is block
    assert type(block.norm) is kk.LayerNorm and type(block.rms) is kk.RMSNorm
    assert type(block.loss) is kk.CrossEntropyLoss
    assert all(parameters[name] is parameter for name, parameter in block.named_parameters())
    assert list(block.state_dict()) == state_keys
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(block.loss(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1))


def test_apply_skips_subclasses_and_weighted_losses() -> None:
    model = nn.Sequential(_CustomNorm(4), nn.CrossEntropyLoss(weight=torch.ones(3)))
    kk.apply(model, force=True)
    assert type(model[0]) is _CustomNorm and type(model[1]) is nn.CrossEntropyLoss


def test_fused_loss_on_cpu_is_none_unless_forced() -> None:
    assert kk.fused_loss("cross_entropy", "cpu") is None
    assert kk.fused_loss(nn.CrossEntropyLoss(), torch.device("cpu")) is None
    torch.manual_seed(0)
    logits, target = torch.randn(10, 6), torch.randint(0, 6, (10,))
    target[0] = 3
    for loss, expected in [
        ("cross_entropy", F.cross_entropy(logits, target)),
        (F.cross_entropy, F.cross_entropy(logits, target)),
        (
            nn.CrossEntropyLoss(ignore_index=3, reduction="sum", label_smoothing=0.2),
            F.cross_entropy(logits, target, ignore_index=3, reduction="sum", label_smoothing=0.2),
        ),
    ]:
        fused = kk.fused_loss(loss, "cpu", force=True)
        assert isinstance(fused, kk.CrossEntropyLoss)
        torch.testing.assert_close(fused(logits, target), expected)


def test_fused_loss_declines_what_it_cannot_fuse() -> None:
    assert kk.fused_loss("mse", "cpu", force=True) is None
    assert kk.fused_loss(nn.CrossEntropyLoss(weight=torch.ones(6)), "cpu", force=True) is None
    assert kk.fused_loss(F.mse_loss, "cpu", force=True) is None


def test_fused_cross_entropy_falls_back_for_probability_targets() -> None:
    logits, probabilities = torch.randn(4, 6), torch.softmax(torch.randn(4, 6), dim=-1)
    torch.testing.assert_close(kk.CrossEntropyLoss()(logits, probabilities), F.cross_entropy(logits, probabilities))


def test_import_and_ops_work_without_triton() -> None:
    """Triton is an optional extra: with it unimportable, kiln.kernels imports and every op runs the reference."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        import kiln.kernels as kk
        assert not kk.triton_available() and kk.backend("cuda") == "reference"
        x = torch.randn(4, 8, requires_grad=True)
        loss = kk.cross_entropy(kk.layer_norm(x, (8,)), torch.randint(0, 8, (4,)))
        loss.backward()
        assert x.grad is not None and "triton" not in [m.split(".")[0] for m in sys.modules if sys.modules[m]]
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_apply_follows_explicit_device(device: str) -> None:
    block = _block()
    kk.apply(block, device=device)
    swapped = type(block.norm) is kk.LayerNorm
    assert swapped == (kk.backend(device) == "triton")
