"""A custom-step training job for the SIGKILL-resume and the two-rank tests, run as a real subprocess (or by torchrun).

A GRU language model trained with truncated backpropagation through time: its ``train_step`` carries the hidden
state between batches in ``self.carry`` and steps two optimizers ("body": Adam with a cosine schedule, "head": SGD
with momentum and a linear schedule with warmup). Dropout (on unless --no-dropout) draws from the global RNG.

Rank 0 writes one JSON line per batch ({"step", "loss"}) to --step-log, flushed at once, and the final weights to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

import kiln
from kiln.train.streams import stream_batches

VOCAB = 12


class LanguageModel(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.rnn = nn.GRU(16, 24, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(24, VOCAB)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out, hidden = self.rnn(self.embed(tokens), hidden)  # (B, T, H), (1, B, H)
        return self.head(self.drop(out)), hidden  # (B, T, V)


class TBPTT(kiln.Model):
    def train_step(self, batch):
        tokens, targets = batch  # (B, T) each
        logits, hidden = self.module(tokens, self.carry.get("hidden"))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        self.backward(loss)
        self.step("body")
        self.step("head")
        self.carry["hidden"] = hidden  # kiln detaches it before the next batch
        return {"loss": loss, "perplexity": loss.exp()}


class StepLog(kiln.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, model, step, loss):
        if kiln.distributed.is_rank_zero():
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, "loss": float(loss).hex()}) + "\n")


def tokens() -> torch.Tensor:
    """A stream with structure to learn (a repeating ramp) and noise: every 5th token random."""
    generator = torch.Generator().manual_seed(0)
    stream = torch.arange(1600) % VOCAB
    noise = torch.randint(0, VOCAB, (1600,), generator=generator)
    return torch.where(torch.arange(1600) % 5 == 0, noise, stream)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-log", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--no-dropout", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TBPTT(
        LanguageModel(0.0 if args.no_dropout else 0.2),
        optimizer={"body": ("adam", {"lr": 3e-3, "params": ["embed", "rnn"]}),
                   "head": ("sgd", {"lr": 0.05, "momentum": 0.9, "params": "head"})},
    )  # fmt: skip
    extra = {} if args.checkpoint is None else {"checkpoint": args.checkpoint, "checkpoint_every": 2,
                                                "resume": "latest"}  # fmt: skip
    train = stream_batches(tokens(), batch_size=args.batch_size, length=10)
    history = model.fit(train, epochs=args.epochs, batch_size=args.batch_size, shuffle=False, seed=3, verbose=0,
                        lr_schedule={"body": "cosine", "head": kiln.LRSchedule("linear", warmup_steps=3)},
                        callbacks=[StepLog(args.step_log)], **extra)  # fmt: skip
    if kiln.distributed.is_rank_zero():
        save_model(model.module, str(args.out))
        print(json.dumps({"history": history.history, "world": model.fit_config["world_size"]}))


if __name__ == "__main__":
    main()
