"""One car wiring: the parts a car is made of, put into the one loop, run, taken down.

``edgepilot drive``/``collect`` (camera + serial or I2C actuator), ``sim drive`` (the
simulator's camera and car), ``replay`` (a log and no motors) and the cloud's closed-loop
gate differ only in the ``CarParts`` they hand to ``drive_car``. What is built from a
profile (which camera, which actuator, which user input) is the deployable's business
(``vehicle.car``); how the parts meet, run and are shut down in order is this module's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepilot.config import Profile
from edgepilot.drive.loop import DriveLoop, LoopOptions, OnFrame
from edgepilot.drive.parts import Actuator, Closeable, Frame, Offloader, Pilot, Recorder, Source, UserInput
from edgepilot.drive.slot import ModelSlot

log = logging.getLogger(__name__)


@dataclass
class CarParts:
    source: Source
    actuator: Actuator
    slot: ModelSlot[Pilot] = field(default_factory=ModelSlot)
    user: UserInput | None = None  # None: the label recorded with each frame (replay)
    offload: Offloader | None = None
    recorder: Recorder | None = None
    observers: list[OnFrame] = field(default_factory=list)  # window, web page, progress bar
    extras: list[Closeable] = field(default_factory=list)  # closed after the drive, in order


class IdleWatch:
    """An observer that knows when the car last moved: parked = no throttle for a while
    (the car uploads its logs while parked)."""

    def __init__(self, idle_after_s: float) -> None:
        self.idle_after_s = idle_after_s
        self.moved_at = time.monotonic()

    def __call__(self, frame: Frame, info: dict[str, Any]) -> None:
        if info.get("throttle"):
            self.moved_at = time.monotonic()

    def idle(self) -> bool:
        return time.monotonic() - self.moved_at > self.idle_after_s


@dataclass
class CarRun:
    loop: DriveLoop
    result: dict[str, Any]
    wall_s: float


def car_options(profile: Profile, mode: str) -> LoopOptions:
    """Loop options of a real car from its profile: the camera's rate sets the offload
    deadline; auto-record (DonkeyCar's ``AUTO_RECORD_ON_THROTTLE``) or always on."""
    d = profile.drive
    return LoopOptions(
        mode=mode,
        throttle_cap=d.throttle_cap,
        record=not d.auto_record,
        auto_record=d.auto_record,
        delete_seconds=d.delete_seconds,
        deadline_s=1.0 / profile.camera.fps,
        rate_hz=d.rate_hz,  # a camera paces itself; a video file would not
        car_id=profile.car_id,
    )


def _fan_out(observers: list[OnFrame]) -> OnFrame | None:
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def each(frame: Frame, info: dict[str, Any]) -> None:
        for obs in observers:
            obs(frame, info)

    return each


def build_car(parts: CarParts, options: LoopOptions) -> DriveLoop:
    """The one place where a car's parts meet its loop."""
    return DriveLoop(
        parts.source,
        parts.actuator,
        model=parts.slot,
        user=parts.user,
        offload=parts.offload,
        recorder=parts.recorder,
        options=options,
        on_frame=_fan_out(parts.observers),
    )


def close_parts(parts: CarParts) -> None:
    """Source, recorder, offloader, then the extras; one failing does not keep the rest open."""
    closers: list[Callable[[], None]] = [parts.source.close]
    if parts.recorder is not None:
        closers.append(parts.recorder.close)
    if parts.offload is not None:
        closers.append(parts.offload.close)
    closers += [x.close for x in parts.extras]
    for close in closers:
        try:
            close()
        except Exception:  # noqa: BLE001 - shutting down: say it, close the others
            log.exception("closing a car part failed")


def drive_car(parts: CarParts, options: LoopOptions, max_frames: int | None = None) -> CarRun:
    """Build the car, drive until its source ends (or stop/SIGTERM), close every part."""
    loop = build_car(parts, options)
    t0 = time.perf_counter()
    try:
        loop.run(max_frames)
    finally:
        stats = None
        if parts.offload is not None:
            with contextlib.suppress(Exception):
                stats = dict(parts.offload.stats)
        close_parts(parts)
    res = loop.result()
    if stats is not None:
        res["offload"] = stats
    return CarRun(loop, res, time.perf_counter() - t0)
