"""Training-loop overhead: kiln against a hand-written PyTorch loop, Lightning 2.6 and Keras 3 (issue 2).

The same three jobs as the peers' harness (``../shared/peers/train``): an MLP 64-256-256-10 on scikit-learn's digits,
LeNet-5 on digits upsampled to 1x32x32 and a 2-layer transformer encoder on synthetic tokens; batch 64, Adam(1e-3),
one warm-up epoch of 22 steps that is not timed, then ``--timed-epochs`` epochs timed step by step. Configs:

    torch:loader        hand-written loop over a DataLoader (TensorDataset, shuffled): the baseline of every ratio
    kiln:loader         kiln.Model.fit over the same DataLoader (same data path: measures kiln's loop alone)
    kiln:array          kiln.Model.fit over an ArrayDataset (kiln's default in-memory, batch-level data path)
    lightning:default   L.Trainer() defaults (progress bar, logger, checkpointing, summary), self.log per step
    lightning:lean      the same with progress bar, logger, checkpointing and summary off
    keras:default       Keras 3 model.fit on the torch backend, verbose="auto"
    keras:lean          the same with verbose=0
    pair:loader         kiln:loader and the hand-written loop in ONE process, taking turns epoch by epoch
    pair:array          the same for kiln:array

The pair:* configs (train_overhead_paired.py) are usually the most precise measurement of kiln's cost on a shared
machine: both sides of each ratio ran within the same second, where separate processes can meet very different
loads. Cross-check them with abba:* (below); benchmarks/RESULTS.md records a case where the two disagree.

Not run unless named in --configs: kiln:array-tty (stdout on a pseudo-terminal, so kiln's live progress bar is
drawn), kiln:loader-nodoctor and kiln:array-nodoctor (fit(doctor=False)), kiln:loader-quiet and kiln:array-quiet
(verbose=0), lightning:bare (lean, and no self.log), pair: versions of any kiln config, abba: versions of any kiln
config (whole fits of kiln and the loop alternating kiln, loop, loop, kiln in one process, each on a fresh copy of
the network: a cross-check of the epoch pairs that includes each fit's setup and warm-up), kiln:loader-unfused and
kiln:array-unfused (Adam without torch's fused step, as the hand-written loop builds it: kiln's loop alone; kiln's
default builds named optimizers fused), and a preview of a change proposed for src/, tried from outside it:
kiln:array-tty-bar / pair:array-tty-bar (train_overhead_preview.py's constant-cost live bar in place of kiln's).
pair:loop is the paired method's A/A calibration: the hand-written loop paired with itself.

kiln runs with its defaults (device "auto", verbose "auto": one line per epoch when stdout is not a terminal).
Every run is a fresh subprocess (train_overhead_run.py) with one torch thread (OMP_NUM_THREADS=1 and
torch.set_num_threads(1)); reps are interleaved (the config order rotates every rep), each ratio is taken against
torch:loader of the same model in the same rep, and the table shows medians over reps. The speed of one run is the
median over its timed epochs of each epoch's steps/s, in CPU time of the process (what the targets are judged on:
on a shared machine it leaves out the time spent waiting for a core) and in wall time. The script also times
``import kiln`` (with kiln.Model and kiln.data resolved) over ``import torch``, each in fresh interpreters, and
reports peak RSS (ru_maxrss) of every run.

Setup (once; every config runs with the same interpreter, so torch is identical everywhere)::

    python3.11 -m venv benchmarks/.venv-peers
    benchmarks/.venv-peers/bin/pip install torch==2.13.0 lightning "keras>=3" scikit-learn
    benchmarks/.venv-peers/bin/pip install -e .

Run (from the repository root)::

    python benchmarks/train_overhead.py --reps 5 --peer-reps 3          # the recorded run, ~20 min on 2 busy cores
    python benchmarks/train_overhead.py --reps 1 --models mlp --configs torch:loader kiln:loader kiln:array
    python benchmarks/train_overhead.py --reps 3 --models mlp cnn --import-reps 0 \\
        --configs pair:array pair:array-unfused pair:array-tty pair:array-tty-bar pair:loader-nodoctor
    python benchmarks/train_overhead.py --summarize benchmarks/results/train_overhead/<run>   # re-print a table

The peers' harness is found by ``--peers``, else $KILN_PEERS_DIR, else ``../shared/peers/train`` next to the
repository; its prepare_data.py writes the data into ``--out``/data on first use. Raw results, per-run logs and the
markdown summary (the text recorded in benchmarks/RESULTS.md) go to ``--out``/<timestamp>/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import platform
import pty
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from train_overhead_run import (  # noqa: E402
    ABBA_CONFIGS,
    CALIBRATION_CONFIGS,
    MODELS,
    PAIR_CONFIGS,
    PEER_SCRIPTS,
    default_peers_dir,
    uses_tty,
)

RUN_SCRIPT = os.path.join(HERE, "train_overhead_run.py")
PEER_FRAMEWORKS = tuple(PEER_SCRIPTS)
BASELINE = "torch:loader"
CONFIGS = (
    "torch:loader",
    "kiln:loader",
    "kiln:array",
    "lightning:default",
    "lightning:lean",
    "keras:default",
    "keras:lean",
    "pair:loader",
    "pair:array",
)
PREVIEW_CONFIGS = ("kiln:array-tty-bar", "pair:array-tty-bar")
EXTRA_CONFIGS = (
    "kiln:array-tty",
    "kiln:loader-nodoctor",
    "kiln:array-nodoctor",
    "kiln:loader-unfused",
    "kiln:array-unfused",
    "kiln:loader-bare",
    "kiln:loader-quiet",
    "kiln:array-quiet",
    "lightning:bare",
    *PREVIEW_CONFIGS,
    *(c for c in PAIR_CONFIGS if c not in CONFIGS and c not in PREVIEW_CONFIGS),
    *ABBA_CONFIGS,
    *CALIBRATION_CONFIGS,
)
# The transformer takes ~0.1 s a step on one thread, where loop overheads of tens of microseconds vanish: 2 timed
# epochs (44 steps) measure it well and keep a 5-rep run near 20 minutes. The small models keep the harness' 14.
TIMED_EPOCHS = {"mlp": 14, "cnn": 14, "tfm": 2}
# Paired runs (pair:*) time kiln and the loop epoch by epoch; more, shorter epochs give more pairs.
PAIRED_EPOCHS = {"mlp": 40, "cnn": 12, "tfm": 2}
DEFAULT_PYTHON = os.path.join(HERE, ".venv-peers", "bin", "python")

IMPORT_SNIPPETS = {
    "torch": "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)",
    "kiln": "import time; t = time.perf_counter(); import kiln; kiln.Model; kiln.Callback; "
    "from kiln.data import ArrayDataset; print(time.perf_counter() - t)",
    "kiln after torch": "import torch, time; t = time.perf_counter(); import kiln; kiln.Model; kiln.Callback; "
    "from kiln.data import ArrayDataset; print(time.perf_counter() - t)",
    "bare kiln": "import time; t = time.perf_counter(); import kiln; print(time.perf_counter() - t)",
}

# The speed of one run: the median over its timed epochs of each epoch's steps per CPU second (robust to other
# people's work on the shared cores), and the same over wall time. Targets are judged on the CPU-time ratio.
RATE = "cpu_steps_per_s_epoch_median"
WALL_RATE = "wall_steps_per_s_epoch_median"
TARGET_SAME_PATH = 0.97
TARGET_ARRAY_MLP = 1.5
TARGET_IMPORT_S = 0.5
TARGET_RSS = 1.1


# ---------------------------------------------------------------------------------------------------- running
def child_env(args: argparse.Namespace, work: str, tty: bool) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(args.threads)
    env.update(
        KERAS_BACKEND="torch",
        PYTHONUNBUFFERED="1",
        BENCH_DATA_DIR=args.data,
        BENCH_WORK_DIR=work,
        KILN_PEERS_DIR=args.peers,
    )
    if tty:
        env.setdefault("TERM", "xterm-256color")
        env.update(COLUMNS="120", LINES="40")
    else:
        env.pop("COLUMNS", None)
    return env


def run_on_pty(command: list[str], env: dict[str, str], cwd: str, log: Any, timeout: float) -> int | str:
    """Run ``command`` with stdout and stderr on a pseudo-terminal (so it draws live progress) and copy it to log."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                process.kill()
                process.wait()
                return "timeout"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            log.write(chunk.decode(errors="replace"))
        return process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(leader)


def run_one(config: str, model: str, rep: int, args: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    """One fresh subprocess for (config, model); returns its RESULT dict (or an error) labelled with ``config``."""
    tty = uses_tty(config)
    timed = str((args.paired_epochs if config.startswith("pair:") else args.timed_epochs)[model])
    command = [args.python, RUN_SCRIPT, "--config", config, "--model", model, "--peers", args.peers]
    command += ["--timed-epochs", timed, "--threads", str(args.threads)]
    work = tempfile.mkdtemp(prefix=f"kiln_overhead_{model}_")
    env = child_env(args, work, tty)
    log_path = os.path.join(run_dir, "logs", f"{model}_{config.replace(':', '_')}_r{rep}.log")
    env["BENCH_LAUNCH_T"] = repr(time.time())
    with open(log_path, "w") as log:
        if tty:
            rc: int | str = run_on_pty(command, env, work, log, args.timeout)
        else:
            try:
                rc = subprocess.run(
                    command,
                    env=env,
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=args.timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
    shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] | None = None
    with open(log_path, errors="replace") as log:
        for line in log:
            start = line.find("RESULT {")
            if start >= 0:
                result = json.loads(line[start + len("RESULT ") :].strip())
    if result is None:
        result = {"error": f"rc={rc}, see {os.path.relpath(log_path, REPO)}"}
    result.update(config=config, model=model, rep=rep)
    return result


def ensure_data(args: argparse.Namespace) -> None:
    if os.path.isfile(os.path.join(args.data, "bench_data.npz")):
        return
    os.makedirs(args.data, exist_ok=True)
    env = dict(os.environ, BENCH_DATA_DIR=args.data)
    subprocess.run([args.python, os.path.join(args.peers, "prepare_data.py")], cwd=args.peers, env=env, check=True)


def measure_imports(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds for each import snippet, each in a fresh interpreter, interleaved; one untimed round first."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(args.threads)
    times: dict[str, list[float]] = {name: [] for name in IMPORT_SNIPPETS}
    for round_ in range(args.import_reps + 1):
        for name, snippet in IMPORT_SNIPPETS.items():
            out = subprocess.run(
                [args.python, "-c", snippet], env=env, cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
            if round_ > 0:  # round 0 warms the page cache and writes .pyc files
                times[name].append(float(out.strip().splitlines()[-1]))
    return times


# ---------------------------------------------------------------------------------------------------- reporting
def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def per_rep_ratios(rows: list[dict[str, Any]], model: str, config: str, key: str) -> list[float]:
    base = {r["rep"]: r[key] for r in rows if r["model"] == model and r["config"] == BASELINE and key in r}
    return [
        r[key] / base[r["rep"]]
        for r in rows
        if r["model"] == model and r["config"] == config and key in r and r["rep"] in base
    ]


def speed_table(rows: list[dict[str, Any]]) -> str:
    configs = [
        c
        for c in (*CONFIGS, *EXTRA_CONFIGS)
        if not c.startswith(("pair:", "abba:")) and any(r["config"] == c for r in rows)
    ]
    lines = [
        "| model | config | n | steps/s, CPU | ratio vs loop, CPU | overhead µs/step, CPU | steps/s, wall | "
        "ratio vs loop, wall | peak RSS MB | RSS vs loop | import s | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for config in configs:
            runs = [r for r in rows if r["model"] == model and r["config"] == config]
            if not runs:
                continue
            ok = [r for r in runs if RATE in r]
            if not ok:
                lines.append(f"| {model} | {config} | 0 | FAILED: {runs[0].get('error')} | | | | | | | | |")
                continue
            base = {r["rep"]: r[RATE] for r in rows if r["model"] == model and r["config"] == BASELINE and RATE in r}
            overhead = [1e6 / r[RATE] - 1e6 / base[r["rep"]] for r in ok if r["rep"] in base]
            cells = [
                model,
                config,
                str(len(ok)),
                fmt(median([r[RATE] for r in ok]), 1),
                fmt(median(per_rep_ratios(rows, model, config, RATE))),
                fmt(median(overhead), 0),
                fmt(median([r[WALL_RATE] for r in ok]), 1),
                fmt(median(per_rep_ratios(rows, model, config, WALL_RATE))),
                fmt(median([r["peak_rss_mb"] for r in ok]), 0),
                fmt(median(per_rep_ratios(rows, model, config, "peak_rss_mb"))),
                fmt(median([r["import_s"] for r in ok])),
                fmt(median([r["test_acc"] for r in ok]), 3),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict[str, Any]], prefix: str = "pair:") -> str:
    unit = "epoch pairs" if prefix == "pair:" else "ABBA blocks"
    configs = [c for c in (*CONFIGS, *EXTRA_CONFIGS) if c.startswith(prefix) and any(r["config"] == c for r in rows)]
    lines = [
        f"| model | kiln config | runs | {unit} | kiln steps/s, CPU | loop steps/s, CPU | kiln ÷ loop, CPU | "
        "middle half of the pairs, CPU | kiln ÷ loop, wall | test acc kiln / loop |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for config in configs:
            runs = [r for r in rows if r["model"] == model and r["config"] == config]
            if not runs:
                continue
            ok = [r for r in runs if "cpu_ratios" in r]
            label = "loop (A/A)" if config in CALIBRATION_CONFIGS else config.replace(prefix, "kiln:")
            if not ok:
                lines.append(f"| {model} | {label} | 0 | FAILED: {runs[0].get('error')} | | | | | | |")
                continue
            cpu = [x for r in ok for x in r["cpu_ratios"]]
            wall = [x for r in ok for x in r["wall_ratios"]]
            low, _, high = statistics.quantiles(cpu, n=4) if len(cpu) > 1 else (cpu[0], cpu[0], cpu[0])
            accuracy = f"{median([r['test_acc'] for r in ok]):.3f} / {median([r['twin_test_acc'] for r in ok]):.3f}"
            cells = [
                model,
                label,
                str(len(ok)),
                str(len(cpu)),
                fmt(median([r["kiln_cpu_steps_per_s"] for r in ok]), 1),
                fmt(median([r["loop_cpu_steps_per_s"] for r in ok]), 1),
                f"**{median(cpu):.3f}**",
                f"{low:.3f} – {high:.3f}",
                fmt(median(wall), 3),
                accuracy,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_ratio(rows: list[dict[str, Any]], model: str, config: str, key: str = "cpu_ratios") -> float | None:
    return median([x for r in rows if r["model"] == model and r["config"] == config for x in r.get(key, [])])


def import_table(times: dict[str, list[float]]) -> tuple[str, float | None]:
    medians = {name: median(values) for name, values in times.items()}
    lines = ["| snippet (fresh interpreter) | n | median s | min s |", "|---|---|---|---|"]
    for name, values in times.items():
        fastest = min(values) if values else None
        lines.append(f"| {name} | {len(values)} | {fmt(medians[name], 3)} | {fmt(fastest, 3)} |")
    if medians.get("kiln") is None or medians.get("torch") is None or medians.get("kiln after torch") is None:
        return "\n".join(lines), None
    difference = medians["kiln"] - medians["torch"]
    lines.append(f"| kiln over torch: median kiln - median torch | | {difference:.3f} | |")
    # Two noisy estimates of one quantity; the target is judged on the larger.
    over = max(difference, medians["kiln after torch"])
    lines.append(f"| **kiln over torch** (larger of the two estimates) | | **{over:.3f}** | |")
    return "\n".join(lines), over


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def target_lines(rows: list[dict[str, Any]], import_over: float | None) -> list[str]:
    def speed(model: str, variant: str, goal: float, text: str) -> None:
        separate = median(per_rep_ratios(rows, model, f"kiln:{variant}", RATE))
        separate_wall = median(per_rep_ratios(rows, model, f"kiln:{variant}", WALL_RATE))
        paired = paired_ratio(rows, model, f"pair:{variant}")
        paired_wall = paired_ratio(rows, model, f"pair:{variant}", "wall_ratios")
        judged = paired if paired is not None else separate
        if judged is None:
            return
        parts = []
        if paired is not None:
            parts.append(f"paired {paired:.3f}× CPU ({fmt(paired_wall, 3)}× wall)")
        if separate is not None:
            parts.append(f"separate processes {separate:.2f}× CPU ({fmt(separate_wall)}× wall)")
        lines.append(f"- {text}: {'; '.join(parts)} — {verdict(judged >= goal)}")

    lines: list[str] = []
    for model in MODELS:
        speed(model, "loader", TARGET_SAME_PATH, f"kiln ≥ {TARGET_SAME_PATH}× the loop, same DataLoader, {model}")
    speed("mlp", "array", TARGET_ARRAY_MLP, f"kiln ≥ {TARGET_ARRAY_MLP}× the loop on the MLP, ArrayDataset")
    if import_over is not None:
        lines.append(
            f"- `import kiln` ≤ {TARGET_IMPORT_S} s over `import torch`: {import_over:.3f} s — "
            f"{verdict(import_over <= TARGET_IMPORT_S)}"
        )
    for config in ("kiln:loader", "kiln:array"):
        for model in MODELS:
            ratio = median(per_rep_ratios(rows, model, config, "peak_rss_mb"))
            if ratio is not None:
                lines.append(
                    f"- peak RSS of a kiln fit ≤ {TARGET_RSS}× the loop's, {config}, {model}: "
                    f"{ratio:.2f}× — {verdict(ratio <= TARGET_RSS)}"
                )
    return lines


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {platform.system()} {platform.release()}"


def versions(python: str) -> str:
    snippet = (
        "import importlib.metadata as m, platform\n"
        "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n"
        "        return 'not installed'\n"
        'print(f\'Python {platform.python_version()}, torch {v("torch")}, lightning {v("lightning")}, \''
        'f\'keras {v("keras")}, kiln {v("kiln")}\')'
    )
    out = subprocess.run([python, "-c", snippet], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def source_fingerprint() -> str:
    """A short hash of kiln's source files: shows whether src/ changed while the benchmark ran."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(os.path.join(REPO, "src", "kiln"))):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    return digest.hexdigest()[:12]


def git_revision() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = " (src/ has uncommitted changes)" if git("status", "--porcelain", "--", "src") else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{dirty}"


def summary(meta: dict[str, Any], rows: list[dict[str, Any]], imports: dict[str, list[float]] | None) -> str:
    steps = ", ".join(f"{m} {22 * meta['timed_epochs'][m]}" for m in MODELS)
    peer_reps = meta.get("peer_reps")
    peers_note = "" if peer_reps is None else f", Lightning and Keras in the first {peer_reps} of them"
    out = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}; load average {meta['load_start']} at start, {meta['load_end']} at end "
        "(shared with other engineers' test runs)  ",
        f"Software: {meta['versions']}; kiln at {meta['revision']}, source fingerprint {meta.get('source_start')}"
        + (
            ""
            if meta.get("source_start") == meta.get("source_end")
            else f" at start and {meta.get('source_end')} at end: **src/ changed during the run**"
        )
        + "  ",
        f"Reps: {meta['reps']} interleaved (config order rotated each rep){peers_note}; "
        f"{meta['threads']} torch thread; "
        f"timed steps per run after a 22-step warm-up epoch: {steps}",
        "",
        "The speed of one run is the median over its timed epochs of each epoch's steps per second, in CPU time "
        "(`time.process_time`, all threads of the process: leaves out the time spent waiting for a core while "
        "other people's tests ran) and in wall time. An epoch window includes the framework's work between epochs. "
        "steps/s: median over reps. ratio vs loop: median over reps of (steps/s ÷ torch:loader steps/s of the same "
        "model in the same rep); overhead µs/step likewise. RSS vs loop: the same ratio for peak RSS (ru_maxrss). "
        "import s: launch until the framework's imports finished. test acc: held-out accuracy after the run.",
        "",
        speed_table(rows),
    ]
    if any("cpu_ratios" in r and r["config"].startswith("pair:") for r in rows):
        pairs = ", ".join(f"{m} {meta['paired_epochs'][m]}" for m in MODELS)
        out += [
            "",
            "Paired runs (train_overhead_paired.py): one process trains two copies of the network with the same "
            "initial weights, kiln's fit and the hand-written loop over its own DataLoader taking turns epoch by "
            "epoch, so both sides of every ratio saw the same machine. kiln ÷ loop: median over all epoch pairs of "
            "the reps of (loop epoch time ÷ kiln epoch time); above 1 kiln is faster. The kiln epoch includes "
            "everything fit does between "
            f"epochs. Timed epoch pairs per run after one warm-up epoch each: {pairs}.",
            "",
            paired_table(rows),
        ]
    if any("cpu_ratios" in r and r["config"].startswith("abba:") for r in rows):
        out += [
            "",
            "Alternating whole fits (abba:*, train_overhead_paired.py): in one process, whole fits of kiln and of the "
            "loop, each on a fresh copy of the network, in the order kiln, loop, loop, kiln; kiln ÷ loop per block = "
            "(loop time of its two fits) ÷ (kiln time of its two fits), median over the blocks of the reps. Each fit "
            "includes its setup and warm-up epoch.",
            "",
            paired_table(rows, "abba:"),
        ]
    import_over = None
    if imports:
        table, import_over = import_table(imports)
        out += [
            "",
            "Import time (`kiln` = `import kiln` plus resolving `kiln.Model`, `kiln.Callback` and "
            "`kiln.data.ArrayDataset`; `bare kiln` = `import kiln` alone, which is lazy):",
            "",
            table,
        ]
    out += [
        "",
        "Targets (speed judged on the paired runs where present: they are the precise measurement on a shared "
        "machine):",
        "",
        *target_lines(rows, import_over),
    ]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=[*CONFIGS, *EXTRA_CONFIGS],
        metavar="CONFIG",
        help=f"default: {' '.join(CONFIGS)}; also: {' '.join(EXTRA_CONFIGS)} (see above)",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--peer-reps",
        type=int,
        default=None,
        help="run the lightning and keras configs in only the first N reps (they are slow and only give context)",
    )
    parser.add_argument("--import-reps", type=int, default=7, help="fresh interpreters per import snippet (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every run (default 1)")
    parser.add_argument(
        "--timed-epochs",
        type=int,
        default=None,
        help="timed epochs for every model and config (default: mlp 14, cnn 14, tfm 2; paired: mlp 40, cnn 12, tfm 2)",
    )
    parser.add_argument(
        "--python",
        default=DEFAULT_PYTHON if os.path.exists(DEFAULT_PYTHON) else sys.executable,
        help="interpreter for every run; needs torch, kiln and (for the peers) lightning and keras "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--peers",
        default=default_peers_dir(),
        help="the peers' training harness ($KILN_PEERS_DIR; default: %(default)s)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "train_overhead"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--summarize", metavar="RUN_DIR", help="re-print the summary of a finished run and exit")
    args = parser.parse_args()
    args.peers = os.path.abspath(args.peers)
    args.data = os.path.join(os.path.abspath(args.out), "data")
    if args.timed_epochs is None:
        args.timed_epochs, args.paired_epochs = dict(TIMED_EPOCHS), dict(PAIRED_EPOCHS)
    else:
        args.timed_epochs = args.paired_epochs = dict.fromkeys(MODELS, args.timed_epochs)
    if not args.summarize and not os.path.isfile(os.path.join(args.peers, "common.py")):
        parser.error(
            f"--peers {args.peers} is not the peers' harness (no common.py); pass --peers or set KILN_PEERS_DIR."
        )
    return args


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    args = parse_args()
    if args.summarize:
        with open(os.path.join(args.summarize, "meta.json")) as f:
            meta = json.load(f)
        with open(os.path.join(args.summarize, "raw.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        imports_path = os.path.join(args.summarize, "imports.json")
        imports = None
        if os.path.exists(imports_path):
            with open(imports_path) as f:
                imports = json.load(f)
        print(summary(meta, rows, imports))
        return

    ensure_data(args)
    run_dir = os.path.join(args.out, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.join(run_dir, "logs"))
    meta = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_line(),
        "versions": versions(args.python),
        "revision": git_revision(),
        "reps": args.reps,
        "peer_reps": args.peer_reps,
        "threads": args.threads,
        "timed_epochs": args.timed_epochs,
        "paired_epochs": args.paired_epochs,
        "load_start": load_average(),
        "source_start": source_fingerprint(),
    }
    print(f"{meta['versions']}; kiln at {meta['revision']}; results in {os.path.relpath(run_dir, REPO)}", flush=True)
    if BASELINE not in args.configs:
        print(f"note: {BASELINE} is not among the configs, so there are no ratios", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for rep in range(args.reps):
        for model in args.models:
            shift = rep % len(args.configs)  # rotate the order so no config always runs first or after another
            for config in args.configs[shift:] + args.configs[:shift]:
                if config.split(":")[0] in PEER_FRAMEWORKS and args.peer_reps is not None and rep >= args.peer_reps:
                    continue
                result = run_one(config, model, rep, args, run_dir)
                rows.append(result)
                with open(os.path.join(run_dir, "raw.jsonl"), "a") as f:
                    f.write(json.dumps(result) + "\n")
                message = result.get("error")
                if "cpu_ratios" in result:
                    message = (
                        f"kiln ÷ loop {median(result['cpu_ratios']):.3f} CPU {median(result['wall_ratios']):.3f} wall "
                        f"over {result['pairs']} {'epoch pairs' if config.startswith('pair:') else 'ABBA blocks'}"
                    )
                elif RATE in result:
                    message = (
                        f"{result[RATE]:7.1f} steps/s CPU {result[WALL_RATE]:7.1f} wall  "
                        f"RSS {result['peak_rss_mb']:.0f} MB  acc {result['test_acc']:.3f}"
                    )
                print(f"[rep {rep} {time.monotonic() - started:6.0f}s] {model:3s} {config:18s} {message}", flush=True)
    imports = measure_imports(args) if args.import_reps > 0 else None
    if imports:
        with open(os.path.join(run_dir, "imports.json"), "w") as f:
            json.dump(imports, f)
    meta["load_end"], meta["source_end"] = load_average(), source_fingerprint()
    with open(os.path.join(run_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    text = summary(meta, rows, imports)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
