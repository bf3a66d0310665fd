"""The timing harness every benchmark script shares: interleaved repetitions, pinned threads, medians with their
spread, provenance, and one JSON result file per question that ``report.py`` renders into RESULTS.md.

The method, the same in every script:

- compare ratios measured in one run (ideally in one process, side by side), never absolute numbers across runs;
- interleave the variants: rotate or shuffle their order every repetition, or pair them (A, B, A, B, ...);
- report medians, with the middle half (first to third quartile) as the spread;
- pin threads (one torch/OpenMP thread by default: oversubscribed OpenMP threads spin on a shared machine) and,
  where it matters, CPUs (``taskset``);
- on a shared machine, start runs when others leave the cores quiet and redo a run they disturbed (``QuietGate``);
- record the command line, date, machine, software and kiln revision that produced every number.

A result file, ``benchmarks/results/<question>.json``::

    {"question": "checkpoint_bench", "title": "Checkpoints (issue 3)", "script": "benchmarks/checkpoint_bench.py",
     "runs": [{"name": "main", "command": "python benchmarks/checkpoint_bench.py --reps 9", "date": "...",
               "machine": "...", "software": "...", "revision": "...", "conditions": ["..."],
               "description": "markdown", "tables": [{"caption": "...", "columns": [...], "align": "lrr",
               "rows": [[...]], "footer": "..."}], "notes": "markdown", "summary": {...raw medians...}}]}

A script replaces the run of its name (``--run-name``, default "main") and keeps the others. ``--smoke`` runs write
to a scratch folder instead (``smoke_path``), so they never overwrite a recorded result.
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
import random
import resource
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------- statistics
def median(values: Iterable[float]) -> float | None:
    """The median, or None for no values (a config that failed every rep)."""
    values = list(values)
    return statistics.median(values) if values else None


def middle_half(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles: the spread reported beside a median."""
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, quartiles, min and max of ``values``: what a result file keeps of a list of samples."""
    if not values:
        return {"n": 0, "median": None}
    low, high = middle_half(values)
    return {"n": len(values), "median": statistics.median(values), "q1": low, "q3": high, "min": min(values),
            "max": max(values)}  # fmt: skip


def ratios(top: Sequence[float], bottom: Sequence[float]) -> list[float]:
    """Per-repetition ratios top[i] / bottom[i]: pairs measured moments apart share the machine's noise."""
    return [a / b for a, b in zip(top, bottom, strict=True)]


def fmt(value: float | None, spec: str = ".2f", suffix: str = "", missing: str = "-") -> str:
    return missing if value is None else f"{value:{spec}}{suffix}"


# ---------------------------------------------------------------------------------------------------- interleaving
def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` rotated by ``rep``: over len(items) reps every item takes every position once."""
    shift = rep % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """``items`` in an order fixed by ``seed`` (a fixed rotation can let position effects pass for overhead)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def clocks() -> tuple[float, float]:
    """(wall, CPU) now: CPU time of the process leaves out the time it waited for a core on a shared machine."""
    return time.perf_counter(), time.process_time()


def timed(function: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    out = function()
    return time.perf_counter() - start, out


# ---------------------------------------------------------------------------------------------------- threads, CPUs
def thread_env(threads: int, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for a child process with ``threads`` OpenMP/MKL/BLAS threads (and ``extra`` variables)."""
    env = dict(os.environ if base is None else base)
    env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)), **extra)
    return env


def pin_threads(threads: int) -> None:
    """Pin this process (torch, if imported) and its future children to ``threads`` intra-op threads."""
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    if "torch" in sys.modules and threads > 0:
        sys.modules["torch"].set_num_threads(threads)


def taskset(command: list[str], cpus: str) -> list[str]:
    """``command`` pinned to the CPU list ``cpus`` ("none": unpinned, or where taskset is missing)."""
    return ["taskset", "-c", cpus, *command] if cpus != "none" and shutil.which("taskset") else command


# ---------------------------------------------------------------------------------------------------- subprocesses
def print_result(result: dict[str, Any]) -> None:
    """What a child process prints for its parent: one ``RESULT {json}`` line."""
    print("RESULT " + json.dumps(result), flush=True)


def parse_result(text: str) -> dict[str, Any] | None:
    """The last ``RESULT {json}`` line in ``text`` (a child's output), or None."""
    found = None
    for line in text.splitlines():
        start = line.find("RESULT {")
        if start >= 0:
            found = json.loads(line[start + len("RESULT ") :])
    return found


def run_for_result(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: str | Path,
    log_path: Path,
    timeout: float,
    tty: bool = False,
    require_success: bool = True,
) -> dict[str, Any]:
    """Run ``command`` with its output in ``log_path``; its RESULT dict, or {"error": ...} naming the log.

    ``tty``: stdout on a pseudo-terminal. ``require_success=False`` keeps a RESULT even if the exit status is not 0
    (a framework that crashes at exit after reporting).
    """
    with open(log_path, "w") as log:
        if tty:
            rc: int | str = _run_on_pty(command, env, cwd, log, timeout)
        else:
            try:
                rc = subprocess.run(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=timeout).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                rc = "timeout"
    result = parse_result(log_path.read_text(errors="replace"))
    if result is None or (require_success and rc != 0):
        return {"error": f"rc={rc}, see {_relative(log_path)}"}
    return result


def _run_on_pty(command: list[str], env: dict[str, str], cwd: str | Path, log: Any, timeout: float) -> int | str:
    """Run ``command`` with stdout and stderr on a pseudo-terminal (so it draws live progress); copy it to log."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**env, "TERM": env.get("TERM", "xterm-256color"), "COLUMNS": "120", "LINES": "40"}
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


# ---------------------------------------------------------------------------------------------------- provenance
def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line() -> str:
    """CPU model, cores this process may use, OS: e.g. "AMD EPYC 7B13, 2 cores, Linux 6.18.44"."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {platform.system()} {platform.release()}"


def software_line(python: str = sys.executable, packages: Sequence[str] = ("torch", "kiln")) -> str:
    """Python and package versions as ``python`` (maybe a side venv's interpreter) sees them."""
    snippet = (
        "import importlib.metadata as m, platform, sys\n"
        "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n"
        "        return 'not installed'\n"
        "print(', '.join([f'Python {platform.python_version()}'] + [f'{n} {v(n)}' for n in sys.argv[1:]]))"
    )
    out = subprocess.run([python, "-c", snippet, *packages], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def git_revision() -> str:
    """The short commit of the checkout, flagged when src/ has uncommitted changes."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = " (src/ has uncommitted changes)" if git("status", "--porcelain", "--", "src") else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{dirty}"


def source_fingerprint() -> str:
    """A short hash of kiln's source files: shows whether src/ changed while a benchmark ran."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(REPO / "src" / "kiln")):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                digest.update(name.encode() + Path(root, name).read_bytes())
    return digest.hexdigest()[:12]


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as run from the repository root: ``python benchmarks/<script>.py ARGS``."""
    argv = sys.argv if argv is None else argv
    return " ".join(["python", _relative(Path(argv[0]).resolve()), *argv[1:]])


def new_run(name: str = "main", *, python: str = sys.executable, packages: Sequence[str] = ("torch", "kiln")) -> dict:
    """The provenance of a run about to start; ``finish_run`` completes it."""
    return {
        "name": name,
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "software": software_line(python, packages),
        "revision": git_revision(),
        "conditions": [],
        "_load_start": load_average(),
        "_source_start": source_fingerprint(),
    }


def finish_run(run: dict[str, Any]) -> dict[str, Any]:
    """Add the load averages at start and end, and flag a src/ that changed during the run."""
    start, source = run.pop("_load_start", "?"), run.pop("_source_start", None)
    run["conditions"].insert(0, f"load average {start} at start, {load_average()} at end")
    if source is not None and source != source_fingerprint():
        run["conditions"].append("**src/ changed during the run** (source fingerprint differs at start and end)")
    return run


# ---------------------------------------------------------------------------------------------------- a quiet machine
def load_average_1min() -> float:
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
    while load_average_1min() >= max_load and time.monotonic() < deadline:
        print(f"load {load_average_1min():.2f} >= {max_load}: waiting ({seen[-1]})", flush=True)
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


# ---------------------------------------------------------------------------------------------------- peers
def peers_dir(kind: str) -> Path:
    """The peers' harness for ``kind`` ("train", "serve"): $KILN_PEERS_DIR for train, else ../shared/peers/<kind>."""
    if kind == "train" and os.environ.get("KILN_PEERS_DIR"):
        return Path(os.environ["KILN_PEERS_DIR"]).resolve()
    return REPO.parent / "shared" / "peers" / kind


def side_python(venv: str, purpose: str) -> str | None:
    """The interpreter of the side venv ``benchmarks/<venv>`` (peers installed), or None with a note saying so."""
    python = HERE / venv / "bin" / "python"
    if python.exists():
        return str(python)
    print(f"note: {_relative(python)} not found, so {purpose} are not measured; kiln's side runs alone. "
          "Set it up as the script's docstring says to measure them.", file=sys.stderr, flush=True)  # fmt: skip
    return None


def ensure_peer_data(python: str, peers: Path, data_dir: Path) -> None:
    """Write the peers' data set (scikit-learn's digits and synthetic tokens) into ``data_dir`` once."""
    if (data_dir / "bench_data.npz").is_file():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BENCH_DATA_DIR=str(data_dir))
    subprocess.run([python, str(peers / "prepare_data.py")], cwd=peers, env=env, check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------------- results
def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    align: str | None = None,
    caption: str | None = None,
    footer: str | None = None,
) -> dict[str, Any]:
    """A result table: header, rows of cells (formatted strings, as the script wants them shown), "l"/"r" per column."""
    out: dict[str, Any] = {"columns": list(columns), "rows": [list(row) for row in rows]}
    if align is not None:
        assert len(align) == len(columns), (align, columns)
        out["align"] = align
    if caption:
        out["caption"] = caption
    if footer:
        out["footer"] = footer
    return out


def markdown_table(spec: dict[str, Any]) -> str:
    """The Markdown of a ``table`` (without its caption and footer)."""
    align = spec.get("align") or "l" * len(spec["columns"])
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(spec["columns"]) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in spec["rows"]]
    return "\n".join(lines)


def smoke_path(question: str) -> Path:
    """Where a ``--smoke`` run writes: a scratch folder, never benchmarks/results/."""
    return Path(tempfile.gettempdir()) / "kiln-bench-smoke" / f"{question}.json"


def add_result_arguments(parser: argparse.ArgumentParser, question: str) -> None:
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the script works (seconds)")
    parser.add_argument("--out", type=Path, help=f"result file (default: benchmarks/results/{question}.json; "
                        "--smoke: a scratch folder)")  # fmt: skip
    parser.add_argument("--run-name", default="main", help="the run this replaces in the result file")


def result_path(args: argparse.Namespace, question: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    return smoke_path(question) if args.smoke else RESULTS_DIR / f"{question}.json"


def raw_dir(args: argparse.Namespace, question: str) -> Path:
    """Where a run keeps its raw samples and logs (not tracked): results/raw/<question>/, or the scratch folder."""
    root = smoke_path(question).parent if args.smoke else RESULTS_DIR
    path = root / "raw" / question
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(args: argparse.Namespace, *, question: str, title: str, record: dict[str, Any]) -> Path:
    """Print the run's tables and write it (finished: load averages, changed sources) to its result file."""
    for spec in record["tables"]:
        print(f"\n{spec['caption']}\n\n{markdown_table(spec)}")
    return write_result(result_path(args, question), question=question, title=title, run=finish_run(record))


def write_result(path: Path, *, question: str, title: str, run: dict[str, Any]) -> Path:
    """Replace the run named ``run["name"]`` in the result file at ``path`` (keeping the others), atomically."""
    document: dict[str, Any] = {"question": question, "title": title, "script": f"benchmarks/{question}.py", "runs": []}
    if path.exists():
        document = json.loads(path.read_text())
    runs = [r for r in document["runs"] if r.get("name") != run["name"]]
    document["runs"] = (
        [*runs, run]
        if len(runs) == len(document["runs"])
        else [run if r.get("name") == run["name"] else r for r in document["runs"]]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(dumps(document) + "\n")
    os.replace(temporary, path)
    print(f"result: {_relative(path)} (run {run['name']!r})", file=sys.stderr)
    return path


def dumps(value: Any, depth: int = 0) -> str:
    """JSON with one line per table row: lists of plain values stay on one line, everything else is indented."""
    inner, outer = " " * (depth + 1), " " * depth
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {dumps(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + outer + "}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        return "[\n" + ",\n".join(inner + dumps(item, depth + 1) for item in value) + "\n" + outer + "]"
    return json.dumps(value, ensure_ascii=False)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
