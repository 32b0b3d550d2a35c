"""The web controller's socket protocol: what a page may send, checked before it counts.

Every message from a page is one JSON object in one text frame, ``{"type": ..., ...}``,
with exactly the fields its type lists below: a missing or unknown field, a wrong type
(a bool is not a number), NaN or infinity, a value out of range, an oversize or binary
message are each refused with an ``{"type": "error"}`` answer naming what is wrong, and
the message goes no further; nothing reaches the user input, so nothing reaches the car.

Page -> car::

    drive             steering -1..1, throttle -1..1   (the stick; also the deadman heartbeat)
    mode              mode: user | local_angle | local
    record            on: bool
    estop             on: bool     (true: brake, user mode, hold neutral; false: release)
    erase             -            (delete the last N seconds of the log)
    throttle_scale    value 0..1
    constant_throttle on: bool
    takeover          -            (this page drives; the one driving becomes a viewer)
    video             on: bool     (camera frames to this page or not)
    ping              t: number    (answered with pong, t echoed: the page's round trip)

Car -> page: ``hello`` (settings, role), ``state`` (the HUD, per frame), ``deadman``
(the car went to neutral without being told: why and after how long), ``role``,
``error``, ``pong``; binary frames are camera JPEGs behind a 12-byte header
(``<dI``: server time in epoch milliseconds, frame index).
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.schema.log import MODES

VIDEO_HEADER = struct.Struct("<dI")


class ProtocolError(EdgepilotError):
    """A message from a page that is refused; the text is sent back to the page, with the
    message's type when it had a known one."""

    def __init__(self, text: str, kind: str | None = None) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True)
class Num:
    lo: float
    hi: float


BOOL = bool
SCHEMA: dict[str, dict[str, Any]] = {
    "drive": {"steering": Num(-1.0, 1.0), "throttle": Num(-1.0, 1.0)},
    "mode": {"mode": MODES},
    "record": {"on": BOOL},
    "estop": {"on": BOOL},
    "erase": {},
    "throttle_scale": {"value": Num(0.0, 1.0)},
    "constant_throttle": {"on": BOOL},
    "takeover": {},
    "video": {"on": BOOL},
    "ping": {"t": Num(-1e300, 1e300)},
}


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict[str, Any]


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a number: send finite numbers only")


def parse(raw: str | bytes, max_bytes: int) -> Message:
    """One page message, checked; ``ProtocolError`` says what is wrong and how to fix it."""
    if isinstance(raw, bytes | bytearray):
        raise ProtocolError("binary messages are not accepted: send JSON text")
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes is over the limit of {max_bytes} bytes")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"not valid JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(data, dict):
        raise ProtocolError('a message must be a JSON object like {"type": "drive", ...}')
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in SCHEMA:
        raise ProtocolError(f"unknown message type {kind!r} (known: {', '.join(SCHEMA)})")
    spec = SCHEMA[kind]
    extra = sorted(set(data) - set(spec) - {"type"})
    if extra:
        raise ProtocolError(
            f"{kind}: unknown field(s) {', '.join(extra)} (fields: {', '.join(spec) or 'none'})", kind
        )
    try:
        return Message(kind, {name: _field(kind, name, want, data) for name, want in spec.items()})
    except ProtocolError as e:
        raise ProtocolError(str(e), kind) from None


def _field(kind: str, name: str, want: Any, data: dict[str, Any]) -> Any:
    if name not in data:
        raise ProtocolError(f"{kind}: missing field {name!r}")
    v = data[name]
    where = f"{kind}.{name}"
    if want is BOOL:
        if not isinstance(v, bool):
            raise ProtocolError(f"{where}: expected true or false, got {v!r}")
        return v
    if isinstance(want, Num):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProtocolError(f"{where}: expected a number, got {v!r}")
        if not math.isfinite(v):
            raise ProtocolError(f"{where}: {v!r} is not a finite number")
        if not want.lo <= v <= want.hi:
            raise ProtocolError(f"{where}: {v!r} is outside {want.lo:g}..{want.hi:g}")
        return float(v)
    if v not in want:
        raise ProtocolError(f"{where}: {v!r} is not one of {', '.join(want)}")
    return v


class RateLimit:
    """A token bucket: ``rate`` messages per second sustained, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float | None = None, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 2)
        self.clock = clock
        self.tokens = self.burst
        self.t = clock()
        self.dropped = 0

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False


def error(text: str, kind: str | None = None) -> str:
    return json.dumps({"type": "error", "error": text, "for": kind})
