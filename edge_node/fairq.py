"""The edge node's request queue: bounded, with a fair share of the worker per car.

One lane (a FIFO) per car, served by start-time fair queuing: every request gets a
virtual start tag, ``max(virtual time, the car's previous finish tag)``, and a finish tag,
start + its cost (the pixels it will decode). The worker always starts with the smallest
start tag, so a car that sends one frame now and then is served next however many
requests another car has queued: that car's tags run ahead of virtual time by everything
it has queued.

A micro-batch gathers, across cars, the requests whose start tag lies within one
``quantum`` of the batch's first: a car gets about its share of the quantum into each
batch. Eight cars with a few frames each still fill a batch of 16, while a car that
sends large frames back to back gets one per batch and never rides along in another
car's batch (its next tag is past the window).

Bounds: ``per_car`` requests per lane and ``total`` across lanes (when full, the newest
request of the longest lane makes room, so a flood cannot crowd out a car with a short
lane). A car whose lane overflows is *flooding*: no car sends more frames than it can
wait for, and ``per_car`` is many frame periods. The overflow is refused (the caller
answers it "throttled"), and for ``flood_memory_s`` after its latest overflow the car is
served at most ``flood_rate`` cost units a second, even by an otherwise idle node:
fair queuing alone would hand a flooder all the idle time, and a worker kept busy
by it answers every other car later on a machine with no core to spare (the worker
thread then competes for the CPU and the GIL instead of waking to an idle core).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Lane(Generic[T]):
    items: deque[tuple[float, float, T]] = field(default_factory=deque)  # (start, cost, item)
    finish: float = 0.0  # finish tag of the newest queued request


@dataclass(slots=True)
class _Penalty:
    """A flooding car: until when, and its service credit (cost units, refilled at the
    queue's ``flood_rate``)."""

    until: float
    credit: float = 0.0
    at: float = 0.0


@dataclass(slots=True)
class Admission(Generic[T]):
    """What ``push`` did: queued or not, and a request of another car it evicted."""

    queued: bool
    evicted: T | None = None
    evicted_car: str | None = None


class FairQueue(Generic[T]):
    """Not thread-safe: the caller holds its own lock around every call. ``now``: the
    caller's monotonic clock, in seconds."""

    def __init__(
        self, per_car: int, total: int, quantum: float, flood_rate: float, flood_memory_s: float = 1.0
    ) -> None:
        self.per_car = max(1, per_car)
        self.total = max(self.per_car, total)
        self.quantum = quantum
        self.flood_rate = flood_rate
        self.flood_memory_s = flood_memory_s
        self._lanes: dict[str, _Lane[T]] = {}
        self._penalties: dict[str, _Penalty] = {}
        self._n = 0
        self._vtime = 0.0  # start tag of the latest batch's first request

    def __len__(self) -> int:
        return self._n

    def backlog(self, car: str) -> int:
        lane = self._lanes.get(car)
        return len(lane.items) if lane is not None else 0

    def flooding(self, car: str, now: float) -> bool:
        pen = self._penalties.get(car)
        return pen is not None and now < pen.until

    def push(self, car: str, item: T, cost: float, now: float) -> Admission[T]:
        lane = self._lanes.get(car)
        if lane is None:
            # a car whose lane ran empty starts again at virtual time: its old finish tag
            # lies at most one request ahead of it, and forgetting it bounds the lanes kept
            lane = self._lanes[car] = _Lane()
        if len(lane.items) >= self.per_car:
            self._penalise(car, now)
            return Admission(False)
        out: Admission[T] = Admission(True)
        if self._n >= self.total:
            heavy_car, heavy = max(self._lanes.items(), key=lambda kv: len(kv[1].items))
            if len(heavy.items) <= len(lane.items) + 1:  # this car is (about) the heaviest itself
                self._drop_if_empty(car)
                self._penalise(car, now)
                return Admission(False)
            start, _, evicted = heavy.items.pop()
            heavy.finish = start
            self._n -= 1
            self._penalise(heavy_car, now)
            out = Admission(True, evicted, heavy_car)
        start = max(self._vtime, lane.finish)
        lane.finish = start + cost
        lane.items.append((start, cost, item))
        self._n += 1
        return out

    def _penalise(self, car: str, now: float) -> None:
        pen = self._penalties.get(car)
        if pen is None or now >= pen.until:
            if len(self._penalties) >= 1024:  # bounded: forget the penalties that have run out
                self._penalties = {c: p for c, p in self._penalties.items() if now < p.until}
            self._penalties[car] = _Penalty(now + self.flood_memory_s, 0.0, now)
        else:
            pen.until = now + self.flood_memory_s

    def _drop_if_empty(self, car: str) -> None:
        lane = self._lanes.get(car)
        if lane is not None and not lane.items:
            del self._lanes[car]

    def _wait_for(self, car: str, cost: float, now: float) -> float:
        """Seconds until the car may be served a request of ``cost`` (0: now)."""
        pen = self._penalties.get(car)
        if pen is None or now >= pen.until:
            return 0.0
        pen.credit = min(max(self.quantum, cost), pen.credit + (now - pen.at) * self.flood_rate)
        pen.at = now
        return 0.0 if pen.credit >= cost else (cost - pen.credit) / self.flood_rate

    def ready_in(self, now: float) -> float | None:
        """Seconds until a request may be served (0: now); None when none is queued."""
        waits = [self._wait_for(car, lane.items[0][1], now) for car, lane in self._lanes.items()]
        return min(waits) if waits else None

    def window(self, now: float) -> float | None:
        """Start a batch: virtual time moves to the smallest start tag a car may be served
        now; the batch may take requests tagged before the returned limit. None: none may."""
        heads = [
            lane.items[0][0]
            for car, lane in self._lanes.items()
            if self._wait_for(car, lane.items[0][1], now) == 0.0
        ]
        if not heads:
            return None
        self._vtime = max(self._vtime, min(heads))
        return min(heads) + self.quantum

    def take(self, limit: float, max_items: int, now: float) -> list[T]:
        """Up to ``max_items`` requests tagged before ``limit``, earliest tags first across
        cars (FIFO within a car), each within its car's credit if it floods."""
        out: list[T] = []
        heads = sorted((lane.items[0][0], car) for car, lane in self._lanes.items())
        for _, car in heads:
            lane = self._lanes[car]
            while lane.items and lane.items[0][0] < limit and len(out) < max_items:
                cost = lane.items[0][1]
                if self._wait_for(car, cost, now) > 0.0:
                    break
                pen = self._penalties.get(car)
                if pen is not None and now < pen.until:
                    pen.credit -= cost
                out.append(lane.items.popleft()[2])
                self._n -= 1
            self._drop_if_empty(car)
        return out


class PerCarRate:
    """A token bucket per car: ``allow(car, now)`` is True at most ``rate`` times a second
    (after a burst of ``burst``). Bounded: past ``max_cars`` cars it starts afresh, which
    can only let more through, never fewer."""

    def __init__(self, rate: float, burst: float, max_cars: int = 1024) -> None:
        self.rate = rate
        self.burst = burst
        self.max_cars = max_cars
        self._buckets: dict[str, tuple[float, float]] = {}  # car -> (tokens, at)

    def allow(self, car: str, now: float) -> bool:
        tokens, at = self._buckets.get(car, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        if car not in self._buckets and len(self._buckets) >= self.max_cars:
            self._buckets.clear()
        self._buckets[car] = (tokens - 1.0 if ok else tokens, now)
        return ok
