"""The small contracts the onboard loop is composed of (DonkeyCar's part idea, typed).

A ``Source`` hands over frames (camera, simulator, replay); a ``Pilot`` turns a frame
into a command (the user, the expert, the early-exit autopilot); an ``Actuator`` moves
the car (serial motor controller, the simulator's car). The loop in ``vehicle.loop``
composes them; nothing else knows which concrete part it got, which is what lets live
camera, simulator and replay feed the very same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(slots=True)
class Frame:
    """One camera frame. ``image`` is BGR uint8 HxWx3; ``jpeg`` is set when the source
    already holds the encoded bytes (replay), so the recorder need not re-encode."""

    image: np.ndarray
    t: float  # seconds: wall clock for a camera, simulated clock for the simulator
    index: int
    jpeg: bytes | None = None
    label: tuple[float, float] | None = None  # (steering, throttle) recorded with it (replay)
    truth: dict[str, float] = field(default_factory=dict)  # simulator ground truth


@dataclass(slots=True)
class Command:
    steering: float = 0.0
    throttle: float = 0.0


class Source(Protocol):
    def read(self) -> Frame | None:
        """The newest frame, or None when the source has ended."""

    def close(self) -> None: ...


class Actuator(Protocol):
    def run(self, steering: float, throttle: float) -> None:
        """Send one command; never blocks the loop for long, never raises on a lost port."""

    def neutral(self) -> None:
        """Steering centre, throttle neutral (the safe command)."""

    def close(self) -> None:
        """Send neutral, then release the device."""


class Telemetry(Protocol):
    def publish(self, info: dict[str, Any]) -> None: ...
