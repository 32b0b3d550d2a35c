"""The car's telemetry for the fleet: an observer of the loop that publishes, about once a
second, what the dashboard shows of a car (``fleet.CarTelemetry``, retained, with the
"offline" one as the connection's Last Will, so a car that vanishes says so)."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgepilot.drive.parts import Frame
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.stats import pct

log = logging.getLogger(__name__)

PARKED_AFTER_S = 3.0  # no throttle for this long: parked


@dataclass(slots=True)
class _Tick:
    t: float
    exit: int | None
    offloaded: bool
    edge_used: bool
    rtt_ms: float | None


def offline(car_id: str) -> bytes:
    """The Last Will: what the broker publishes for a car whose connection died."""
    return fleet.encode_car_telemetry(fleet.CarTelemetry(car=car_id, state="offline", at=time.time()))


class TelemetryPublisher:
    """Watches every frame's info; publishes a ``CarTelemetry`` every ``period_s``."""

    def __init__(
        self,
        conn: Connection,
        car_id: str,
        *,
        period_s: float = 1.0,
        window_s: float = 10.0,
        last_upload: Callable[[], tuple[str, float] | None] | None = None,
        interventions: Callable[[], int] | None = None,
    ) -> None:
        self.conn, self.car = conn, car_id
        self.topic = fleet.car_telemetry_topic(car_id)
        self.period_s, self.window_s = period_s, window_s
        self.last_upload, self.interventions = last_upload, interventions
        self._ticks: collections.deque[_Tick] = collections.deque()
        self._last_pub = 0.0
        self._moved_at = 0.0
        self._info: dict[str, Any] = {}
        self.published = 0

    def __call__(self, frame: Frame, info: dict[str, Any]) -> None:
        now = time.monotonic()
        self._ticks.append(_Tick(now, info.get("exit"), bool(info.get("offloaded")), bool(info.get("edge_used")), info.get("edge_rtt_ms")))
        while self._ticks and now - self._ticks[0].t > self.window_s:
            self._ticks.popleft()
        if info.get("throttle"):
            self._moved_at = now
        self._info = info
        if now - self._last_pub >= self.period_s:
            self._last_pub = now
            self.publish(self.snapshot(now))

    def snapshot(self, now: float | None = None) -> fleet.CarTelemetry:
        now = time.monotonic() if now is None else now
        info, ticks = self._info, list(self._ticks)
        model_ticks = [k for k in ticks if k.exit is not None]
        n = len(model_ticks)
        exits = collections.Counter(str(k.exit) for k in model_ticks)
        rtts = [k.rtt_ms for k in ticks if k.rtt_ms is not None]
        upload = self.last_upload() if self.last_upload else None
        return fleet.CarTelemetry(
            car=self.car,
            state="driving" if now - self._moved_at < PARKED_AFTER_S else "parked",
            model=info.get("model_version"),
            mode=info.get("mode"),
            loop_hz=info.get("loop_hz"),
            frames=int(info.get("frames", 0)),
            exit_rate={k: round(v / n, 4) for k, v in sorted(exits.items())} if n else {},
            offload_rate=round(sum(k.offloaded for k in model_ticks) / n, 4) if n else None,
            edge_used_rate=round(sum(k.edge_used for k in model_ticks) / n, 4) if n else None,
            edge_rtt_ms=pct(rtts, 50, 99, digits=2),
            takeovers=int(info.get("takeovers", 0)),
            interventions=self.interventions() if self.interventions else 0,
            recording=bool(info.get("recording")),
            records=int(info.get("records", 0)),
            last_upload=upload[0] if upload else None,
            last_upload_at=upload[1] if upload else None,
            window_s=self.window_s,
            at=time.time(),
        )

    def publish(self, t: fleet.CarTelemetry) -> None:
        if self.conn.publish(self.topic, fleet.encode_car_telemetry(t), qos=0, retain=True):
            self.published += 1

    def close(self) -> None:
        """The drive ended: the car says it is offline (its connection closes cleanly, so
        the Last Will does not fire)."""
        t = self.snapshot()
        t.state = "offline"
        info = self.conn.client.publish(self.topic, fleet.encode_car_telemetry(t), qos=1, retain=True)
        if self.conn.connected.is_set():
            info.wait_for_publish(1.0)
