"""Checkpoint save/load of a 100 MB model vs a bare safetensors save/load of the same tensors (issue 3).

kiln's checkpoint adds the JSON structure (optimizer, RNG, loop state), atomic write (temp file, fsync, rename,
directory fsync) and verification on load. The floor is `safetensors.torch.save_file` / `load_file` of exactly the
same tensors, to a new file (the previous one removed after, as keep-last-1 does), without fsync; both loads are
followed by reading every byte (a restore copies them). Saves rotate their order every rep, each after `os.sync()`;
one warm-up round, then medians; one thread.

    python benchmarks/checkpoint_bench.py --reps 9        # the recorded run -> benchmarks/results/checkpoint_bench.json
    python benchmarks/checkpoint_bench.py --smoke         # 1M parameters, one rep: checks that the script runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import torch
from safetensors.torch import load_file, save_file

from kiln.train.checkpoint import _encode, latest_checkpoint, load_checkpoint, save_checkpoint

QUESTION, TITLE = "checkpoint_bench", "Checkpoints (issue 3)"
SAVES = ("bare save", "bare save+fsync", "kiln save")


def build_state(params: int) -> dict[str, Any]:
    torch.manual_seed(0)
    width = 2500 if params >= 2500 * 2500 else 500
    module = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(max(1, params // (width * width)))])
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(2, width)).sum().backward()
    optimizer.step()
    return {"module": module.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "loop": {"epoch": 3, "batch": 17, "global_step": 1234}}  # fmt: skip


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


def timed_save(name: str, tensors: dict[str, torch.Tensor], state: dict[str, Any], root: Path, rep: int) -> float:
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
    return time.perf_counter() - start


def measure(state: dict[str, Any], tensors: dict[str, torch.Tensor], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in (*SAVES, "bare load", "kiln load")}
    root = Path(tempfile.mkdtemp(prefix="kiln-ckpt-bench-"))
    try:
        for rep in range(reps + 1):  # round 0 warms the page cache and allocator
            saves: dict[str, float] = {}
            for name in harness.rotated(SAVES, rep):  # no variant always follows another
                os.sync()  # every save starts with no dirty pages left by the previous one
                saves[name] = timed_save(name, tensors, state, root, rep)
            os.sync()
            bare_load, _ = harness.timed(lambda rep=rep: touch(load_file(str(root / f"bare-{rep}.safetensors"))))
            kiln_load, _ = harness.timed(lambda: touch(load_checkpoint(latest_checkpoint(root / "ckpt"))))
            if rep:
                for key, value in {**saves, "bare load": bare_load, "kiln load": kiln_load}.items():
                    times[key].append(value)
    finally:
        shutil.rmtree(root)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--params", type=int, default=25_000_000, help="model parameters (fp32: 4 bytes each)")
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.smoke:
        args.reps, args.params = 1, 1_000_000
    harness.pin_threads(1)
    run = harness.new_run(args.run_name)
    state = build_state(args.params)
    tensors: dict[str, torch.Tensor] = {}
    _encode(state, tensors, set())  # exactly the tensors a checkpoint holds
    megabytes = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    model_mb = sum(t.numel() * t.element_size() for t in state["module"].values()) / 1e6
    times = measure(state, tensors, args.reps)
    median = {k: harness.median(v) or 0.0 for k, v in times.items()}
    rows = []
    for op, floor in (("save", "bare save"), ("save", "bare save+fsync"), ("load", "bare load")):
        bare, ours = median[floor], median[f"kiln {op}"]
        rows.append([op, floor, f"{bare:.3f}", f"{ours:.3f}", f"{ours / bare:.2f}x"])
    caption = (f"model {model_mb:.0f} MB; checkpoint payload (model + Adam state) {megabytes:.0f} MB; "
               f"reps {args.reps}; cpu count {os.cpu_count()}")  # fmt: skip
    spec = harness.table(["operation", "floor", "floor (s)", "kiln checkpoint (s)", "ratio"], rows, caption=caption)
    run.update(
        description=f"A {args.params / 1e6:.0f}M-parameter ({model_mb:.0f} MB) model with its Adam state: "
        f"{megabytes:.0f} MB of tensors in one checkpoint. Every variant writes a new file and then removes its "
        "previous one (what keep-last-1 does; writing over freed page cache instead made the bare floor look 5x faster "
        "than it is in a training run); `os.sync()` before each timed save, variants rotated, medians.",
        tables=[spec],
        summary={name: harness.spread(values) for name, values in times.items()},
    )
    print(caption)
    print(harness.markdown_table(spec))
    path = harness.result_path(args, QUESTION)
    harness.write_result(path, question=QUESTION, title=TITLE, run=harness.finish_run(run))


if __name__ == "__main__":
    main()
