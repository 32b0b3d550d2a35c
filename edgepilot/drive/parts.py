"""The small contracts the onboard loop is composed of (DonkeyCar's part idea, typed).

A ``Source`` hands over frames (camera, simulator, replay); a ``UserInput`` says what the
human (or the expert, or the recorded label) wants; a ``Pilot`` turns a frame into a
``Decision`` (the early-exit autopilot); an ``Offloader`` asks the edge about hard
frames; an ``Actuator`` moves the car (serial motor controller, I2C servo board, the
simulator's car); a ``Recorder`` keeps the driving log. ``edgepilot.drive.loop.DriveLoop``
composes them; nothing else knows which concrete part it got, which is what lets live
camera, simulator and replay feed the very same loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from edgepilot.schema.log import Record

Features = ArrayLike
"""One split point's output on the way through the pilot: a torch tensor (quantised on int8
stages) or an array. Named by what numpy can read, so the loop and the offload client need
no torch: the client packs it as a float array (``schema.features.pack_features``)."""


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
    label_source: str | None = None  # where a replayed label came from (schema.log.LABEL_SOURCES)


@dataclass(slots=True)
class UserState:
    """What the user (or the expert, or the recorded label) wants this frame.

    ``steering``/``throttle`` are the label; ``applied`` overrides what actually drives
    (the expert's perturbation: it drives off the line, the label says how to recover).
    ``source`` says whose label it is (``edgepilot.schema.log.LABEL_SOURCES``): "human" for
    a person at the keyboard, gamepad, phone or transmitter; "expert" for the simulator's
    ground truth; None when nobody gave one (an autopilot drive with no human)."""

    steering: float = 0.0
    throttle: float = 0.0
    applied: tuple[float, float] | None = None
    source: str | None = None
    mode: str | None = None  # request a mode switch
    record: bool | None = None  # request recording on/off
    estop: bool | None = None  # request e-stop on/off
    delete: bool = False  # delete the last N seconds of log
    quit: bool = False
    active: bool = False  # the human is touching the controls now (an intervention in autopilot)


class Source(Protocol):
    def read(self) -> Frame | None:
        """The newest frame, or None when the source has ended."""
        ...

    def close(self) -> None: ...


class Actuator(Protocol):
    def run(self, steering: float, throttle: float) -> None:
        """Send one command; never blocks the loop for long, never raises on a lost port."""
        ...

    def neutral(self) -> None:
        """Steering centre, throttle neutral (the safe command)."""
        ...

    def close(self) -> None:
        """Send neutral, then release the device."""
        ...


class UserInput(Protocol):
    def poll(self, frame: Frame) -> UserState: ...


class Decision(Protocol):
    """One frame's local answer (``edgepilot.model.runtime.Decision`` is the real one)."""

    steering: float
    throttle: float
    exit: int
    confidence: float
    hard: bool
    stage_ms: dict[str, float]
    outputs: Mapping[int, Features]  # each split point's output on the way (split offload)


class Pilot(Protocol):
    """A loaded, verified model: the loop's autopilot."""

    version: str

    def infer(self, image: np.ndarray) -> Decision: ...

    def warmup(self) -> None: ...


@dataclass(slots=True)
class EdgeAnswer:
    """The edge's answer to one offloaded frame, as the car sees it."""

    frame: int
    steering: float
    throttle: float
    confidence: float | None
    model: str | None
    node: str | None
    rtt_ms: float
    compute_ms: float | None = None
    batch: int | None = None
    queue_ms: float | None = None


class Offloader(Protocol):
    """Hard frames to the edge, never at the cost of a deadline (``edgepilot.offload``)."""

    @property
    def sends_features(self) -> bool: ...

    def track(self, model: Pilot, dec: Decision | None = None) -> None: ...

    def submit(
        self,
        frame_index: int,
        jpeg: bytes | None,
        deadline_s: float | None = None,
        *,
        features: Features | Mapping[int, Features] | None = None,
        stage: int | None = None,
        model: str | None = None,
    ) -> bool: ...

    def poll(self, frame_index: int, wait_until: float) -> EdgeAnswer | None: ...

    @property
    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Closeable(Protocol):
    def close(self) -> None: ...


class Recorder(Protocol):
    """A driving log being written (``edgepilot.drivelog.LogWriter``)."""

    path: Path

    def write(self, rec: Record, frame: np.ndarray | bytes | None = None) -> bool: ...

    def delete(self, first: int, last: int) -> None: ...

    def close(self) -> None: ...


class NullActuator:
    """Replay and benchmarks drive no motors: commands are only timed and recorded."""

    def run(self, steering: float, throttle: float) -> None:
        pass

    def neutral(self) -> None:
        pass

    def close(self) -> None:
        pass
