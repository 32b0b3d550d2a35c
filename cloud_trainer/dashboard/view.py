"""The fleet as the dashboard's page sees it, built from the bus's messages.

Sections of entities (``cars``, ``edges``, ``models``, ``runs``, ``registry``, ...), each
entity a JSON-ready dict replaced whole on every change and stamped with the view's change
counter (``seq``). A page is sent ``snapshot()`` once, then ``since(seq)``: only the
entities that changed after what it has, so a page on a slow link gets fewer, larger
updates rather than a growing backlog. A removed entity is sent as ``null``.

Frequent messages (car telemetry, edge health) are kept as they came (``raw``) and decoded
only when something reads the view: a fleet's 320 telemetry messages a second cost the
dashboard about 8% of a core to decode on arrival, while a page needs only each car's
newest one a few times a second (and, with no page open, the charts once a second).

Time series for the charts (``sample``) are kept here too, one point a second for the
last ``SERIES_POINTS`` seconds, so a page opened late still sees the recent past.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from edgepilot.schema import fleet, wire
from edgepilot.schema.wire import WireError

SERIES_POINTS = 600
STALE_AFTER_S = 5.0  # a car or edge that said nothing for this long (telemetry ~1 s, health 1 s)
SECTIONS = ("cars", "edges", "models", "runs", "registry", "bus")


def plain(obj: Any) -> dict[str, Any]:
    """A payload dataclass as a JSON-ready dict, shallow: its dict and list fields are the
    decoder's own fresh objects (``asdict`` deep-copies them, and cost 5x the decoding)."""
    return finite({f.name: getattr(obj, f.name) for f in fields(obj)})


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None: the page parses strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


@dataclass(frozen=True, slots=True)
class Raw:
    seq: int
    payload: bytes
    decode: Callable[[bytes], Any]
    seen: float
    topic: str


class FleetView:
    """Thread-safe: the MQTT thread writes, the web server's loop reads."""

    def __init__(
        self, on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._lock = threading.Lock()
        self.on_change = on_change or (lambda: None)
        self.clock = clock
        self.seq = 0
        self._data: dict[str, dict[str, tuple[int, Any]]] = {s: {} for s in SECTIONS}
        self._points: deque[tuple[int, dict[str, Any]]] = deque(maxlen=SERIES_POINTS)
        self._edge_prev: dict[str, tuple[float, int]] = {}  # node -> (time, answered) of the last sample
        self._raw: dict[tuple[str, str, str], Raw] = {}  # (section, key, field) -> not decoded yet
        self.on_bad: Callable[[str, WireError], None] = lambda where, e: None

    # -- writing ------------------------------------------------------------------------------
    def put(self, section: str, key: str, value: Any) -> None:
        """Set (or with None remove) one entity."""
        with self._lock:
            self.seq += 1
            self._data[section][key] = (self.seq, value)
        self.on_change()

    def get(self, section: str, key: str) -> Any:
        with self._reading():
            got = self._data[section].get(key)
        return None if got is None else got[1]

    def update(self, section: str, key: str, **fields: Any) -> None:
        """Replace some fields of one entity (made when missing); None fields are removed,
        and the entity with them when nothing is left."""
        with self._lock:
            for name in fields:  # newer than a payload of the same field still waiting
                self._raw.pop((section, key, name), None)
            old = self._data[section].get(key)
            new = {**(old[1] if old and old[1] else {}), **fields}
            new = {k: v for k, v in new.items() if v is not None}
            self.seq += 1
            self._data[section][key] = (self.seq, new if set(new) - {"seen"} else None)
        self.on_change()

    def raw(self, section: str, key: str, field_: str, payload: bytes, decode: Callable[[bytes], Any], topic: str) -> None:
        """The newest payload of one entity's field, decoded when the view is read."""
        with self._lock:
            self.seq += 1
            self._raw[(section, key, field_)] = Raw(self.seq, payload, decode, self.clock(), topic)
            old = self._data[section].get(key)
            self._data[section][key] = (self.seq, old[1] if old else None)
        self.on_change()

    def _settle(self) -> list[tuple[str, WireError]]:
        """Decode what came raw (under the lock); the messages that did not decode."""
        bad = []
        for (section, key, field_), r in self._raw.items():
            try:
                item = r.decode(r.payload)
            except WireError as e:
                bad.append((r.topic, e))
                continue
            old = self._data[section].get(key)
            value = {**(old[1] if old and old[1] else {}), field_: plain(item), "seen": r.seen}
            self._data[section][key] = (max(r.seq, old[0] if old else 0), value)
        self._raw.clear()
        return bad

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            bad = self._settle()
            yield
        for topic, e in bad:
            self.on_bad(topic, e)

    def car_telemetry(self, car: str, t: fleet.CarTelemetry | None) -> None:
        self.update("cars", car, telemetry=None if t is None else plain(t), seen=self.clock())

    def car_status(self, car: str, s: fleet.CarModelStatus | None) -> None:
        self.update("cars", car, status=None if s is None else plain(s), seen=self.clock())

    def edge_health(self, node: str, h: wire.EdgeHealth | None) -> None:
        self.update("edges", node, health=None if h is None else plain(h), seen=self.clock())

    def announcement(self, target: str, a: fleet.PushAnnouncement | None) -> None:
        keep = ("version", "parent", "counter", "expires", "rollback", "at", "size", "key_id")
        self.put("models", target, None if a is None else {k: getattr(a, k) for k in keep})

    def run_summary(self, r: fleet.RunSummary | None) -> None:
        self.put("runs", "bus", None if r is None else plain(r))

    # -- reading ------------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], int]:
        with self._reading():
            out = {s: {k: v for k, (_, v) in d.items() if v is not None} for s, d in self._data.items()}
            out["points"] = [p for _, p in self._points]
            return {**out, "now": self.clock()}, self.seq

    def since(self, seq: int) -> tuple[dict[str, Any] | None, int]:
        """What changed after ``seq`` (None: nothing), and the view's seq now."""
        with self._reading():
            if seq == self.seq:
                return None, seq
            out: dict[str, Any] = {}
            for s, d in self._data.items():
                changed = {k: v for k, (q, v) in d.items() if q > seq}
                if changed:
                    out[s] = changed
            points = [p for q, p in self._points if q > seq]
            if points:
                out["points"] = points
            return {**out, "now": self.clock()}, self.seq

    # -- the charts' time series -----------------------------------------------------------------
    def sample(self) -> dict[str, Any]:
        """One point of the fleet's time series, now (the server calls this every second)."""
        now = self.clock()
        with self._reading():
            cars = [v for _, v in self._data["cars"].values() if v and v.get("telemetry")]
            edges = {k: v for k, (_, v) in self._data["edges"].items() if v and v.get("health")}
        live = [
            c["telemetry"]
            for c in cars
            if c["telemetry"]["state"] != "offline" and now - c["seen"] < STALE_AFTER_S
        ]
        driving = [t for t in live if t["state"] == "driving"]
        p50s = [t["edge_rtt_ms"]["p50"] for t in driving if t["edge_rtt_ms"].get("p50") is not None]
        p99s = [t["edge_rtt_ms"]["p99"] for t in driving if t["edge_rtt_ms"].get("p99") is not None]
        point: dict[str, Any] = {
            "t": round(now, 3),
            "online": len(live),
            "driving": len(driving),
            "loop_hz": _mean([t["loop_hz"] for t in driving]),
            "offload": _mean([t["offload_rate"] for t in driving]),
            "edge_used": _mean([t["edge_used_rate"] for t in driving]),
            "rtt_p50": statistics.median(p50s) if p50s else None,
            "rtt_p99": max(p99s) if p99s else None,
            "edges": self._edge_points(edges, now),
        }
        point = finite(point)
        with self._lock:
            self.seq += 1
            self._points.append((self.seq, point))
        self.on_change()
        return point

    def _edge_points(self, edges: dict[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
        out = {}
        for node, e in edges.items():
            h = e["health"]
            if h.get("status") != "up" or now - e["seen"] >= STALE_AFTER_S:
                continue
            prev = self._edge_prev.get(node)
            rate = None
            if prev and now > prev[0] and h["answered"] >= prev[1]:
                rate = (h["answered"] - prev[1]) / (now - prev[0])
            self._edge_prev[node] = (now, h["answered"])
            out[node] = {"p50": h.get("latency_p50_ms"), "p99": h.get("latency_p99_ms"), "answered_s": rate}
        return out


def _mean(vals: list[Any]) -> float | None:
    nums = [float(v) for v in vals if isinstance(v, int | float)]
    return sum(nums) / len(nums) if nums else None
