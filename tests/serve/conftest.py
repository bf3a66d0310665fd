"""Fixtures for serve tests: one store with a small MLP (ONNX graph + torch spec) and a slow torch-only MLP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import torch
from torch import nn

from kiln.export import register_module
from kiln.serve import KilnApp
from kiln.store import Store

T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    store: Path
    module: nn.Module  # the registered "mlp", kept in process as the reference for predictions


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """``mlp@production`` (64 -> 32 -> 10, with an ONNX graph) and ``slow`` (64 -> 3x1024 -> 10, torch only)."""
    path = tmp_path_factory.mktemp("serve-store")
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    slow = nn.Sequential(
        nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
        nn.Linear(1024, 10),
    ).eval()  # fmt: skip
    with Store(path) as store:
        version = register_module(mlp, "mlp", store=store, example_input=torch.randn(2, 64),
                                  preprocessing={"scale": 1 / 16})  # fmt: skip
        store.promote("mlp", version.version, "production")
        register_module(slow, "slow", store=store, example_input=torch.randn(2, 64), onnx=False)
    return Served(path, mlp)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@contextlib.asynccontextmanager
async def client_for(app: KilnApp, *, start: bool = True, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in process (started and warmed up unless ``start=False``)."""
    if start:
        await app.startup(wait=True)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiln", headers=headers) as client:
            yield client
    finally:
        await app.shutdown()


def reference_outputs(module: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.inference_mode():
        return module(torch.as_tensor(inputs, dtype=torch.float32))
