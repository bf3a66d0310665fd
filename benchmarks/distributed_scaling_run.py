"""One timed training run for distributed_scaling.py: one framework, one model, one rank count, in fresh processes.

distributed_scaling.py starts this script once per (framework, model, ranks, rep) with one torch thread per process
(OMP_NUM_THREADS=1). kiln and the hand-written loop run as plain ``python`` on 1 rank and under ``torchrun
--standalone --nproc-per-node 2`` on 2; Lightning is started as plain ``python`` and launches its own second rank
(``Trainer(strategy="ddp", accelerator="cpu", devices=2)``, its documented subprocess launcher). Rank 0 prints one
``RESULT {json}`` line.

Frameworks:
    kiln        kiln.Model(net, loss="cross_entropy", optimizer="adam", lr=1e-3).fit(ArrayDataset(x, y), ...,
                strategy="ddp" on 2 ranks, "auto" (plain) on 1, verbose=0); everything else kiln's defaults,
                including the gradient doctor
    lightning   a LightningModule (cross-entropy, self.log of the loss, Adam 1e-3) over DataLoader(TensorDataset,
                shuffle=True, drop_last=True), Lightning's DistributedSampler on 2 ranks; Trainer with progress bar,
                logger, checkpointing and model summary off; strategy "ddp" on 2 devices, "auto" on 1
    torch       the floor: a hand-written loop (rank-strided whole-batch slicing, DistributedDataParallel on 2 ranks)
    probe       no training: the time of one forward/backward/Adam step with no gradient sync (both ranks computing
                at once on 2 ranks) and of one gloo all_reduce of a gradient-sized buffer, to tell compute-bound
                configs from communication-bound ones

Data: scikit-learn's digits as the peers' harness prepares them (MLP: 64 features; LeNet: 1x32x32), the 1408
training rows repeated ``--repeat`` times so an epoch holds many steps. Epoch 0 is warm-up; the timer stamps the end
of every epoch (rank 0, perf_counter), and samples/s is global samples over the timed epochs divided by the time from
the end of epoch 0 to the end of the last epoch (each interval holds one epoch boundary).

Run by hand (after distributed_scaling.py has written the data once)::

    OMP_NUM_THREADS=1 benchmarks/.venv-peers/bin/torchrun --standalone --nproc-per-node 2 \\
        benchmarks/distributed_scaling_run.py --framework kiln --model mlp --batch-size 256 --repeat 32 --epochs 9 \\
        --data benchmarks/results/distributed_scaling/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

FRAMEWORKS = ("kiln", "lightning", "torch", "probe")


def default_peers_dir() -> str:
    """$KILN_PEERS_DIR, else ../shared/peers/train next to the repository."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("KILN_PEERS_DIR", os.path.join(os.path.dirname(repo), "shared", "peers", "train"))


def load_tensors(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The peers' digits training rows for ``args.model``, repeated ``args.repeat`` times (float32, int64)."""
    os.environ["BENCH_DATA_DIR"] = args.data
    sys.path.insert(0, args.peers)
    import common  # the peers' harness: load_data(model) reads data/bench_data.npz

    x, y, _, _ = common.load_data(args.model)
    x, y = torch.from_numpy(x), torch.from_numpy(y.astype("int64"))
    return x.repeat(args.repeat, *([1] * (x.dim() - 1))).contiguous(), y.repeat(args.repeat).contiguous()


def build(model: str) -> nn.Module:
    import torch_models  # the peers' MLP 64-256-256-10 and LeNet-5

    torch.manual_seed(0)
    return torch_models.build(model)


class EpochTimer:
    """Stamps wall and process CPU time at the end of every epoch's last step (call ``tick`` after each step)."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch, self.steps = steps_per_epoch, 0
        self.stamps: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.stamps.append((time.perf_counter(), time.process_time()))

    def result(self, samples_per_epoch: int) -> dict[str, Any]:
        if len(self.stamps) < 2:
            raise RuntimeError(f"only {self.steps} steps ran ({len(self.stamps)} epochs): nothing timed after warm-up")
        wall = self.stamps[-1][0] - self.stamps[0][0]
        cpu = self.stamps[-1][1] - self.stamps[0][1]
        epochs = len(self.stamps) - 1
        per_epoch = [samples_per_epoch / (b[0] - a[0]) for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return {
            "steps": self.steps,
            "timed_epochs": epochs,
            "timed_s": wall,
            "samples_per_s": samples_per_epoch * epochs / wall,
            "samples_per_s_epoch_median": statistics.median(per_epoch),
            "rank0_cpu_over_wall": cpu / wall,
        }


# ---------------------------------------------------------------------------------------------------- frameworks
def run_kiln(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
    import kiln
    from kiln.data import ArrayDataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.all_reduce == "shm":  # preview: kiln's DDP wrapper with the shared-memory comm hook added
        from distributed_scaling_shm import use_shared_memory_all_reduce

        import kiln.train.model

        wrap = kiln.train.model.wrap

        def wrap_with_hook(module: nn.Module, strategy: str, device: torch.device) -> Any:
            wrapped = wrap(module, strategy, device)
            use_shared_memory_all_reduce(wrapped)
            return wrapped

        kiln.train.model.wrap = wrap_with_hook
    timer = EpochTimer(len(x) // (args.batch_size * world))

    class Timing(kiln.Callback):
        def on_train_batch_end(self, model: Any, step: int, loss: torch.Tensor) -> None:
            timer.tick()

    model = kiln.Model(build(args.model), loss="cross_entropy", optimizer="adam", lr=1e-3)
    model.fit(
        ArrayDataset(x, y),
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=0,
        drop_last=True,
        strategy="ddp" if world > 1 else "auto",
        callbacks=[Timing()],
        verbose=0,
    )
    assert model.fit_config["world_size"] == world, model.fit_config
    if not kiln.distributed.is_rank_zero():
        return None
    return {"world": world, **timer.result(timer.steps_per_epoch * args.batch_size * world)}


def run_lightning(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
    import lightning as L
    import torch.nn.functional as F

    warnings.filterwarnings("ignore")  # num_workers=0 and similar advice, on every rank
    world = args.ranks
    timer = EpochTimer(len(x) // (args.batch_size * world))

    class LitModel(L.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            loss = F.cross_entropy(self.net(inputs), targets)
            self.log("train_loss", loss)  # what typical user code does (the peers' "lean" mode keeps it)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Timing(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            timer.tick()

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[Timing()],
        default_root_dir=args.work,
    )
    trainer.fit(LitModel(build(args.model)), loader)
    assert trainer.world_size == world, trainer.world_size
    if trainer.global_rank != 0:
        return None
    return {"world": world, **timer.result(timer.steps_per_epoch * args.batch_size * world)}


def init_torch_distributed() -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    return world


def run_torch(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
    world = init_torch_distributed()
    rank = torch.distributed.get_rank() if world > 1 else 0
    net = build(args.model)
    options = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
    module: nn.Module = nn.parallel.DistributedDataParallel(net, **options) if world > 1 else net
    if world > 1 and args.all_reduce == "shm":
        from distributed_scaling_shm import use_shared_memory_all_reduce

        use_shared_memory_all_reduce(module)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = args.batch_size
    steps = len(x) // (batch * world)
    timer = EpochTimer(steps)
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(steps):
            g = i * world + rank  # rank-strided global batches, like kiln's loader
            rows = order[g * batch : (g + 1) * batch]
            loss = nn.functional.cross_entropy(module(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.tick()
    result = {"world": world, **timer.result(steps * batch * world)} if rank == 0 else None
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


def run_probe(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
    """Compute time of one step with no gradient sync, and one all_reduce of the gradients' size (2 ranks)."""
    world = init_torch_distributed()
    rank = torch.distributed.get_rank() if world > 1 else 0
    net = build(args.model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    inputs, targets = x[: args.batch_size], y[: args.batch_size]

    def step() -> None:
        nn.functional.cross_entropy(net(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    repeats = torch.tensor([max(10, int(2.0 / max(estimate(step), 1e-4)))])  # about 2 s of steps
    if world > 1:
        torch.distributed.broadcast(repeats, src=0)  # every rank computes for the same number of steps
    start = time.perf_counter()
    for _ in range(int(repeats)):
        step()
    step_s = (time.perf_counter() - start) / int(repeats)
    result: dict[str, Any] = {
        "world": world,
        "step_ms": step_s * 1e3,
        "params": sum(p.numel() for p in net.parameters()),
    }
    if world > 1:
        buffer = torch.randn(result["params"])
        for _ in range(20):
            torch.distributed.all_reduce(buffer)
        torch.distributed.barrier()
        start = time.perf_counter()
        for _ in range(200):
            torch.distributed.all_reduce(buffer)
        result["all_reduce_ms"] = (time.perf_counter() - start) / 200 * 1e3
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result if rank == 0 else None


def estimate(step: Any) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    return (time.perf_counter() - start) / 3


RUNNERS = {"kiln": run_kiln, "lightning": run_lightning, "torch": run_torch, "probe": run_probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--model", choices=["mlp", "cnn"], required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="per rank")
    parser.add_argument("--ranks", type=int, default=1, help="Lightning's devices (kiln/torch read torchrun's env)")
    parser.add_argument("--epochs", type=int, default=4, help="epoch 0 is warm-up, the rest are timed")
    parser.add_argument("--repeat", type=int, default=8, help="times the 1408 digits training rows are repeated")
    parser.add_argument("--data", required=True, help="directory holding the peers' bench_data.npz")
    parser.add_argument("--peers", default=default_peers_dir())
    parser.add_argument("--work", default=".", help="Lightning's default_root_dir")
    parser.add_argument(
        "--all-reduce",
        choices=["gloo", "shm"],
        default="gloo",
        help="kiln/torch on 2 ranks: shm is the preview of a shared-memory DDP comm hook (distributed_scaling_shm.py)",
    )
    parser.add_argument(
        "--bucket-cap-mb", type=float, help="torch only: DDP bucket size (default: DDP's 25 MiB, first bucket 1 MiB)"
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = load_tensors(args)
    result = RUNNERS[args.framework](args, x, y)
    if result is not None:
        result.update(
            framework=args.framework,
            model=args.model,
            batch_size=args.batch_size,
            threads=torch.get_num_threads(),
            rows=len(x),
        )
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
