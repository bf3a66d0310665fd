"""A training script for the distributed tests: runs unchanged as `python _job.py` or under torchrun.

Rank 0 appends one JSON line per batch ({"step", "loss"}) to --log and writes the final weights to --out.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.train.strategy import full_state


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bn":
        return nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))


class StepLog(kiln.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, model, step, loss):
        if kiln.distributed.is_rank_zero():
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, "loss": float(loss).hex()}) + "\n")


class FailOnRank(kiln.Callback):
    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_batch_end(self, model, step, loss):
        if kiln.distributed.rank() == self.rank and step == 3:
            raise RuntimeError(f"planted failure on rank {self.rank}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["mlp", "bn"], default="mlp")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--strategy", default="auto")
    # SGD by default: with BatchNorm after a Linear the bias has a zero true gradient, and Adam would blow its
    # rounding noise up to full-size steps that differ between 1 and 2 ranks. FSDP tests use Adam (sharded state).
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--sync-batchnorm", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--step-log", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--checkpoint-every", default="1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(512, 12, generator=generator), torch.randint(0, 3, (512,), generator=generator)
    lr = {"sgd": 0.05, "adam": 0.01}[args.optimizer]
    model = kiln.Model(build(args.model), loss="cross_entropy", optimizer=args.optimizer, lr=lr, metrics=["accuracy"])
    callbacks: list[kiln.Callback] = []
    if args.step_log:
        callbacks.append(StepLog(args.step_log))
    if args.fail_rank is not None:
        callbacks.append(FailOnRank(args.fail_rank))
    every = args.checkpoint_every if args.checkpoint_every == "epoch" else int(args.checkpoint_every)
    extra = {} if args.checkpoint is None else {"checkpoint": args.checkpoint, "checkpoint_every": every,
                                                "resume": "latest"}
    history = model.fit(ArrayDataset(x, y), epochs=args.epochs, batch_size=args.batch_size, seed=5,
                        validation=ArrayDataset(x[:100], y[:100]), strategy=args.strategy,
                        sync_batchnorm=args.sync_batchnorm, callbacks=callbacks, verbose=0, **extra)
    weights, _ = full_state(model.module, model.optimizer)  # a collective under FSDP: every rank joins
    if kiln.distributed.is_rank_zero():
        if args.out:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(args.out))
        print(json.dumps({"world": model.fit_config["world_size"], "history": history.history,
                          "global_batch": model.fit_config["global_batch_size"], "pid": os.getpid()}))


if __name__ == "__main__":
    main()
