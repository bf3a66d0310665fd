"""Checkpoint save/load of a 100 MB model vs a bare safetensors save/load of the same tensors.

kiln's checkpoint adds the JSON structure (optimizer, RNG, loop state), atomic write (temp file, fsync, rename,
directory fsync) and verification on load. The floor is `safetensors.torch.save_file` / `load_file` of exactly the
same tensors, to a new file (the previous one removed after, as keep-last-1 does), without fsync; both loads are
followed by reading every byte (a restore copies them).
Interleaved repetitions, medians, one thread.

    python benchmarks/checkpoint_bench.py --reps 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kiln.train.checkpoint import _encode, latest_checkpoint, load_checkpoint, save_checkpoint


def build_state(params: int) -> dict:
    torch.manual_seed(0)
    width = 2500
    layers = [torch.nn.Linear(width, width) for _ in range(max(1, params // (width * width)))]
    module = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(2, width)).sum().backward()
    optimizer.step()
    return {"module": module.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "loop": {"epoch": 3, "batch": 17, "global_step": 1234}}


def touch(value: object) -> None:
    """Read every byte of every tensor (loads may map files lazily; a restore copies them all)."""
    if isinstance(value, torch.Tensor):
        if value.numel():
            value.reshape(-1).view(torch.uint8).sum()
    elif isinstance(value, dict):
        for item in value.values():
            touch(item)
    elif isinstance(value, list | tuple):
        for item in value:
            touch(item)


def timed_save(name: str, tensors: dict[str, torch.Tensor], state: dict, root: Path, rep: int) -> float:
    """One save; every variant writes a new file and then removes its previous one, as keep-last-1 does."""
    if name == "kiln save":
        start = time.perf_counter()
        save_checkpoint(root / "ckpt", state, step=rep, keep=1)
        return time.perf_counter() - start
    stem = "bare" if name == "bare save" else "durable"
    path = root / f"{stem}-{rep}.safetensors"
    start = time.perf_counter()
    save_file(tensors, str(path))
    if name == "bare save+fsync":
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    (root / f"{stem}-{rep - 1}.safetensors").unlink(missing_ok=True)
    elapsed = time.perf_counter() - start
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--params", type=int, default=25_000_000, help="model parameters (fp32: 4 bytes each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = build_state(args.params)
    tensors: dict[str, torch.Tensor] = {}
    _encode(state, tensors, set())  # exactly the tensors a checkpoint holds
    megabytes = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    model_mb = sum(t.numel() * t.element_size() for t in state["module"].values()) / 1e6
    root = Path(tempfile.mkdtemp(prefix="kiln-ckpt-bench-"))
    keys = ("bare save", "bare save+fsync", "kiln save", "bare load", "kiln load")
    times: dict[str, list[float]] = {k: [] for k in keys}
    try:
        order = ["bare save", "bare save+fsync", "kiln save"]
        for rep in range(args.reps + 1):
            saves: dict[str, float] = {}
            for name in order[rep % 3 :] + order[: rep % 3]:  # rotate, so no variant always follows another
                os.sync()  # every save starts with no dirty pages left by the previous one
                saves[name] = timed_save(name, tensors, state, root, rep)
            os.sync()
            start = time.perf_counter()
            touch(load_file(str(root / f"bare-{rep}.safetensors")))
            bare_load = time.perf_counter() - start
            start = time.perf_counter()
            touch(load_checkpoint(latest_checkpoint(root / "ckpt")))
            kiln_load = time.perf_counter() - start
            if rep:  # the first round warms the page cache and allocator
                for key, value in {**saves, "bare load": bare_load, "kiln load": kiln_load}.items():
                    times[key].append(value)
    finally:
        shutil.rmtree(root)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {model_mb:.0f} MB; checkpoint payload (model + Adam state) {megabytes:.0f} MB; reps {args.reps}; "
          f"cpu count {os.cpu_count()}")
    print("| operation | floor | floor (s) | kiln checkpoint (s) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for op, floor in (("save", "bare save"), ("save", "bare save+fsync"), ("load", "bare load")):
        bare, ours = median[floor], median[f"kiln {op}"]
        print(f"| {op} | {floor} | {bare:.3f} | {ours:.3f} | {ours / bare:.2f}x |")


if __name__ == "__main__":
    main()
