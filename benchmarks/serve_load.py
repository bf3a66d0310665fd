"""Serving benchmark (issue 5): kiln (ONNX Runtime and torch) vs LitServe, TorchServe and a bare uvicorn endpoint.

Same model for every server (the peers' MLP 64-256-256-10 with seed 0, softmax outputs), same machine, same run.
Each server is started on 127.0.0.1, checked for the right answer, warmed up, then driven by a closed-loop load
generator (this file, ``loadgen`` mode: asyncio + uvloop over raw keep-alive HTTP/1.1, bounded in time and count)
at each concurrency; servers are interleaved within each repetition and medians are reported. The server is pinned
to one CPU and the load generator to the other, so that on a shared 2-core box every server gets the same core.
A last phase measures kiln's RSS after warm-up and after --rss-requests requests (a tenth of them hostile).

The peers are started with the harness in /work/shared/peers/serve (bench_serve.py: their commands, TorchServe
packaging, start/stop), imported from there at run time. They need a side venv (gitignored)::

    python3 -m venv benchmarks/.venv-serve
    benchmarks/.venv-serve/bin/pip install torch==2.13.0 litserve torchserve torch-model-archiver \\
        starlette uvicorn httptools uvloop httpx numpy           # TorchServe also needs Java 17

usage::

    python benchmarks/serve_load.py [--reps 3] [--seconds 4] [--conc 1,16,64] [--only kiln-onnx,plain]
        [--rss-requests 100000] [--server-cpus 0] [--load-cpus 1]
    python benchmarks/serve_load.py --reps 3 --seconds 4      # the recorded run -> benchmarks/results/serve_load.json
    python benchmarks/serve_load.py --smoke                   # 1 s per concurrency, 2000-request RSS phase

Without the side venv the script says so and measures kiln's servers alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

QUESTION, TITLE = "serve_load", "Serving (issue 5)"
PEERS = harness.peers_dir("serve")
KILN_SERVERS = ("kiln-onnx", "kiln-torch")
PEER_SERVERS = ("plain", "ls-b16", "ts-b32")
DESCRIPTION = (
    "Every server answers one JSON sample per request with the peers' MLP 64-256-256-10 (seed 0, softmax outputs; "
    "kiln registers the same weights plus `nn.Softmax` into a temporary store; the script checks that every server "
    "returns the same probabilities). Servers are pinned to CPU {server_cpus} and the closed-loop load generator "
    "(asyncio + uvloop over raw keep-alive HTTP/1.1 on 127.0.0.1) to CPU {load_cpus}; servers are interleaved within "
    "each of {reps} repetitions, {seconds:g} s per concurrency, medians shown. Peers run from {peers} in "
    "`benchmarks/.venv-serve`: LitServe batching 16 / 5 ms (`ls-b16`), TorchServe batching 32 / 5 ms (`ts-b32`), bare "
    "Starlette + uvicorn with the model called inline (`plain`). kiln runs with its defaults (1 worker, 1 intra-op "
    "thread, max batch 64, max delay 0, access log on)."
)


# ---------------------------------------------------------------------------------------------- load generator
class _Connection(asyncio.Protocol):
    """One keep-alive connection of the closed loop: send, wait for the whole response, record, repeat."""

    def __init__(self, run: _Run) -> None:
        self.run, self.buffer, self.need, self.sent, self.index = run, bytearray(), -1, 0.0, 0
        self.transport: asyncio.Transport | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        request = self.run.next_request()
        if request is None:
            self.run.finished(self)
            return
        self.index, data = request
        self.buffer.clear()
        self.need = -1
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            start = head.find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start) if head.find(b"\r\n", start) > 0 else None])
            self.need, self.status = end + 4 + length, int(head[9:12])
            self.close_after = b"connection: close" in head
        if len(self.buffer) >= self.need:
            self.run.record(self.index, self.status, time.perf_counter() - self.sent)
            if self.close_after:  # the server said it closes: this client continues on a fresh connection
                assert self.transport is not None
                self.transport.close()
                self.run.connect(new_client=False)
            else:
                self.send()

    def connection_lost(self, error: Exception | None) -> None:
        if (self.need >= 0 and len(self.buffer) < self.need) or (self.need < 0 and self.buffer):
            self.run.error()
            self.run.connect(new_client=False)


class _Run:
    def __init__(self, port: int, requests: list[bytes], valid: list[bool], seconds: float, limit: int) -> None:
        self.port, self.requests, self.valid = port, requests, valid
        self.stop_at, self.limit = time.perf_counter() + seconds, limit
        self.issued = 0
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.active = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def next_request(self) -> tuple[int, bytes] | None:
        if self.issued >= self.limit or time.perf_counter() >= self.stop_at:
            return None
        index = self.issued % len(self.requests)
        self.issued += 1
        return index, self.requests[index]

    def record(self, index: int, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if self.valid[index]:
            if status == 200:
                self.latencies.append(seconds)
            else:
                self.errors += 1

    def error(self) -> None:
        self.errors += 1

    def connect(self, *, new_client: bool) -> None:
        """Open a connection for a new client, or a replacement for a client whose connection closed."""
        self.active += int(new_client)
        self.tasks.add(asyncio.get_running_loop().create_task(self._open()))

    async def _open(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: _Connection(self), "127.0.0.1", self.port)
        except OSError:
            self.errors += 1
            self.finished(None)

    def finished(self, connection: _Connection | None) -> None:
        if connection is not None and connection.transport is not None:
            connection.transport.close()
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)


async def _load(port: int, requests: list[bytes], valid: list[bool], conc: int, seconds: float, limit: int) -> dict:
    run = _Run(port, requests, valid, seconds, limit)
    started = time.perf_counter()
    for _ in range(conc):
        run.connect(new_client=True)
    await asyncio.wait_for(run.done, seconds + 60)
    duration = time.perf_counter() - started
    latencies = sorted(run.latencies)

    def pct(q: float) -> float:
        return 1e3 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": len(latencies), "duration_s": round(duration, 3), "rps": round(len(latencies) / duration, 1),
            "p50_ms": round(pct(0.50), 3), "p99_ms": round(pct(0.99), 3), "errors": run.errors,
            "statuses": {str(k): v for k, v in sorted(run.statuses.items())}}  # fmt: skip


def _http(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def loadgen_main(argv: list[str]) -> None:
    """``loadgen PORT PATH BODIES_JSON CONC SECONDS LIMIT``: BODIES_JSON is [[body, valid], ...]; prints JSON."""
    port, path, bodies_file, conc, seconds, limit = argv
    bodies = json.loads(Path(bodies_file).read_text())
    requests = [_http(path, body.encode("latin-1")) for body, _ in bodies]
    valid = [bool(ok) for _, ok in bodies]
    coroutine = _load(int(port), requests, valid, int(conc), float(seconds), int(limit))
    try:
        import uvloop

        result = uvloop.run(coroutine)
    except ImportError:  # plain asyncio costs the generator about a third of its rate
        result = asyncio.run(coroutine)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- servers
def _peers() -> Any:
    sys.path.insert(0, str(PEERS))
    spec = importlib.util.spec_from_file_location("bench_serve", PEERS / "bench_serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kiln_store(tmp: Path, peers_models: Any) -> Path:
    """The peers' MLP (same seed, same weights) plus the softmax their servers apply, registered in a temp store."""
    import torch
    from torch import nn

    from kiln.export import register_module
    from kiln.store import Store

    mlp = peers_models.build("mlp")
    module = nn.Sequential(*mlp.net, nn.Softmax(dim=-1)).eval()
    store = tmp / "store"
    with Store(store) as opened:
        register_module(module, "mlp", store=opened, example_input=torch.randn(2, 64))
    return store


def _configs(bench: Any, store: Path, port: int, side_python: str | None) -> dict[str, dict[str, Any]]:
    bench.PORT, bench.PY = port, str(side_python or sys.executable)
    peers = bench.cfgs("mlp")
    kiln = [sys.executable, "-m", "kiln.cli", "serve", "mlp@1", "--store", str(store), "--port", str(port)]
    configs = {
        "kiln-onnx": {"cmd": [*kiln, "--runtime", "onnx"], "health": "/readyz"},
        "kiln-torch": {"cmd": [*kiln, "--runtime", "torch"], "health": "/readyz"},
        # only with --only: the thread-count choice (2 intra-op threads on the server's one core)
        "kiln-onnx-threads2": {"cmd": [*kiln, "--runtime", "onnx", "--threads", "2"], "health": "/readyz"},
        "kiln-torch-threads2": {"cmd": [*kiln, "--runtime", "torch", "--threads", "2"], "health": "/readyz"},
    }
    for name in PEER_SERVERS:
        if side_python is not None and name in peers:  # the peers need their side venv
            configs[name] = peers[name]
    for name, config in configs.items():
        config.setdefault("env", dict(os.environ))
        config.setdefault("path", "/v1/models/mlp:predict" if name.startswith("kiln") else "/predict")
        config["key"] = "inputs" if name.startswith("kiln") else "input"
    return configs


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bench = _peers()
        self.tmp = Path(tempfile.mkdtemp(prefix="kiln-serve-bench-"))
        self.port = 8100 + os.getpid() % 500 * 4  # peers' TorchServe also uses port+1 and port+2
        self.store = _kiln_store(self.tmp, __import__("models"))
        self.configs = _configs(self.bench, self.store, self.port, args.side_python)
        import random

        random.seed(1)
        self.sample = [round(random.uniform(-1, 1), 4) for _ in range(64)]
        self.reference: list[float] | None = None

    def body_file(self, name: str, bodies: list[tuple[bytes, bool]]) -> Path:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps([[body.decode("latin-1"), ok] for body, ok in bodies]))
        return path

    def load(self, path: str, bodies: Path, conc: int, seconds: float, limit: int = 10**9) -> dict[str, Any]:
        command = harness.taskset([sys.executable, __file__, "loadgen", str(self.port), path, str(bodies), str(conc),
                            str(seconds), str(limit)], self.args.load_cpus)  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120).stdout
        line = [line for line in out.splitlines() if line.startswith("RESULT ")][-1]
        return dict(json.loads(line[7:]))

    @contextlib.contextmanager
    def server(self, name: str, *extra: str) -> Any:
        config = dict(self.configs[name])
        config["cmd"] = [*config["cmd"], *extra]
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 - closed below
        if "ts" in config:
            self.bench.ts_prepare(config, "mlp", str(self.tmp))
        config["cmd"] = harness.taskset(list(config["cmd"]), self.args.server_cpus)
        process, ready_s = self.bench.start(config, log)
        try:
            yield process, config, ready_s
        finally:
            self.bench.stop(process)
            log.close()

    def check_answer(self, name: str, config: dict[str, Any]) -> None:
        import httpx

        url = f"http://127.0.0.1:{self.port}{config['path']}"
        answer = httpx.post(url, json={config["key"]: self.sample}, timeout=30).json()
        output = answer.get("outputs", answer.get("output")) if isinstance(answer, dict) else answer
        output = output[0] if isinstance(output[0], list) else output
        assert len(output) == 10 and abs(sum(output) - 1) < 1e-3, (name, answer)
        if self.reference is None:
            self.reference = output
        assert max(abs(a - b) for a, b in zip(output, self.reference, strict=True)) < 1e-4, (name, output)

    def measure(self) -> list[dict[str, Any]]:
        rows = []
        default = [n for n in self.configs if "threads" not in n]
        names = [n for n in self.args.only.split(",") if n in self.configs] if self.args.only else default
        for rep in range(self.args.reps):
            for name in names:
                with self.server(name) as (_process, config, ready_s):
                    self.check_answer(name, config)
                    body = json.dumps({config["key"]: self.sample}).encode()
                    bodies = self.body_file(name, [(body, True)])
                    self.load(config["path"], bodies, 16, 2.0)  # warm-up
                    for conc in self.args.conc:
                        row = self.load(config["path"], bodies, conc, self.args.seconds)
                        row.update(server=name, conc=conc, rep=rep, ready_s=round(ready_s, 2),
                                   loadavg1=round(os.getloadavg()[0], 2))  # fmt: skip
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        return rows

    def rss(self) -> dict[str, Any]:
        """kiln-onnx RSS after warm-up vs after --rss-requests requests, a tenth of them hostile."""
        valid = json.dumps({"inputs": self.sample}).encode()
        hostile = [
            b'{"inputs": [' + b"0.5," * 20_000 + b"0.5]}",  # 413: over the 64 KiB body limit of this server
            json.dumps({"inputs": ["x"] * 64}).encode(),  # 422: wrong dtype
            json.dumps({"inputs": [[0.1] * 63]}).encode(),  # 422: wrong shape
            b'{"inputs": [[1, 2], [3]]}',  # 400: ragged
            b'{"inputs": [NaN' + b", 0.1" * 63 + b"]}",  # 400: NaN is not JSON
            b'{"inputs": [1e39' + b", 0.1" * 63 + b"]}",  # 422: not finite in float32
            b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # 400: too deep
            b'{"inputs": [0.1, 0.2',  # 400: truncated
            b"\xff\xfe",  # 400: not UTF-8
            b"[]",  # 400: not an object
        ]
        mix = [(valid, True)] * 90 + [(bad, False) for bad in hostile]
        with self.server("kiln-onnx", "--max-body-bytes", "65536") as (process, config, _):
            warm = self.body_file("rss-warm", [(valid, True)])
            self.load(config["path"], warm, 16, 5.0, limit=5_000)
            before = _rss_kib(process.pid)
            total, statuses = 0, {}
            started = time.perf_counter()
            while total < self.args.rss_requests and time.perf_counter() - started < 300:
                result = self.load(config["path"], self.body_file("rss-mix", mix), 64, 60.0,
                                   limit=self.args.rss_requests - total)  # fmt: skip
                total += sum(result["statuses"].values())
                for status, count in result["statuses"].items():
                    statuses[status] = statuses.get(status, 0) + count
            after = _rss_kib(process.pid)
        row = {"server": "kiln-onnx", "phase": "rss", "requests": total, "statuses": statuses,
               "rss_after_warmup_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1),
               "growth_pct": round(100 * (after - before) / before, 2)}  # fmt: skip
        print(json.dumps(row), flush=True)
        return row


def summarize(rows: list[dict[str, Any]], rss: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The median table over reps, and the target lines read from it."""
    keys = sorted({(r["server"], r["conc"]) for r in rows}, key=lambda k: (k[1], k[0]))
    cells, med = [], {}
    for key in keys:
        chosen = [r for r in rows if (r["server"], r["conc"]) == key]
        med[key] = {f: statistics.median(r[f] for r in chosen) for f in ("rps", "p50_ms", "p99_ms")}
        errors = sum(r["errors"] for r in chosen)
        cells.append([key[0], str(key[1]), f"{med[key]['rps']:.0f}", f"{med[key]['p50_ms']:.2f}",
                      f"{med[key]['p99_ms']:.2f}", str(errors), str(len(chosen))])  # fmt: skip
    spec = harness.table(["server", "conc", "req/s", "p50 ms", "p99 ms", "errors", "runs"], cells, align="llrrrrr")
    lines = []
    for kiln in KILN_SERVERS:
        if (kiln, 64) in med and ("ts-b32", 64) in med:
            k, t = med[(kiln, 64)], med[("ts-b32", 64)]
            lines.append(f"- {kiln} vs TorchServe at 64: {k['rps'] / t['rps']:.2f}x req/s (target >= 1.5x), "
                         f"p99 {k['p99_ms']:.2f} vs {t['p99_ms']:.2f} ms (target: no worse)")  # fmt: skip
        if (kiln, 64) in med and ("ls-b16", 64) in med:
            ratio = med[(kiln, 64)]["rps"] / med[("ls-b16", 64)]["rps"]
            lines.append(f"- {kiln} vs LitServe at 64: {ratio:.2f}x req/s (target >= 4x)")
        if (kiln, 1) in med and ("plain", 1) in med:
            gap = med[(kiln, 1)]["p50_ms"] - med[("plain", 1)]["p50_ms"]
            lines.append(f"- {kiln} p50 at 1 minus bare uvicorn's: {gap:+.3f} ms (target <= 1 ms)")
    if rss is not None:
        lines.append(f"- kiln-onnx RSS: {rss['rss_after_warmup_mib']} MiB after warm-up, {rss['rss_after_mib']} MiB "
                     f"after {rss['requests']} requests (statuses {rss['statuses']}): {rss['growth_pct']:+.2f}% "
                     "(target <= 10%)")  # fmt: skip
    return spec, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--conc", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--only", default="", help="comma-separated: kiln-onnx,kiln-torch,plain,ls-b16,ts-b32 "
                        "(also kiln-onnx-threads2, kiln-torch-threads2)")  # fmt: skip
    parser.add_argument("--rss-requests", type=int, default=100_000, help="0 skips the RSS phase")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for servers ('none': unpinned)")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list for the load generator")
    harness.add_result_arguments(parser, QUESTION)
    args = parser.parse_args()
    if args.smoke:
        args.reps, args.seconds, args.conc, args.rss_requests = 1, 1.0, [1, 8], 2000
    if not (PEERS / "bench_serve.py").is_file():
        raise SystemExit(f"{PEERS} has no bench_serve.py: the peers' serving harness (start/stop, the MLP) is needed")
    args.side_python = harness.side_python(".venv-serve", "the peers' servers (bare uvicorn, LitServe, TorchServe)")
    record = harness.new_run(args.run_name, packages=("torch", "onnxruntime", "uvicorn", "kiln"))
    bench = Bench(args)
    started = time.time()
    try:
        rows = bench.measure()
        rss = bench.rss() if args.rss_requests else None
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    raw = harness.raw_dir(args, QUESTION) / "rows.jsonl"
    with raw.open("a") as handle:
        for row in [*rows, *([rss] if rss else [])]:
            handle.write(json.dumps(row) + "\n")
    print(f"\n{len(rows)} runs in {time.time() - started:.0f} s; raw rows appended to {raw}\n")
    spec, targets = summarize(rows, rss)
    record["conditions"].append(f"{len(rows)} runs in {time.time() - started:.0f} s")
    description = DESCRIPTION.format(server_cpus=args.server_cpus, load_cpus=args.load_cpus, reps=args.reps,
                                     seconds=args.seconds, peers=PEERS)  # fmt: skip
    if args.side_python is None:
        description += " The peers' side venv was missing: kiln's servers only."
    record.update(description=description, tables=[spec], notes=targets, summary={"runs": rows, "rss": rss})
    print(harness.markdown_table(spec) + "\n\n" + targets)
    path = harness.result_path(args, QUESTION)
    harness.write_result(path, question=QUESTION, title=TITLE, run=harness.finish_run(record))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
    else:
        main()
