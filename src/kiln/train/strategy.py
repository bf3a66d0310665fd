"""Parallel strategies for fit: none, DDP, or FSDP2 (``fully_shard``), and synchronised BatchNorm on any device."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..distributed import is_distributed
from ..errors import ConfigError

__all__ = ["STRATEGIES", "SyncBatchNorm", "convert_sync_batchnorm", "resolve_strategy", "wrap"]

STRATEGIES = ("auto", "none", "ddp", "fsdp")


def resolve_strategy(strategy: str) -> str:
    """The concrete strategy: "auto" is DDP under a multi-rank process group and "none" otherwise."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}.")
    if strategy == "auto":
        return "ddp" if is_distributed() else "none"
    if strategy in ("ddp", "fsdp") and not is_distributed():
        raise ConfigError(f"strategy={strategy!r} needs several ranks: launch the script with "
                          "`torchrun --nproc-per-node N train.py` (or use strategy='auto').")
    return strategy


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are computed over every rank's batch; works on CPU (gloo) and GPU.

    torch's own ``nn.SyncBatchNorm`` runs only on GPU; this one all-reduces per-channel sums (an autograd-aware
    all-reduce, so gradients flow through the global statistics) and is used where torch's cannot run.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = torch.tensor([input.numel() / channels], dtype=input.dtype, device=input.device)
        local = torch.cat([input.sum(dims), (input * input).sum(dims), count])  # (2C + 1,)
        total = all_reduce(local)
        n = total[-1]
        mean = total[:channels] / n  # (C,)
        var = total[channels : 2 * channels] / n - mean * mean  # biased, (C,)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm for a synchronised one (torch's on CUDA, kiln's elsewhere); parameters are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            replacement = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats, device=device)
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias  # the optimizer's Parameters
            replacement.running_mean, replacement.running_var = child.running_mean, child.running_var
            replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            convert_sync_batchnorm(child, device)
    return module


def fully_shard_module(module: nn.Module, *, param_dtype: torch.dtype | None) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to each child that holds parameters, then to the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for child in module.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def is_sharded(module: nn.Module) -> bool:
    """True once FSDP2 has sharded ``module`` (its parameters are DTensors)."""
    return any(hasattr(p, "full_tensor") for p in module.parameters())


def full_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimizer state_dicts; for a sharded module the full (unsharded) ones, gathered to the CPU.

    A collective under FSDP: every rank must call it. Full state dicts do not depend on the number of ranks, so a
    checkpoint resumes on any rank count.
    """
    if not is_sharded(module):
        return module.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(module, optimizer, options=options)


def load_full_state(module: nn.Module, optimizer: torch.optim.Optimizer, module_state: dict[str, Any],
                    optimizer_state: dict[str, Any]) -> None:
    """Inverse of :func:`full_state`: load full state dicts into a plain or sharded module and its optimizer."""
    if not is_sharded(module):
        module.load_state_dict(module_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(module, optimizer, model_state_dict=module_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def wrap(module: nn.Module, strategy: str, device: torch.device) -> Any:
    """The module the training loop calls: the module itself, or its DDP wrapper (FSDP2 shards in place)."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module
