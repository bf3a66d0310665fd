"""Distributed scaling: training throughput on 1 vs 2 ranks for kiln and Lightning DDP on CPU (issue 6).

The peers' two small benchmark models (``../shared/peers/train/torch_models.py``), on scikit-learn's digits as the
peers' harness prepares them, repeated so an epoch holds many steps:

    mlp:256     MLP 64-256-256-10, batch 256 per rank, digits x64 (90112 rows; 352 global batches an epoch)
    mlp:4096    the same MLP, batch 4096 per rank, digits x128 (180224 rows; 44 global batches an epoch)
    cnn:256     LeNet-5 on 1x32x32, batch 256 per rank, digits x8 (11264 rows; 44 global batches an epoch)

Every (case, framework, ranks) runs in fresh processes with one torch thread per rank (OMP_NUM_THREADS=1) on this
2-core machine (``python distributed_scaling.py child ...``, the second half of this file, runs one):

    kiln        Model.fit on an ArrayDataset; 1 rank: plain ``python``; 2 ranks: ``torchrun --standalone
                --nproc-per-node 2``, strategy="ddp" (gloo)
    lightning   Trainer(strategy="ddp", accelerator="cpu", devices=2) against devices=1 (strategy "auto"), progress bar,
                logger, checkpointing and model summary off, over a shuffled DataLoader(TensorDataset)
    torch       the floor: a hand-written loop, DistributedDataParallel under torchrun on 2 ranks
    probe       not training: one step's compute with no gradient sync (1 rank, and 2 ranks computing at once) and one
                gloo all_reduce of a gradient-sized buffer. A case is compute-bound when that all_reduce costs at
                most 10% of a step's compute: then 2 ranks can reach 2c/(c + a) >= 1.8x even if none of the
                communication a overlaps the compute c (DDP overlaps only across buckets, and these models fit one)

Throughput is global training samples per second of wall time on rank 0 over the timed epochs (epoch 0 is warm-up:
the time from the end of epoch 0 to the end of the last epoch). Per-rank batch and data are the same for every
framework; an epoch is the same global samples on 1 and 2 ranks. Scaling = samples/s(2 ranks) / samples/s(1 rank),
taken within each rep (the two runs minutes apart at most), then the median over reps; kiln vs Lightning likewise.
Reps are interleaved: each rep shuffles the case order, and the runs of a case, with a fixed seed.

The machine is shared. The script waits (bounded) for the 1-minute load average to fall below ``--max-load`` before
starting and records ``uptime`` before and after. It measures what other processes use directly, as all cores' busy
time in /proc/stat minus its own runs' CPU time: each run starts once others keep at most ``--max-busy`` cores busy,
and a run during which they took more than ``--max-share`` of the machine is run again (``--retries`` times at most).
Waiting and discarded runs share one budget (``--max-wait``); after it is spent, runs are kept as they come, and the
summary says how many kept runs were undisturbed and how much CPU others took during them.

Setup (once; every framework runs with the same interpreter and torch)::

    python3.11 -m venv benchmarks/.venv-peers
    benchmarks/.venv-peers/bin/pip install torch==2.13.0 lightning scikit-learn
    benchmarks/.venv-peers/bin/pip install -e .

Without that venv the script says so, runs with this interpreter and leaves Lightning out.

Run (from the repository root)::

    python benchmarks/distributed_scaling.py                     # the recorded run: 3 reps, ~10 min on 2 idle cores
    python benchmarks/distributed_scaling.py --reps 1 --cases cnn:256 --frameworks kiln lightning
    python benchmarks/distributed_scaling.py --smoke             # tiny epochs, kiln and torch, no waiting (~1 min)
    python benchmarks/distributed_scaling.py --summarize benchmarks/results/raw/distributed_scaling/<run>
    python benchmarks/distributed_scaling.py --frameworks kiln kiln-shm --no-probe         # the previews
    python benchmarks/distributed_scaling.py --frameworks torch torch-bucket --no-probe --cases cnn:256 mlp:4096

Previews (run only when named) try changes proposed for src/kiln from outside it: ``kiln-shm`` / ``torch-shm`` replace
DDP's gloo all_reduce by a shared-memory comm hook (``SharedMemoryAllReduce`` below); ``torch-bucket`` uses 50 KiB DDP
buckets so communication can overlap the backward. The summary adds each preview's ratio to its base, run for run.

The tables go to benchmarks/results/distributed_scaling.json; raw results (results.jsonl) and per-run logs to
benchmarks/results/raw/distributed_scaling/<timestamp>/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness

QUESTION, TITLE = "distributed_scaling", "Distributed scaling (issue 6)"
# case -> (model, batch per rank, times the 1408 digits rows are repeated, epochs including the warm-up one).
# Rows are a multiple of 2 x batch, so 1 and 2 ranks train on every row of every epoch (no remainder dropped).
CASES: dict[str, tuple[str, int, int, int]] = {
    "mlp:256": ("mlp", 256, 64, 6),
    "mlp:4096": ("mlp", 4096, 128, 4),
    "cnn:256": ("cnn", 256, 8, 4),
}
SMOKE_CASE = ("mlp", 256, 4, 2)  # 22 steps an epoch on 1 rank: seconds per run
FRAMEWORKS = ("kiln", "lightning", "torch")
# Previews, run only when named in --frameworks: changes proposed for src/kiln, tried from outside it.
# torch-bucket: DDP with 50 KiB buckets (these models' gradients otherwise fill one bucket, all-reduced after the whole
# backward), so the all_reduce of the last layers' gradients overlaps the backward of the first layers.
# torch-shm / kiln-shm: DDP's gradient all_reduce through shared memory (SharedMemoryAllReduce) instead of gloo.
PREVIEWS = {
    "torch-bucket": ("torch", ["--bucket-cap-mb", "0.05"]),
    "torch-shm": ("torch", ["--all-reduce", "shm"]),
    "kiln-shm": ("kiln", ["--all-reduce", "shm"]),
}
RANKS = (1, 2)
TARGET_SCALING = 1.7
COMPUTE_BOUND_COMM_SHARE = 0.10  # all_reduce time / step compute time at or below which a case is compute-bound


# ---------------------------------------------------------------------------------------------------- running
def command_for(args: argparse.Namespace, case: str, framework: str, ranks: int) -> list[str]:
    model, batch, repeat, epochs = SMOKE_CASE if args.smoke else CASES[case]
    runner, extra = PREVIEWS.get(framework, (framework, []))
    script = [__file__, "child", "--framework", runner, "--model", model, "--batch-size", str(batch), "--ranks",
              str(ranks), "--repeat", str(repeat), "--epochs", str(epochs), "--data", str(args.data), "--peers",
              str(args.peers), "--work", str(args.work), *extra]  # fmt: skip
    if ranks > 1 and framework != "lightning":  # Lightning starts its own ranks (subprocess launcher)
        return [args.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *script]
    return [args.python, *script]


def run_one(args: argparse.Namespace, case: str, framework: str, ranks: int, rep: int, attempt: int) -> dict[str, Any]:
    env = harness.thread_env(1, PYTHONUNBUFFERED="1", KILN_PEERS_DIR=str(args.peers))
    name = f"{case.replace(':', '_')}_{framework}_{ranks}r_rep{rep}" + (f"_attempt{attempt}" if attempt else "")
    log_path = args.run_dir / "logs" / f"{name}.log"
    load_before = harness.load_average_1min()
    busy, own, start = harness.busy_cpu_seconds(), harness.children_cpu_seconds(), time.perf_counter()
    result = harness.run_for_result(command_for(args, case, framework, ranks), env=env, cwd=harness.REPO,
                                    log_path=log_path, timeout=args.timeout)  # fmt: skip
    orphans = harness.reap_descendants()
    wall = time.perf_counter() - start
    others = (harness.busy_cpu_seconds() - busy) - (harness.children_cpu_seconds() - own)
    record: dict[str, Any] = {"case": case, "rep": rep, "run_wall_s": wall, "load_before": load_before,
                              "orphans_reaped": orphans,
                              "others_cpu_share": max(0.0, others) / (wall * (os.cpu_count() or 1))}  # fmt: skip
    record.update(result, framework=framework, ranks=ranks)  # a preview's name, not its runner
    return record


def plan(args: argparse.Namespace, rep: int) -> list[tuple[str, str, int]]:
    """One rep's runs: cases in a shuffled order, each case's runs (and probes) shuffled, adjacent in time."""
    runs: list[tuple[str, str, int]] = []
    for case in harness.shuffled(args.cases, 1000 + rep):
        group = [(case, fw, ranks) for fw in args.frameworks for ranks in RANKS]
        if args.probe:
            group += [(case, "probe", ranks) for ranks in RANKS]
        runs += harness.shuffled(group, 2000 + rep)
    return runs


def run_all(args: argparse.Namespace) -> Path:
    args.run_dir = harness.raw_dir(args, QUESTION) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.work = args.run_dir / "work"
    (args.run_dir / "logs").mkdir(parents=True)
    args.work.mkdir()
    harness.ensure_peer_data(args.python, args.peers, args.data)
    harness.become_subreaper()
    started = time.monotonic()
    waited = harness.wait_for_quiet(args.max_load, args.max_wait)
    meta: dict[str, Any] = {"uptime_before": waited[-1], "uptime_waits": waited[:-1], "max_load": args.max_load,
                            "cores": os.cpu_count()}  # fmt: skip
    print(f"run {args.run_dir}\n{meta['uptime_before']}", flush=True)
    (args.run_dir / "meta.json").write_text(json.dumps(meta, indent=1))  # rewritten at the end; kept if interrupted
    gate = harness.QuietGate(max_busy=args.max_busy, max_share=args.max_share, retries=args.retries,
                     budget=max(0.0, args.max_wait - (time.monotonic() - started)))  # fmt: skip
    with open(args.run_dir / "results.jsonl", "w") as out:
        for rep in range(args.reps):
            for case, framework, ranks in plan(args, rep):
                for attempt in range(args.retries + 1):
                    others = gate.wait()
                    record = run_one(args, case, framework, ranks, rep, attempt)
                    record.update(attempt=attempt, others_cores_before=others)
                    record["kept"] = gate.keep(record, attempt)
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    rate = record.get("samples_per_s") or record.get("step_ms")
                    print(
                        f"rep {rep} {case:9s} {framework:9s} {ranks}r  "
                        f"{rate if rate is None else round(rate, 1)}  load {record['load_before']:.2f}  others "
                        f"{others:.2f} cores before, {record['others_cpu_share']:.0%} during"
                        f"{'' if record['kept'] else '  (disturbed: run again)'}  {record.get('error', '')}",
                        flush=True,
                    )
                    if record["kept"]:
                        break
    meta["uptime_after"] = harness.uptime()
    meta["gate"] = {"max_busy": args.max_busy, "max_share": args.max_share, "waited_s": gate.waited_s,
                    "discarded_runs": gate.discarded, "discarded_s": gate.discarded_s}  # fmt: skip
    (args.run_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    print(meta["uptime_after"], flush=True)
    return args.run_dir


# ---------------------------------------------------------------------------------------------------- summary
def paired_ratio(records: list[dict[str, Any]], top: tuple[str, int], bottom: tuple[str, int]) -> list[float]:
    """Per-rep ratios samples/s(top) / samples/s(bottom) of one case; (framework, ranks) name each side."""
    by_rep: dict[int, dict[tuple[str, int], float]] = {}
    for r in records:
        if "samples_per_s" in r:
            by_rep.setdefault(r["rep"], {})[(r["framework"], r["ranks"])] = r["samples_per_s"]
    return [runs[top] / runs[bottom] for runs in by_rep.values() if top in runs and bottom in runs]


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return harness.fmt(value, spec, suffix, missing="—")


def quiet_note(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    gate = meta.get("gate")
    if not gate or not records:
        return ""
    cores = meta["cores"] or 1
    during = sorted(r["others_cpu_share"] * cores for r in records)
    quiet = sum(1 for r in records if r["others_cpu_share"] <= gate["max_share"])
    return (
        f"Each run started once other processes kept ≤ {gate['max_busy']} cores busy (waited {gate['waited_s']:.0f} s"
        f" in all) and was run again when they took > {gate['max_share']:.0%} of the machine during it "
        f"({gate['discarded_runs']} runs, {gate['discarded_s']:.0f} s, discarded). Kept runs: {quiet} of "
        f"{len(records)} undisturbed; other processes' CPU during kept runs: median {statistics.median(during):.2f} "
        f"cores, max {max(during):.2f}."
    )


def summarize(run_dir: Path) -> dict[str, Any]:
    """The conditions, tables and notes of a finished run, from its raw results."""
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("kept", True)]  # disturbed runs that were run again are left out
    meta = json.loads((run_dir / "meta.json").read_text())
    cases = [c for c in CASES if any(r["case"] == c for r in records)]
    frameworks = [f for f in (*FRAMEWORKS, *PREVIEWS) if any(r["framework"] == f for r in records)]
    median = harness.median
    rows, scaling_of = [], {}
    for case in cases:
        for fw in frameworks:
            mine = [r for r in records if r["case"] == case and r["framework"] == fw]
            rates = {
                n: median(r["samples_per_s"] for r in mine if r["ranks"] == n and "samples_per_s" in r) for n in RANKS
            }
            scaling_of[(case, fw)] = median(paired_ratio([r for r in records if r["case"] == case], (fw, 2), (fw, 1)))
            busy = median(r["rank0_cpu_over_wall"] for r in mine if r["ranks"] == 2 and "samples_per_s" in r)
            others = median(r["others_cpu_share"] for r in mine)
            rows.append([case, fw, fmt(rates[1]), fmt(rates[2]), fmt(scaling_of[(case, fw)], ".2f", "×"),
                         fmt(None if busy is None else 100 * busy, ".0f", "%"),
                         fmt(None if others is None else 100 * others, ".0f", "%")])  # fmt: skip
    columns = ["case", "framework", "1 rank samples/s", "2 ranks samples/s", "scaling 2/1", "rank 0 CPU/wall, 2 ranks",
               "others' CPU during runs"]  # fmt: skip
    tables = [harness.table(columns, rows, align="llrrrrr")]
    versus = {}
    rows = []
    for case in cases:
        mine = [r for r in records if r["case"] == case]
        cells = [median(paired_ratio(mine, ("kiln", n), (peer, n))) for peer, n in (("lightning", 2), ("lightning", 1),
                 ("torch", 2))]  # fmt: skip
        versus[case] = cells[0]
        rows.append([case, *(fmt(c, ".2f", "×") for c in cells)])
    if any(c != "—" for row in rows for c in row[1:]):
        columns = ["case", "kiln / Lightning, 2 ranks", "kiln / Lightning, 1 rank", "kiln / torch DDP loop, 2 ranks"]
        tables.append(harness.table(columns, rows, align="lrrr"))
    for preview, (base, _) in PREVIEWS.items():
        if preview in frameworks:
            rows = [[case, *(fmt(median(paired_ratio([r for r in records if r["case"] == case], (preview, n),
                     (base, n))), ".2f", "×") for n in (2, 1))] for case in cases]  # fmt: skip
            columns = ["case", f"{preview} / {base}, 2 ranks", f"{preview} / {base}, 1 rank"]
            tables.append(harness.table(columns, rows, align="lrr"))
    probes = [r for r in records if r["framework"] == "probe" and "step_ms" in r]
    compute_bound: dict[str, bool] = {}
    if probes:
        rows = []
        for case in cases:
            one = median(r["step_ms"] for r in probes if r["case"] == case and r["ranks"] == 1)
            two = median(r["step_ms"] for r in probes if r["case"] == case and r["ranks"] == 2)
            reduce_ms = median(r["all_reduce_ms"] for r in probes if r["case"] == case and r["ranks"] == 2)
            share = None if two is None or reduce_ms is None else reduce_ms / two
            bound = None if one is None or two is None or reduce_ms is None else 2 * one / (two + reduce_ms)
            if share is not None:
                compute_bound[case] = share <= COMPUTE_BOUND_COMM_SHARE
            rows.append([case, fmt(one, ".2f", " ms"), fmt(two, ".2f", " ms"), fmt(reduce_ms, ".2f", " ms"),
                         fmt(None if share is None else 100 * share, ".1f", "%"), fmt(bound, ".2f", "×"),
                         "—" if case not in compute_bound else ("yes" if compute_bound[case] else "no")])  # fmt: skip
        caption = ("Probe (no training loop): compute c of one step with no gradient sync, all_reduce a of one "
                   f"gradient-sized buffer; compute-bound when a ≤ {COMPUTE_BOUND_COMM_SHARE:.0%} of c. "
                   "Bound: 2·c(1 rank) / (c(2 ranks) + a), the scaling if no communication overlaps "
                   "compute.")  # fmt: skip
        columns = ["case", "c, 1 rank", "c, each of 2 ranks at once", "a, gloo all_reduce", "a / c", "bound",
                   "compute-bound"]  # fmt: skip
        tables.append(harness.table(columns, rows, align="lrrrrrl", caption=caption))
    notes = []
    per_rep = [f"{case} " + ", ".join(f"{x:.2f}×" for x in paired_ratio([r for r in records if r["case"] == case],
               ("kiln", 2), ("kiln", 1))) for case in cases]  # fmt: skip
    notes.append("Per-rep kiln scaling: " + "; ".join(per_rep) + ".")
    verdicts = []
    for case in cases:
        scaling, ratio = scaling_of.get((case, "kiln")), versus.get(case)
        if compute_bound.get(case) and scaling is not None:
            met = "met" if scaling >= TARGET_SCALING else "missed"
            verdicts.append(f"{case} kiln scaling {scaling:.2f}× (≥ {TARGET_SCALING}× where compute-bound: {met})")
        if ratio is not None:
            verdicts.append(f"{case} kiln / Lightning DDP {ratio:.2f}× ({'met' if ratio > 1 else 'missed'})")
    if verdicts:
        notes.append("Targets: " + "; ".join(verdicts) + ".")
    errors = [r for r in records if "error" in r]
    if errors:
        notes.append("Failed runs: " + "; ".join(f"{r['case']} {r['framework']} {r['ranks']}r rep {r['rep']}: "
                                                  f"{r['error']}" for r in errors))  # fmt: skip
    reps = len({r["rep"] for r in records})
    conditions = [f"load before: `{meta['uptime_before']}`; after: `{meta.get('uptime_after', '(interrupted)')}`"]
    if meta["uptime_waits"]:
        conditions.append(f"waited {len(meta['uptime_waits'])} polls for the 1-minute load to fall below "
                          f"{meta['max_load']}")  # fmt: skip
    conditions.append(quiet_note(meta, records))
    return {
        "conditions": [c for c in conditions if c],
        "description": f"Training samples/s after the warm-up epoch, medians of {reps} interleaved reps; scaling is "
        "taken within each rep, then the median; one torch thread per rank, gloo:",
        "tables": tables,
        "notes": "\n\n".join(notes),
    }


# ---------------------------------------------------------------------------------------------------- child side
# ``python distributed_scaling.py child ...`` runs one (framework, model, ranks) in fresh processes; rank 0 prints
# one RESULT line. kiln and the hand-written loop read torchrun's environment; Lightning launches its own rank 1.
# torch is imported inside these functions: the driver above never imports it.
def load_tensors(args: argparse.Namespace) -> tuple[Any, Any]:
    """The peers' digits training rows for ``args.model``, repeated ``args.repeat`` times (float32, int64)."""
    import torch

    os.environ["BENCH_DATA_DIR"] = str(args.data)
    sys.path.insert(0, str(args.peers))
    import common  # the peers' harness: load_data(model) reads data/bench_data.npz

    x, y, _, _ = common.load_data(args.model)
    x, y = torch.from_numpy(x), torch.from_numpy(y.astype("int64"))
    return x.repeat(args.repeat, *([1] * (x.dim() - 1))).contiguous(), y.repeat(args.repeat).contiguous()


def build(model: str) -> Any:
    import torch
    import torch_models  # the peers' MLP 64-256-256-10 and LeNet-5

    torch.manual_seed(0)
    return torch_models.build(model)


class EpochTimer:
    """Stamps wall and process CPU time at the end of every epoch's last step (call ``tick`` after each step).

    samples/s = global samples over the timed epochs ÷ the time from the end of epoch 0 (warm-up) to the end of the
    last epoch.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch, self.steps = steps_per_epoch, 0
        self.stamps: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.stamps.append(harness.clocks())

    def result(self, samples_per_epoch: int) -> dict[str, Any]:
        if len(self.stamps) < 2:
            raise RuntimeError(f"only {self.steps} steps ran ({len(self.stamps)} epochs): nothing timed after warm-up")
        wall = self.stamps[-1][0] - self.stamps[0][0]
        cpu = self.stamps[-1][1] - self.stamps[0][1]
        epochs = len(self.stamps) - 1
        per_epoch = [samples_per_epoch / (b[0] - a[0]) for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return {"steps": self.steps, "timed_epochs": epochs, "timed_s": wall,
                "samples_per_s": samples_per_epoch * epochs / wall,
                "samples_per_s_epoch_median": statistics.median(per_epoch),
                "rank0_cpu_over_wall": cpu / wall}  # fmt: skip


def run_kiln(args: argparse.Namespace, x: Any, y: Any) -> dict[str, Any] | None:
    """kiln.Model(...).fit(ArrayDataset) with strategy "ddp" on 2 ranks, "auto" on 1, verbose=0, else defaults."""
    import kiln
    from kiln.data import ArrayDataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.all_reduce == "shm":  # preview: kiln's DDP wrapper with the shared-memory comm hook added
        import kiln.train.model

        wrap = kiln.train.model.wrap

        def wrap_with_hook(module: Any, strategy: str, device: Any) -> Any:
            wrapped = wrap(module, strategy, device)
            use_shared_memory_all_reduce(wrapped)
            return wrapped

        kiln.train.model.wrap = wrap_with_hook
    timer = EpochTimer(len(x) // (args.batch_size * world))

    class Timing(kiln.Callback):
        def on_train_batch_end(self, model: Any, step: int, loss: Any) -> None:
            timer.tick()

    model = kiln.Model(build(args.model), loss="cross_entropy", optimizer="adam", lr=1e-3)
    model.fit(ArrayDataset(x, y), epochs=args.epochs, batch_size=args.batch_size, seed=0, drop_last=True,
              strategy="ddp" if world > 1 else "auto", callbacks=[Timing()], verbose=0)  # fmt: skip
    assert model.fit_config["world_size"] == world, model.fit_config
    if not kiln.distributed.is_rank_zero():
        return None
    return {"world": world, **timer.result(timer.steps_per_epoch * args.batch_size * world)}


def run_lightning(args: argparse.Namespace, x: Any, y: Any) -> dict[str, Any] | None:
    """A LightningModule (cross-entropy, self.log of the loss, Adam 1e-3) over a shuffled DataLoader; progress bar,
    logger, checkpointing and summary off; strategy "ddp" on 2 devices (its subprocess launcher), "auto" on 1."""
    import warnings

    import lightning as L
    import torch
    import torch.nn.functional as F

    warnings.filterwarnings("ignore")  # num_workers=0 and similar advice, on every rank
    world = args.ranks
    timer = EpochTimer(len(x) // (args.batch_size * world))

    class LitModel(L.LightningModule):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            inputs, targets = batch
            loss = F.cross_entropy(self.net(inputs), targets)
            self.log("train_loss", loss)  # what typical user code does (the peers' "lean" mode keeps it)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Timing(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            timer.tick()

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=world,
                        strategy="ddp" if world > 1 else "auto", enable_progress_bar=False, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[Timing()],
                        default_root_dir=str(args.work))  # fmt: skip
    trainer.fit(LitModel(build(args.model)), loader)
    assert trainer.world_size == world, trainer.world_size
    if trainer.global_rank != 0:
        return None
    return {"world": world, **timer.result(timer.steps_per_epoch * args.batch_size * world)}


def init_torch_distributed() -> tuple[int, int]:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    return world, dist.get_rank() if world > 1 else 0


def run_torch(args: argparse.Namespace, x: Any, y: Any) -> dict[str, Any] | None:
    """The floor: a hand-written loop, rank-strided whole-batch slicing, DistributedDataParallel on 2 ranks."""
    import torch
    from torch import nn

    world, rank = init_torch_distributed()
    net = build(args.model)
    options = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
    module = nn.parallel.DistributedDataParallel(net, **options) if world > 1 else net
    if world > 1 and args.all_reduce == "shm":
        use_shared_memory_all_reduce(module)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = args.batch_size
    steps = len(x) // (batch * world)
    timer = EpochTimer(steps)
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(steps):
            g = i * world + rank  # rank-strided global batches, like kiln's loader
            rows = order[g * batch : (g + 1) * batch]
            nn.functional.cross_entropy(module(x[rows]), y[rows]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.tick()
    result = {"world": world, **timer.result(steps * batch * world)} if rank == 0 else None
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


def run_probe(args: argparse.Namespace, x: Any, y: Any) -> dict[str, Any] | None:
    """Compute time of one step with no gradient sync (both ranks computing at once on 2 ranks), and one gloo
    all_reduce of a gradient-sized buffer: tells compute-bound cases from communication-bound ones."""
    import torch
    import torch.distributed as dist
    from torch import nn

    world, rank = init_torch_distributed()
    net = build(args.model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    inputs, targets = x[: args.batch_size], y[: args.batch_size]

    def step() -> None:
        nn.functional.cross_entropy(net(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    estimate, _ = harness.timed(lambda: [step() for _ in range(3)])
    repeats = torch.tensor([max(10, int(2.0 / max(estimate / 3, 1e-4)))])  # about 2 s of steps
    if world > 1:
        dist.broadcast(repeats, src=0)  # every rank computes for the same number of steps
    seconds, _ = harness.timed(lambda: [step() for _ in range(int(repeats))])
    result: dict[str, Any] = {"world": world, "step_ms": seconds / int(repeats) * 1e3,
                              "params": sum(p.numel() for p in net.parameters())}  # fmt: skip
    if world > 1:
        buffer = torch.randn(result["params"])
        for _ in range(20):
            dist.all_reduce(buffer)
        dist.barrier()
        seconds, _ = harness.timed(lambda: [dist.all_reduce(buffer) for _ in range(200)])
        result["all_reduce_ms"] = seconds / 200 * 1e3
        import kiln.distributed  # not a compared framework: take kiln's guard against gloo's exit race

        kiln.distributed.teardown()
    return result if rank == 0 else None


class SharedMemoryAllReduce:
    """Preview (kiln-shm, torch-shm): a DDP comm hook that averages gradient buckets through /dev/shm.

    A change proposed for kiln's DDP wrapper, tried from outside src/: when every rank of a CPU job is on one
    machine, each rank copies its bucket into its slot of a file in /dev/shm, publishes a sequence number, spins
    until every rank has published the same number, and sums the slots. Two slot sets used in turn make this safe
    without a second barrier: a rank can only be one bucket ahead of the slowest, and that rank has finished reading
    the set about to be overwritten before it publishes. On this 2-core VM a gloo all_reduce of these models'
    gradients (250-340 KB) costs 1-2 ms (latency: TCP round trips between threads that sleep and are woken); this
    does the same reduction in tens of microseconds. Spinning is right only when every rank has its own core.
    """

    def __init__(self, numel: int) -> None:
        import numpy as np
        import torch
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run") + "_" + os.environ.get("MASTER_PORT", "0")
        path = f"/dev/shm/kiln_preview_allreduce_{run}"
        self.capacity = numel
        shape = (2 * self.world * numel + 16 * self.world,)  # two slot sets, then one 64-byte flag line per rank
        if self.rank == 0:
            self.memory = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
        dist.barrier()
        if self.rank != 0:
            self.memory = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
        dist.barrier()
        if self.rank == 0:
            os.unlink(path)  # the mappings stay valid; nothing is left behind if a rank dies
        self.slots = torch.from_numpy(self.memory[: 2 * self.world * numel]).view(
            2, self.world, numel
        )  # (set, rank, N)
        flags = self.memory[2 * self.world * numel :].view(np.int64)
        self.flags = flags.reshape(self.world, 8)[:, 0]  # one int64 per 64-byte line: no false sharing
        self.sequence = 0

    def reduce(self, bucket: Any) -> Any:
        import torch

        buffer = bucket.buffer()
        n = buffer.numel()
        if n > self.capacity:
            raise RuntimeError(f"bucket of {n} elements exceeds the shared buffer ({self.capacity})")
        self.sequence += 1
        slots = self.slots[self.sequence % 2]  # (world, numel)
        slots[self.rank, :n].copy_(buffer)
        self.flags[self.rank] = self.sequence  # after the copy: x86 keeps stores in order
        flags, sequence = self.flags, self.sequence
        while int(flags.min()) < sequence:
            pass
        torch.sum(slots[:, :n], dim=0, out=buffer)
        buffer.div_(self.world)
        future = torch.futures.Future()
        future.set_result(buffer)
        return future


def _shared_memory_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP refuses string annotations on a hook
    return state.reduce(bucket)


def use_shared_memory_all_reduce(module: Any) -> None:
    """Register the shared-memory all_reduce on a DDP module (all its ranks on this machine)."""
    numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
    module.register_comm_hook(state=SharedMemoryAllReduce(numel), hook=_shared_memory_hook)


RUNNERS = {"kiln": run_kiln, "lightning": run_lightning, "torch": run_torch, "probe": run_probe}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="distributed_scaling.py child")
    parser.add_argument("--framework", choices=list(RUNNERS), required=True)
    parser.add_argument("--model", choices=["mlp", "cnn"], required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="per rank")
    parser.add_argument("--ranks", type=int, default=1, help="Lightning's devices (kiln/torch read torchrun's env)")
    parser.add_argument("--epochs", type=int, default=4, help="epoch 0 is warm-up, the rest are timed")
    parser.add_argument("--repeat", type=int, default=8, help="times the 1408 digits training rows are repeated")
    parser.add_argument("--data", type=Path, required=True, help="directory holding the peers' bench_data.npz")
    parser.add_argument("--peers", type=Path, default=harness.peers_dir("train"))
    parser.add_argument("--work", type=Path, default=Path("."), help="Lightning's default_root_dir")
    parser.add_argument("--all-reduce", choices=["gloo", "shm"], default="gloo", help="shm: the preview above")
    parser.add_argument("--bucket-cap-mb", type=float, help="torch only: DDP bucket size (default: DDP's 25 MiB)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = load_tensors(args)
    result = RUNNERS[args.framework](args, x, y)
    if result is not None:
        result.update(framework=args.framework, model=args.model, batch_size=args.batch_size,
                      threads=torch.get_num_threads(), rows=len(x))  # fmt: skip
        harness.print_result(result)


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--frameworks", nargs="+", choices=[*FRAMEWORKS, *PREVIEWS], default=list(FRAMEWORKS))
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the compute/all_reduce probe")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load to fall below this")
    parser.add_argument("--max-busy", type=float, default=0.2, help="others' busy cores allowed before a run")
    parser.add_argument("--max-share", type=float, default=0.05, help="share of the machine others may take in a run")
    parser.add_argument("--retries", type=int, default=2, help="times a disturbed run is run again at most")
    parser.add_argument("--max-wait", type=float, default=900.0, help="seconds of waiting and discarded runs, in all")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--python", help="interpreter for every run (default: benchmarks/.venv-peers/bin/python)")
    parser.add_argument("--peers", type=Path, default=harness.peers_dir("train"))
    parser.add_argument("--summarize", type=Path, metavar="RUN_DIR", help="only re-print the tables of a finished run")
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.smoke:  # one tiny case, no waiting for a quiet machine (it checks that the script runs, not the numbers)
        args.reps, args.cases, args.retries, args.max_wait = 1, ["mlp:256"], 1, 120.0
        args.max_load, args.max_busy, args.max_share = float("inf"), float("inf"), 1.0  # only a failed run is redone
        args.frameworks = [f for f in args.frameworks if f in FRAMEWORKS]
    if args.summarize:
        summary = summarize(args.summarize)
        for spec in summary["tables"]:
            print(f"\n{spec.get('caption', '')}\n\n{harness.markdown_table(spec)}")
        print("\n" + summary["notes"])
        return
    if args.python is None:
        args.python = harness.side_python(".venv-peers", "Lightning's DDP runs")
        if args.python is None:
            args.python = sys.executable
            args.frameworks = [f for f in args.frameworks if f != "lightning"]
    args.data = harness.raw_dir(args, QUESTION) / "data"
    record = harness.new_run(args.run_name, python=args.python, packages=("torch", "lightning", "kiln"))
    summary = summarize(run_all(args))
    record["conditions"] += summary.pop("conditions")
    if args.smoke:
        record["conditions"].append(
            f"--smoke: the case mlp:256 with {SMOKE_CASE[2]}x the digits, {SMOKE_CASE[3]} epochs"
        )
    record.update(summary)
    for spec in record["tables"]:
        print(f"\n{spec.get('caption', '')}\n\n{harness.markdown_table(spec)}")
    print("\n" + record["notes"])
    path = harness.result_path(args, QUESTION)
    harness.write_result(path, question=QUESTION, title=TITLE, run=harness.finish_run(record))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
    else:
        main()
