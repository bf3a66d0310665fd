"""Distributed scaling: training throughput on 1 vs 2 ranks for kiln and Lightning DDP on CPU (issue 6).

The peers' two small benchmark models (``../shared/peers/train/torch_models.py``), on scikit-learn's digits as the
peers' harness prepares them, repeated so an epoch holds many steps:

    mlp:256     MLP 64-256-256-10, batch 256 per rank, digits x64 (90112 rows; 352 global batches an epoch)
    mlp:4096    the same MLP, batch 4096 per rank, digits x128 (180224 rows; 44 global batches an epoch)
    cnn:256     LeNet-5 on 1x32x32, batch 256 per rank, digits x8 (11264 rows; 44 global batches an epoch)

Every (case, framework, ranks) runs in fresh processes with one torch thread per rank (OMP_NUM_THREADS=1) on this
2-core machine (distributed_scaling_run.py says exactly what each framework runs):

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

Run (from the repository root)::

    python benchmarks/distributed_scaling.py                     # the recorded run: 3 reps, ~10 min on 2 idle cores
    python benchmarks/distributed_scaling.py --reps 1 --cases cnn:256 --frameworks kiln lightning
    python benchmarks/distributed_scaling.py --summarize benchmarks/results/distributed_scaling/<run>
    python benchmarks/distributed_scaling.py --frameworks kiln kiln-shm --no-probe         # the previews
    python benchmarks/distributed_scaling.py --frameworks torch torch-bucket --no-probe --cases cnn:256 mlp:4096

Previews (run only when named) try changes proposed for src/kiln from outside it: ``kiln-shm`` / ``torch-shm`` replace
DDP's gloo all_reduce by a shared-memory comm hook (distributed_scaling_shm.py); ``torch-bucket`` uses 50 KiB DDP
buckets so communication can overlap the backward. The summary adds each preview's ratio to its base, run for run.

Raw results (results.jsonl), per-run logs and the markdown summary (the text recorded in benchmarks/RESULTS.md) go
to ``--out``/<timestamp>/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RUN_SCRIPT = os.path.join(HERE, "distributed_scaling_run.py")
DEFAULT_PYTHON = os.path.join(HERE, ".venv-peers", "bin", "python")


def default_peers_dir() -> str:
    """$KILN_PEERS_DIR, else ../shared/peers/train next to the repository (this script itself never imports torch)."""
    return os.environ.get("KILN_PEERS_DIR", os.path.join(os.path.dirname(REPO), "shared", "peers", "train"))


# case -> (model, batch per rank, times the 1408 digits rows are repeated, epochs including the warm-up one).
# Rows are a multiple of 2 x batch, so 1 and 2 ranks train on every row of every epoch (no remainder dropped).
CASES: dict[str, tuple[str, int, int, int]] = {
    "mlp:256": ("mlp", 256, 64, 6),
    "mlp:4096": ("mlp", 4096, 128, 4),
    "cnn:256": ("cnn", 256, 8, 4),
}
FRAMEWORKS = ("kiln", "lightning", "torch")
# Previews, run only when named in --frameworks: changes proposed for src/kiln, tried from outside it.
# torch-bucket: DDP with 50 KiB buckets (these models' gradients otherwise fill one bucket, all-reduced after the whole
# backward), so the all_reduce of the last layers' gradients overlaps the backward of the first layers.
# torch-shm / kiln-shm: DDP's gradient all_reduce through shared memory (distributed_scaling_shm.py) instead of gloo.
PREVIEWS = {
    "torch-bucket": ("torch", ["--bucket-cap-mb", "0.05"]),
    "torch-shm": ("torch", ["--all-reduce", "shm"]),
    "kiln-shm": ("kiln", ["--all-reduce", "shm"]),
}
RANKS = (1, 2)
TARGET_SCALING = 1.7
COMPUTE_BOUND_COMM_SHARE = 0.10  # all_reduce time / step compute time at or below which a case is compute-bound
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------- machine load
def load_average() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def busy_cpu_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait in /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants: torchrun's and Lightning's ranks too
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> None:
    """Adopt orphaned descendants (Lightning's launcher does not wait for its rank-1 process), so they can be reaped
    and their CPU time counted as this script's own, not as other processes'."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_descendants(timeout: float = 60.0) -> int:
    """Wait for every adopted descendant to exit (none outlives its run into the next); returns how many there were."""
    reaped, deadline = 0, time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
        elif time.monotonic() > deadline:
            raise TimeoutError(f"descendants of a finished run still alive after {timeout:.0f} s")
        else:
            time.sleep(0.05)


def wait_for_quiet(max_load: float, max_wait: float, poll: float = 30.0) -> list[str]:
    """Poll ``uptime`` until the 1-minute load average is below ``max_load`` or ``max_wait`` seconds have passed."""
    seen = [uptime()]
    deadline = time.monotonic() + max_wait
    while load_average() >= max_load and time.monotonic() < deadline:
        print(f"load {load_average():.2f} >= {max_load}: waiting ({seen[-1]})", flush=True)
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        seen.append(uptime())
    return seen


def others_busy_cores(seconds: float = 3.0) -> float:
    """Cores kept busy by other processes over ``seconds`` while this script runs nothing (from /proc/stat)."""
    busy, own = busy_cpu_seconds(), children_cpu_seconds()
    time.sleep(seconds)
    return max(0.0, (busy_cpu_seconds() - busy) - (children_cpu_seconds() - own)) / seconds


class QuietGate:
    """Runs only while the machine is quiet, and redoes runs that other processes disturbed, within one time budget.

    Before each run it waits while other processes keep more than ``max_busy`` cores busy (the load average cannot
    tell: this script's own runs keep it near 1.5 for a minute after they end); a run during which others took more
    than ``max_share`` of the machine is done again (``retries`` times at most). Waiting and discarded runs share
    ``budget`` seconds, so the benchmark stays bounded on a machine that never gets quiet; after that, runs are kept
    as they come and the summary reports how disturbed they were.
    """

    def __init__(self, *, max_busy: float, max_share: float, retries: int, budget: float, poll: float = 5.0) -> None:
        self.max_busy, self.max_share, self.retries, self.poll = max_busy, max_share, retries, poll
        self.deadline = time.monotonic() + budget
        self.waited_s = self.discarded_s = 0.0
        self.discarded = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self) -> float:
        """Wait (within the budget) until others keep at most ``max_busy`` cores busy; returns the last reading."""
        start = time.monotonic()
        busy = others_busy_cores(1.0)
        while busy > self.max_busy and self.left() > 0:
            time.sleep(min(self.poll, max(0.0, self.left())))
            busy = others_busy_cores(1.0)
        self.waited_s += time.monotonic() - start
        return busy

    def keep(self, record: dict[str, Any], attempt: int) -> bool:
        """False when ``record`` should be discarded and run again."""
        disturbed = record["others_cpu_share"] > self.max_share or "error" in record
        if disturbed and attempt < self.retries and self.left() > 0:
            self.discarded += 1
            self.discarded_s += record["run_wall_s"]
            self.deadline -= record["run_wall_s"]
            return False
        return True


# ---------------------------------------------------------------------------------------------------- running
def command_for(args: argparse.Namespace, case: str, framework: str, ranks: int) -> list[str]:
    model, batch, repeat, epochs = CASES[case]
    runner, extra = PREVIEWS.get(framework, (framework, []))
    script = [
        RUN_SCRIPT,
        "--framework",
        runner,
        "--model",
        model,
        "--batch-size",
        str(batch),
        "--ranks",
        str(ranks),
        "--repeat",
        str(repeat),
        "--epochs",
        str(epochs),
        "--data",
        args.data,
        "--peers",
        args.peers,
        "--work",
        args.work,
        *extra,
    ]
    if ranks > 1 and framework != "lightning":  # Lightning starts its own ranks (subprocess launcher)
        return [args.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *script]
    return [args.python, *script]


def run_one(args: argparse.Namespace, case: str, framework: str, ranks: int, rep: int, attempt: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", KILN_PEERS_DIR=args.peers)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = "1"
    name = f"{case.replace(':', '_')}_{framework}_{ranks}r_rep{rep}" + (f"_attempt{attempt}" if attempt else "")
    log_path = os.path.join(args.run_dir, "logs", name + ".log")
    load_before = load_average()
    busy, own, start = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    with open(log_path, "w") as log:
        try:
            completed = subprocess.run(
                command_for(args, case, framework, ranks),
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=args.timeout,
            )
            rc: int | str = completed.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    orphans = reap_descendants()
    wall = time.perf_counter() - start
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - own)
    record: dict[str, Any] = {
        "case": case,
        "framework": framework,
        "ranks": ranks,
        "rep": rep,
        "rc": rc,
        "run_wall_s": wall,
        "load_before": load_before,
        "orphans_reaped": orphans,
        "others_cpu_share": max(0.0, others) / (wall * (os.cpu_count() or 1)),
    }
    with open(log_path) as log:
        lines = [line for line in log if line.startswith("RESULT ")]
    if rc == 0 and lines:
        record.update(json.loads(lines[-1][len("RESULT ") :]), framework=framework)  # a preview's name, not its runner
    else:
        record["error"] = f"rc={rc}, see {os.path.relpath(log_path, REPO)}"
    return record


def ensure_data(args: argparse.Namespace) -> None:
    if os.path.isfile(os.path.join(args.data, "bench_data.npz")):
        return
    os.makedirs(args.data, exist_ok=True)
    env = dict(os.environ, BENCH_DATA_DIR=args.data)
    subprocess.run([args.python, os.path.join(args.peers, "prepare_data.py")], cwd=args.peers, env=env, check=True)


def plan(args: argparse.Namespace, rep: int) -> list[tuple[str, str, int]]:
    """One rep's runs: cases in a shuffled order, each case's runs (and probes) shuffled, adjacent in time."""
    rng = random.Random(1000 + rep)
    cases = list(args.cases)
    rng.shuffle(cases)
    runs: list[tuple[str, str, int]] = []
    for case in cases:
        group = [(case, fw, ranks) for fw in args.frameworks for ranks in RANKS]
        if args.probe:
            group += [(case, "probe", ranks) for ranks in RANKS]
        rng.shuffle(group)
        runs += group
    return runs


def run_all(args: argparse.Namespace) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.run_dir = os.path.join(os.path.abspath(args.out), stamp)
    args.work = os.path.join(args.run_dir, "work")
    os.makedirs(os.path.join(args.run_dir, "logs"), exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    ensure_data(args)
    become_subreaper()
    started = time.monotonic()
    waited = wait_for_quiet(args.max_load, args.max_wait)
    meta: dict[str, Any] = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "uptime_before": waited[-1],
        "uptime_waits": waited[:-1],
        "max_load": args.max_load,
        "started": stamp,
        "python": args.python,
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "versions": subprocess.run(
            [args.python, "-c", "import torch, lightning; print(torch.__version__, lightning.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
    }
    print(f"run {args.run_dir}\n{meta['uptime_before']}", flush=True)
    with open(os.path.join(args.run_dir, "meta.json"), "w") as handle:  # rewritten at the end; kept if interrupted
        json.dump(meta, handle, indent=1)
    gate = QuietGate(
        max_busy=args.max_busy,
        max_share=args.max_share,
        retries=args.retries,
        budget=max(0.0, args.max_wait - (time.monotonic() - started)),
    )
    with open(os.path.join(args.run_dir, "results.jsonl"), "w") as out:
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
    meta["uptime_after"] = uptime()
    meta["gate"] = {
        "max_busy": args.max_busy,
        "max_share": args.max_share,
        "waited_s": gate.waited_s,
        "discarded_runs": gate.discarded,
        "discarded_s": gate.discarded_s,
    }
    meta["finished"] = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(args.run_dir, "meta.json"), "w") as handle:
        json.dump(meta, handle, indent=1)
    print(meta["uptime_after"], flush=True)
    return args.run_dir


# ---------------------------------------------------------------------------------------------------- summary
def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def paired_ratio(records: list[dict[str, Any]], top: tuple[str, int], bottom: tuple[str, int]) -> list[float]:
    """Per-rep ratios samples/s(top) / samples/s(bottom) of one case; (framework, ranks) name each side."""
    by_rep: dict[int, dict[tuple[str, int], float]] = {}
    for r in records:
        if "samples_per_s" in r:
            by_rep.setdefault(r["rep"], {})[(r["framework"], r["ranks"])] = r["samples_per_s"]
    return [runs[top] / runs[bottom] for runs in by_rep.values() if top in runs and bottom in runs]


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def quiet_note(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    gate = meta.get("gate")
    if not gate:
        return ""
    cores = meta["cores"] or 1
    during = sorted(r["others_cpu_share"] * cores for r in records)
    quiet = sum(1 for r in records if r["others_cpu_share"] <= gate["max_share"])
    return (
        f" Each run started once other processes kept ≤ {gate['max_busy']} cores busy (waited {gate['waited_s']:.0f} s"
        f" in all) and was run again when they took > {gate['max_share']:.0%} of the machine during it "
        f"({gate['discarded_runs']} runs, {gate['discarded_s']:.0f} s, discarded). Kept runs: {quiet} of "
        f"{len(records)} undisturbed; other processes' CPU during kept runs: median {statistics.median(during):.2f} "
        f"cores, max {max(during):.2f}."
    )


def summarize(run_dir: str) -> str:
    with open(os.path.join(run_dir, "results.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    records = [r for r in records if r.get("kept", True)]  # disturbed runs that were run again are left out
    with open(os.path.join(run_dir, "meta.json")) as handle:
        meta = json.load(handle)
    cases = [c for c in CASES if any(r["case"] == c for r in records)]
    frameworks = [f for f in (*FRAMEWORKS, *PREVIEWS) if any(r["framework"] == f for r in records)]
    reps = len({r["rep"] for r in records})
    lines = [
        f"Command: `{meta['command']}` ({reps} reps, medians; torch/lightning {meta['versions']}, "
        f"{meta['cores']} cores, one torch thread per rank).",
        "",
        f"Load: before `{meta['uptime_before']}`; after `{meta.get('uptime_after', '(interrupted)')}`."
        + (
            f" Waited {len(meta['uptime_waits'])} polls for the 1-minute load to fall below {meta['max_load']}."
            if meta["uptime_waits"]
            else ""
        )
        + quiet_note(meta, records),
        "",
        "| case | framework | 1 rank samples/s | 2 ranks samples/s | scaling 2/1 | rank 0 CPU/wall, 2 ranks "
        "| others' CPU during runs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    scaling_of: dict[tuple[str, str], float | None] = {}
    for case in cases:
        for fw in frameworks:
            mine = [r for r in records if r["case"] == case and r["framework"] == fw]
            rates = {
                n: median_or_none([r["samples_per_s"] for r in mine if r["ranks"] == n and "samples_per_s" in r])
                for n in RANKS
            }
            scaling = median_or_none(paired_ratio([r for r in records if r["case"] == case], (fw, 2), (fw, 1)))
            scaling_of[(case, fw)] = scaling
            busy = median_or_none([r["rank0_cpu_over_wall"] for r in mine if r["ranks"] == 2 and "samples_per_s" in r])
            others = median_or_none([r["others_cpu_share"] for r in mine])
            lines.append(
                f"| {case} | {fw} | {fmt(rates[1])} | {fmt(rates[2])} | {fmt(scaling, '.2f', '×')} | "
                f"{fmt(None if busy is None else 100 * busy, '.0f', '%')} | "
                f"{fmt(None if others is None else 100 * others, '.0f', '%')} |"
            )
    versus: dict[str, float | None] = {}
    rows = []
    for case in cases:
        mine = [r for r in records if r["case"] == case]
        cells = [
            median_or_none(paired_ratio(mine, ("kiln", n), (peer, n)))
            for peer, n in (("lightning", 2), ("lightning", 1), ("torch", 2))
        ]
        versus[case] = cells[0]
        rows.append((case, cells))
    if any(c is not None for _, cells in rows for c in cells):
        lines += [
            "",
            "| case | kiln / Lightning, 2 ranks | kiln / Lightning, 1 rank | kiln / torch DDP loop, 2 ranks |",
            "| --- | ---: | ---: | ---: |",
            *(f"| {case} | " + " | ".join(fmt(c, ".2f", "×") for c in cells) + " |" for case, cells in rows),
        ]
    for preview, (base, _) in PREVIEWS.items():
        if preview in frameworks:
            lines += [
                "",
                f"| case | {preview} / {base}, 2 ranks | {preview} / {base}, 1 rank |",
                "| --- | ---: | ---: |",
            ]
            for case in cases:
                mine = [r for r in records if r["case"] == case]
                cells = [median_or_none(paired_ratio(mine, (preview, n), (base, n))) for n in (2, 1)]
                lines.append(f"| {case} | " + " | ".join(fmt(c, ".2f", "×") for c in cells) + " |")
    probes = [r for r in records if r["framework"] == "probe" and "step_ms" in r]
    compute_bound: dict[str, bool] = {}
    if probes:
        lines += [
            "",
            "Probe (no training loop): compute c of one step with no gradient sync, all_reduce a of one "
            f"gradient-sized buffer; compute-bound when a ≤ {COMPUTE_BOUND_COMM_SHARE:.0%} of c. "
            "Bound: 2·c(1 rank) / (c(2 ranks) + a), the scaling if no communication overlaps compute.",
            "",
            "| case | c, 1 rank | c, each of 2 ranks at once | a, gloo all_reduce | a / c | bound | compute-bound |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for case in cases:
            one = median_or_none([r["step_ms"] for r in probes if r["case"] == case and r["ranks"] == 1])
            two = median_or_none([r["step_ms"] for r in probes if r["case"] == case and r["ranks"] == 2])
            reduce_ms = median_or_none([r["all_reduce_ms"] for r in probes if r["case"] == case and r["ranks"] == 2])
            share = None if two is None or reduce_ms is None else reduce_ms / two
            bound = None if one is None or two is None or reduce_ms is None else 2 * one / (two + reduce_ms)
            if share is not None:
                compute_bound[case] = share <= COMPUTE_BOUND_COMM_SHARE
            lines.append(
                f"| {case} | {fmt(one, '.2f', ' ms')} | {fmt(two, '.2f', ' ms')} | {fmt(reduce_ms, '.2f', ' ms')} | "
                f"{fmt(None if share is None else 100 * share, '.1f', '%')} | {fmt(bound, '.2f', '×')} | "
                f"{'—' if case not in compute_bound else ('yes' if compute_bound[case] else 'no')} |"
            )
    verdicts = []
    for case in cases:
        scaling, ratio = scaling_of.get((case, "kiln")), versus.get(case)
        if compute_bound.get(case) and scaling is not None:
            met = "met" if scaling >= TARGET_SCALING else "missed"
            verdicts.append(f"{case} kiln scaling {scaling:.2f}× (≥ {TARGET_SCALING}× where compute-bound: {met})")
        if ratio is not None:
            verdicts.append(f"{case} kiln / Lightning DDP {ratio:.2f}× ({'met' if ratio > 1 else 'missed'})")
    if verdicts:
        lines += ["", "Targets: " + "; ".join(verdicts) + "."]
    errors = [r for r in records if "error" in r]
    if errors:
        lines += [
            "",
            "Failed runs: "
            + "; ".join(f"{r['case']} {r['framework']} {r['ranks']}r rep {r['rep']}: {r['error']}" for r in errors),
        ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(run_dir, "summary.md"), "w") as handle:
        handle.write(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--frameworks", nargs="+", choices=[*FRAMEWORKS, *PREVIEWS], default=list(FRAMEWORKS))
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the compute/all_reduce probe")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load to fall below this")
    parser.add_argument("--max-busy", type=float, default=0.2, help="others' busy cores allowed before a run")
    parser.add_argument(
        "--max-share", type=float, default=0.05, help="share of the machine others may take during a kept run"
    )
    parser.add_argument("--retries", type=int, default=2, help="times a disturbed run is run again at most")
    parser.add_argument(
        "--max-wait", type=float, default=900.0, help="seconds of waiting for quiet and of discarded runs, in all"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--python", default=DEFAULT_PYTHON)
    parser.add_argument("--peers", default=default_peers_dir())
    parser.add_argument("--out", default=os.path.join(HERE, "results", "distributed_scaling"))
    parser.add_argument("--summarize", metavar="RUN_DIR", help="only re-print the summary of a finished run")
    args = parser.parse_args()
    args.data = os.path.join(os.path.abspath(args.out), "data")
    run_dir = args.summarize or run_all(args)
    print(summarize(run_dir))


if __name__ == "__main__":
    main()
