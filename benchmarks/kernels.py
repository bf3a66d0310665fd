"""Fused kernels (issue 7): forward+backward throughput and peak memory of kiln.kernels against torch eager,
torch.compile and Liger-Kernel.

Ops and shapes (defaults: B*T = 8192 tokens, hidden 4096, vocab 32000 and 128256, bfloat16):

    cross_entropy               logits (N, V) -> loss
    fused_linear_cross_entropy  hidden (N, H), lm_head weight (V, H) -> loss (eager: linear, float32 upcast, CE)
    rms_norm, layer_norm        x (N, H) -> y, with a weight (and bias)
    swiglu                      gate, up (N, I) with I = 3.5 * H -> silu(gate) * up

Implementations: ``torch`` (eager, the baseline of every ratio), ``compile`` (torch.compile of the eager function),
``kiln`` (kiln.kernels: Triton on CUDA) and ``liger`` (Liger-Kernel, when importable: carry its wheel to the GPU
machine and ``pip install --no-deps`` it). Each measurement builds fresh inputs outside the timed region (Liger's
cross-entropy overwrites its logits), runs ``--warmup`` untimed steps, then times ``--reps`` forward+backward steps
with CUDA events and reports the median. Peak memory is ``max_memory_allocated`` during one step minus what was
allocated before it (the inputs and parameters), with gradients reset to None first, so gradients count.

Run on a GPU machine (from the repository root)::

    python benchmarks/kernels.py                                  # everything, a few minutes on one H100
    python benchmarks/kernels.py --ops cross_entropy --vocab 128256 --impls torch kiln liger
    python benchmarks/kernels.py --cpu --reps 5 --vocab 32000     # the recorded CPU reference run

Results go to benchmarks/results/kernels.json as the run "gpu" on CUDA and "cpu-reference" with ``--cpu``
(``--run-name`` overrides); ``python benchmarks/report.py`` renders them into RESULTS.md.

Without CUDA it refuses, unless ``--cpu`` (the reference path at small shapes, timings only: labelled CPU numbers,
not the GPU targets) or ``--smoke`` (a few tiny steps, to check that the harness runs).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import harness
import torch
import torch.nn.functional as F

import kiln.kernels as kk

QUESTION, TITLE = "kernels", "Kernels (issue 7)"
RUN_TITLES = {
    "gpu": "GPU: kiln.kernels against torch eager, torch.compile and Liger-Kernel",
    "cpu-reference": "CPU reference path (for the record, not the GPU targets)",
}
OPS = ("cross_entropy", "fused_linear_cross_entropy", "rms_norm", "layer_norm", "swiglu")
IMPLS = ("torch", "compile", "kiln", "liger")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Step = Callable[[], None]


@dataclass(kw_only=True)
class Shape:
    tokens: int
    hidden: int
    vocab: int
    dtype: torch.dtype
    device: torch.device


@dataclass(kw_only=True)
class Result:
    op: str
    impl: str
    shape: str
    median_ms: float
    tokens_per_s: float
    peak_mib: float | None
    speedup_vs_torch: float | None = None
    memory_vs_torch: float | None = None


def _randn(shape: Shape, *size: int, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*size, device=shape.device)).to(shape.dtype).requires_grad_()


def _target(shape: Shape) -> torch.Tensor:
    target = torch.randint(0, shape.vocab, (shape.tokens,), device=shape.device)  # (N,)
    target[::16] = -100  # some padding, as in a real batch
    return target


def _liger() -> Any:
    import liger_kernel.transformers as liger  # the optional peer; ImportError means "not measured"

    return liger


def _build(op: str, impl: str, shape: Shape) -> tuple[Step, list[torch.Tensor]]:
    """One forward+backward step of `op` by `impl` on fresh inputs, and the tensors whose .grad it fills."""
    n, h, v = shape.tokens, shape.hidden, shape.vocab
    if op == "cross_entropy":
        logits, target = _randn(shape, n, v, scale=2.0), _target(shape)  # (N, V), (N,)
        functions: dict[str, Callable[..., torch.Tensor]] = {"torch": F.cross_entropy, "kiln": kk.cross_entropy}
        if impl == "liger":
            functions["liger"] = _liger().LigerCrossEntropyLoss()
        loss_fn = torch.compile(F.cross_entropy) if impl == "compile" else functions[impl]
        return (lambda: loss_fn(logits, target).backward()), [logits]
    if op == "fused_linear_cross_entropy":
        hidden, weight, target = _randn(shape, n, h), _randn(shape, v, h, scale=h**-0.5), _target(shape)

        def eager(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(F.linear(x, w).float(), t)  # what a Hugging Face causal LM does

        if impl == "liger":
            liger_loss = _liger().LigerFusedLinearCrossEntropyLoss()
            return (lambda: liger_loss(weight, hidden, target).backward()), [hidden, weight]
        loss_fn = {"torch": eager, "compile": torch.compile(eager), "kiln": kk.fused_linear_cross_entropy}[impl]
        return (lambda: loss_fn(hidden, weight, target).backward()), [hidden, weight]
    if op in ("rms_norm", "layer_norm"):
        x = _randn(shape, n, h)  # (N, H)
        if impl == "liger":
            module = _liger().LigerRMSNorm(h) if op == "rms_norm" else _liger().LigerLayerNorm(h)
        elif impl == "kiln":
            module = kk.RMSNorm(h) if op == "rms_norm" else kk.LayerNorm(h)
        else:
            module = torch.nn.RMSNorm(h) if op == "rms_norm" else torch.nn.LayerNorm(h)
            module = torch.compile(module) if impl == "compile" else module
        module = module.to(shape.device, shape.dtype)
        upstream = torch.randn(n, h, device=shape.device, dtype=shape.dtype)  # (N, H)
        return (lambda: module(x).backward(upstream)), [x, *module.parameters()]
    if op == "swiglu":
        intermediate = h * 7 // 2
        gate, up = _randn(shape, n, intermediate), _randn(shape, n, intermediate)  # (N, I)
        upstream = torch.randn(n, intermediate, device=shape.device, dtype=shape.dtype)  # (N, I)

        def plain(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return F.silu(g) * u

        if impl == "liger":
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction

            swiglu_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = LigerSiLUMulFunction.apply
        else:
            swiglu_fn = {"torch": plain, "compile": torch.compile(plain), "kiln": kk.swiglu}[impl]
        return (lambda: swiglu_fn(gate, up).backward(upstream)), [gate, up]
    raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(op: str, impl: str, shape: Shape, *, warmup: int, reps: int) -> Result:
    step, leaves = _build(op, impl, shape)
    for _ in range(warmup):
        step()
    _synchronize(shape.device)
    times = []
    for _ in range(reps):
        for leaf in leaves:
            leaf.grad = None
        _synchronize(shape.device)
        if shape.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - began))
    peak = None
    if shape.device.type == "cuda":
        for leaf in leaves:
            leaf.grad = None
        torch.cuda.synchronize(shape.device)
        torch.cuda.reset_peak_memory_stats(shape.device)
        before = torch.cuda.memory_allocated(shape.device)
        step()
        torch.cuda.synchronize(shape.device)
        peak = (torch.cuda.max_memory_allocated(shape.device) - before) / 2**20
    median = statistics.median(times)
    label = f"N={shape.tokens} H={shape.hidden} V={shape.vocab} {str(shape.dtype).removeprefix('torch.')}"
    return Result(
        op=op, impl=impl, shape=label, median_ms=median, tokens_per_s=shape.tokens / (median / 1000), peak_mib=peak
    )


def _release(device: torch.device) -> None:
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _table(results: list[Result]) -> str:
    lines = [
        "| op | shape | impl | median ms | tokens/s | vs torch | peak MiB | memory vs torch |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        speed = f"{r.speedup_vs_torch:.2f}x" if r.speedup_vs_torch is not None else "-"
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "n/a"
        memory = f"{r.memory_vs_torch:.2f}x" if r.memory_vs_torch is not None else "-"
        timing = f"{r.median_ms:.3f} | {r.tokens_per_s:,.0f} | {speed}"
        lines.append(f"| {r.op} | {r.shape} | {r.impl} | {timing} | {peak} | {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--tokens", type=int, default=8192, help="B*T rows (default 8192)")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="no CUDA: time the reference path at small shapes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for --cpu/--smoke (default 1)")
    harness.add_result_arguments(parser, QUESTION)  # --smoke: a few tiny steps on any device, to test the harness
    args = parser.parse_args(argv)

    if args.smoke:
        args.tokens, args.hidden, args.vocab, args.warmup, args.reps = 64, 32, [256], 1, 2
        args.impls = [impl for impl in args.impls if impl in ("torch", "kiln")]
    if torch.cuda.is_available() and not args.cpu:
        device = torch.device("cuda")
    elif args.cpu or args.smoke:
        device = torch.device("cpu")
        harness.pin_threads(args.threads)  # oversubscribed OpenMP threads spin: pick the count deliberately
        if args.cpu and not args.smoke:
            args.tokens, args.hidden, args.dtype = min(args.tokens, 1024), min(args.hidden, 512), "fp32"
            args.vocab = [min(v, 32000) for v in args.vocab]
            args.impls = [impl for impl in args.impls if impl in ("torch", "kiln")]
    else:
        print(
            "benchmarks/kernels.py measures the Triton kernels and needs a CUDA device; none was found.\n"
            "Run it on a GPU machine, or pass --cpu (reference path vs torch eager at small shapes, labelled CPU "
            "numbers) or --smoke (tiny steps that only check the harness runs).",
            file=sys.stderr,
        )
        return 2

    if args.run_name == "main":
        args.run_name = "gpu" if device.type == "cuda" else "cpu-reference"
    run = harness.new_run(args.run_name, packages=("torch", "triton", "liger-kernel", "kiln"))
    results: list[Result] = []
    for op in args.ops:
        vocabs = args.vocab if "cross_entropy" in op else args.vocab[:1]
        for vocab in vocabs:
            shape = Shape(tokens=args.tokens, hidden=args.hidden, vocab=vocab, dtype=DTYPES[args.dtype], device=device)
            baseline: Result | None = None
            for impl in args.impls:
                try:
                    result = _measure(op, impl, shape, warmup=args.warmup, reps=args.reps)
                except ImportError as error:
                    print(f"skip {op}/{impl}: {error}", file=sys.stderr)
                    continue
                except torch.cuda.OutOfMemoryError:
                    print(f"skip {op}/{impl}: out of memory at {shape}", file=sys.stderr)
                    _release(device)
                    continue
                if impl == "torch":
                    baseline = result
                if baseline is not None:
                    result.speedup_vs_torch = baseline.median_ms / result.median_ms
                    if baseline.peak_mib and result.peak_mib is not None:
                        result.memory_vs_torch = result.peak_mib / baseline.peak_mib
                results.append(result)
                print(_table([result]).splitlines()[-1], file=sys.stderr)
                _release(device)

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU {platform.machine()}, {torch.get_num_threads()} torch thread(s)"
    header = (
        f"device: {device_name}; torch {torch.__version__}; kiln.kernels backend {kk.backend(device)}; "
        f"{args.reps} reps after {args.warmup} warm-up, median"
    )
    print(header)
    print(_table(results))
    lines = _table(results).splitlines()
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    run.update(
        title=RUN_TITLES.get(args.run_name),
        machine=f"{device_name}; {run['machine']}",
        description=header,
        tables=[harness.table(columns, rows, align="llrrrrrr")],
        summary={"results": [asdict(r) for r in results]},
    )
    harness.write_result(
        harness.result_path(args, QUESTION), question=QUESTION, title=TITLE, run=harness.finish_run(run)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
