"""The edge node's counters and histograms, published on its health topic.

Histograms rather than raw samples: a node answering 240 frames/s for a day would
otherwise keep millions of floats. Percentiles are read off the cumulative buckets (an
upper bound of the true percentile, which is the honest direction for a latency).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from edgepilot.schema.wire import EdgeHealth

LATENCY_BOUNDS_MS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 33, 50, 100, 250, 1000)
THROTTLED_CARS_KEPT = 1024  # cars counted by name; more (random topic levels) count as "(others)"
THROTTLED_CARS_SHOWN = 32  # the health names the cars throttled most


class EdgeMetrics:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.n_answered = 0
        self.dropped_expired = 0
        self.errors = 0
        self.error_reasons: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()  # car -> requests refused for its fair share
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()
        self.latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self._lock = threading.Lock()

    def error(self, why: str) -> None:
        with self._lock:  # the network thread refuses oversized frames, the worker the rest
            self.errors += 1
            self.error_reasons[why.split(":")[0][:60]] += 1

    def throttle(self, car: str) -> None:
        with self._lock:
            if car not in self.throttled and len(self.throttled) >= THROTTLED_CARS_KEPT:
                car = "(others)"
            self.throttled[car] += 1

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batch_sizes[size] += 1

    def answered(self, latency_s: float) -> None:
        ms = latency_s * 1e3
        i = next((k for k, b in enumerate(LATENCY_BOUNDS_MS) if ms <= b), len(LATENCY_BOUNDS_MS))
        with self._lock:
            self.latency[i] += 1
            self.n_answered += 1

    def percentile(self, q: float) -> float | None:
        with self._lock:
            counts = list(self.latency)
        total = sum(counts)
        if not total:
            return None
        need, seen = q * total, 0
        for k, c in enumerate(counts):
            seen += c
            if seen >= need:
                return float(LATENCY_BOUNDS_MS[min(k, len(LATENCY_BOUNDS_MS) - 1)])
        return None

    def snapshot(self, node: str, model: str | None) -> EdgeHealth:
        labels = [f"<={b}" for b in LATENCY_BOUNDS_MS] + [f">{LATENCY_BOUNDS_MS[-1]}"]
        with self._lock:
            throttled = Counter(self.throttled)
        return EdgeHealth(
            node=node,
            status="up",
            model=model,
            requests=self.requests,
            answered=self.n_answered,
            dropped_expired=self.dropped_expired,
            errors=self.errors,
            batches=self.batches,
            batch_sizes={str(k): v for k, v in sorted(self.batch_sizes.items())},
            latency_ms={lab: c for lab, c in zip(labels, self.latency, strict=True) if c},
            latency_p50_ms=self.percentile(0.5),
            latency_p99_ms=self.percentile(0.99),
            uptime_s=round(time.monotonic() - self.started, 3),
            throttled=sum(throttled.values()),
            throttled_cars=dict(throttled.most_common(THROTTLED_CARS_SHOWN)),
        )
