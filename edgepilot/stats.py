"""Latency statistics: percentiles of a sample, and constant-memory stage histograms.

``pct`` summarises a list of measurements (benchmarks, the offload client's round trips).
For the onboard loop (DonkeyCar's part profiler, bounded) every stage (capture, preprocess, each exit, offload, actuate, record, and the whole
frame) gets a log-spaced histogram: constant memory however long the car drives, and
percentiles to within ~1.2% of the true value — good enough for p50/p99 and cheap enough
(one ``bisect``) to keep on the hot path.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from edgepilot.progress import table


def pct(values: Sequence[float], *qs: float, digits: int = 4) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` of ``values`` for each q in ``qs`` (default 50, 99);
    empty for an empty sample (a benchmark that measured nothing shows no figure)."""
    qs = qs or (50.0, 99.0)
    if len(values) == 0:
        return {}
    a = np.asarray(values, dtype=float)
    return {f"p{q:g}": round(float(np.percentile(a, q)), digits) for q in qs}


def mean(values: Iterable[float]) -> float:
    xs = list(values)
    return float(sum(xs) / len(xs)) if xs else math.nan

_LO_MS, _HI_MS, _BINS = 1e-3, 1e4, 1400
_EDGES = [_LO_MS * (_HI_MS / _LO_MS) ** (i / _BINS) for i in range(_BINS + 1)]


class Histogram:
    """Counts of durations (ms) in log-spaced bins, plus exact count, sum and max."""

    __slots__ = ("counts", "n", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * (_BINS + 2)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_right(_EDGES, ms)] += 1
        self.n += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), as the geometric centre of its bin."""
        if self.n == 0:
            return math.nan
        rank = max(1, math.ceil(self.n * q / 100.0))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                if i == 0:
                    return _EDGES[0]
                if i > _BINS:
                    return self.max
                return min(math.sqrt(_EDGES[i - 1] * _EDGES[i]), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def summary(self) -> dict[str, float]:
        return {
            "n": self.n,
            "mean": round(self.mean, 4),
            "p50": round(self.percentile(50), 4),
            "p90": round(self.percentile(90), 4),
            "p99": round(self.percentile(99), 4),
            "max": round(self.max, 4),
        }


class StageTimer:
    """Histograms by stage name; ``with timer("capture"): ...`` or ``timer.add(name, ms)``."""

    def __init__(self) -> None:
        self.stages: dict[str, Histogram] = {}

    def add(self, stage: str, ms: float) -> None:
        h = self.stages.get(stage)
        if h is None:
            h = self.stages[stage] = Histogram()
        h.add(ms)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - t0) * 1e3)

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: h.summary() for k, h in self.stages.items()}

    def table(self) -> str:
        rows = [
            [k, s["n"], s["mean"], s["p50"], s["p90"], s["p99"], s["max"]] for k, s in self.summary().items()
        ]
        return table(rows, ["stage", "calls", "mean ms", "p50", "p90", "p99", "max"])
