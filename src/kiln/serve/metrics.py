"""Prometheus metrics, written in the text exposition format (0.0.4) without a client library.

Labels come from a closed set (route templates, status codes, error kinds), never from what a client sends, so
hostile traffic cannot grow the series without bound. Each worker process keeps its own numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

__all__ = ["Histogram", "Metrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in pairs)
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Histogram:
    """Cumulative buckets, sum and count; ``observe`` is one bisect and two additions."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: tuple[tuple[str, str], ...] = ()) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_number(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class Metrics:
    """Every number ``/metrics`` reports for one worker.

    Example:
        >>> metrics = Metrics()
        >>> metrics.request("v1_predict", 200, 0.002)
        >>> b"kiln_requests_total" in metrics.render(queue_depth=0, ready=True, info={})
        True
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.errors: dict[str, int] = {}
        self.switches = {"ok": 0, "failed": 0}
        self.polls = 0
        self.poll_failures = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def switch(self, result: str) -> None:
        """A followed alias moved: the new version serves (``ok``) or failed to load (``failed``)."""
        self.switches[result] += 1

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self, *, queue_depth: int, ready: bool, info: dict[str, str]) -> bytes:
        lines = [
            "# HELP kiln_requests_total HTTP requests answered, by route and status code.",
            "# TYPE kiln_requests_total counter",
            *(f'kiln_requests_total{{route="{r}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())),
            "# HELP kiln_request_duration_seconds Time from request start to the last byte of the response.",
            "# TYPE kiln_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.lines("kiln_request_duration_seconds", (("route", route),))
        lines += [
            "# HELP kiln_errors_total Requests refused or failed, by kind.",
            "# TYPE kiln_errors_total counter",
            *(f'kiln_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())),
            "# HELP kiln_batch_size Samples per model call.",
            "# TYPE kiln_batch_size histogram",
            *self.batch_size.lines("kiln_batch_size"),
            "# HELP kiln_inference_duration_seconds Time of one model call (one batch).",
            "# TYPE kiln_inference_duration_seconds histogram",
            *self.inference.lines("kiln_inference_duration_seconds"),
            "# HELP kiln_queue_depth Requests waiting for a batch.",
            "# TYPE kiln_queue_depth gauge",
            f"kiln_queue_depth {queue_depth}",
            "# HELP kiln_ready 1 once the model is loaded and warmed up.",
            "# TYPE kiln_ready gauge",
            f"kiln_ready {int(ready)}",
            "# HELP kiln_model_switches_total Moves of a followed alias: the new version serving, or failing to load.",
            "# TYPE kiln_model_switches_total counter",
            *(f'kiln_model_switches_total{{result="{k}"}} {n}' for k, n in sorted(self.switches.items())),
            "# HELP kiln_alias_polls_total Reads of a followed alias from the store (0: the server does not follow).",
            "# TYPE kiln_alias_polls_total counter",
            f"kiln_alias_polls_total {self.polls}",
            "# HELP kiln_alias_poll_failures_total Reads of a followed alias that failed (the store unreachable, the "
            "alias removed); the server keeps serving its version meanwhile.",
            "# TYPE kiln_alias_poll_failures_total counter",
            f"kiln_alias_poll_failures_total {self.poll_failures}",
        ]
        if info:
            lines += [
                "# HELP kiln_model_info The model this worker serves.",
                "# TYPE kiln_model_info gauge",
                f"kiln_model_info{_labels(sorted(info.items()))} 1",
            ]
        return ("\n".join(lines) + "\n").encode()
