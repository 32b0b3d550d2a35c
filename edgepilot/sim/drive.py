"""One simulated drive: world + pilot (+ window) + recorder, step by step until done.

Kept apart from the CLI so the demo and tests can run a drive from Python. The frame a
record stores is the one the pilot saw; its ``sim`` truth is the state that frame
shows; its label is the command decided from it (the expert's answer even while a
perturbation bends what the car gets).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgepilot.drivelog import LogWriter
from edgepilot.progress import bar
from edgepilot.schema.log import Record, SessionMeta
from edgepilot.sim.expert import Expert
from edgepilot.sim.world import SimWorld

log = logging.getLogger(__name__)


class Window(Protocol):
    """What the drive needs of a window (``vehicle.ui.DriveWindow`` is the real one)."""

    mode: str
    recording: bool
    estop: bool
    quit: bool

    def poll(self) -> None: ...
    def user_command(self) -> tuple[float, float]: ...
    def take_delete_request(self) -> bool: ...
    def draw(self, frame: Any, world: SimWorld, info: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class DriveResult:
    world: SimWorld
    records: int = 0
    deleted: int = 0
    wall_s: float = 0.0
    quit_early: bool = False
    log_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_log(path: str | Path, world: SimWorld, notes: dict[str, Any]) -> LogWriter:
    """A driving log for a sim drive: source "sim", the track, the camera spec in meta."""
    meta = SessionMeta(
        session=uuid.uuid4().hex,
        created=time.time(),
        source="sim",
        car_id="sim-1",
        track=world.track.name,
        camera=world.camera.to_meta(),
        notes=notes,
    )
    # blocking: simulated time waits for the disk instead of dropping training frames
    return LogWriter(path, meta, block=True)


def run_drive(
    world: SimWorld,
    *,
    pilot: str,
    laps: int,
    max_seconds: float | None,
    expert: Expert | None = None,
    writer: LogWriter | None = None,
    window: Window | None = None,
    realtime: bool = False,
    delete_seconds: float = 5.0,
) -> DriveResult:
    """Drive until ``laps`` are done, ``max_seconds`` of simulated time pass, or the
    window is closed. ``pilot`` is "expert" or "keyboard" (the user through ``window``)."""
    res = DriveResult(world=world, log_dir=writer.path if writer else None)
    written: list[tuple[int, float]] = []  # (record index, sim time) for the delete key
    t0 = time.perf_counter()
    progress = bar(desc=f"sim {world.track.name}", unit="step")
    try:
        while not world.done(laps, max_seconds):
            frame = world.render() if (writer is not None or window is not None) else None
            truth = world.truth() if writer is not None else None
            mode = "local"
            pilot_cmd: tuple[float, float] | None = None
            if expert is not None:
                ls, lt, aps, apt = expert.act(world)
                pilot_cmd = (ls, lt)
            if window is not None:
                window.poll()
                if window.quit:
                    res.quit_early = True
                    break
                mode = window.mode if pilot_cmd is not None else "user"
                us, ut = window.user_command()
                if mode == "user":
                    ls, lt, aps, apt = us, ut, us, ut
                elif mode == "local_angle":
                    lt = apt = ut
            if window is not None and window.estop:
                aps = apt = 0.0
            world.step(aps, apt)
            recording = writer is not None and (window is None or window.recording)
            if recording:
                i = res.records
                rec = Record(
                    i=i,
                    t=round(world.t - world.dt, 4),
                    steering=_unit(ls),
                    throttle=_unit(lt),
                    mode=mode,
                    applied_steering=_unit(aps),
                    applied_throttle=_unit(apt),
                    pilot_steering=None if pilot_cmd is None else _unit(pilot_cmd[0]),
                    pilot_throttle=None if pilot_cmd is None else _unit(pilot_cmd[1]),
                    sim=truth or {},
                )
                writer.write(rec, frame)
                written.append((i, world.t))
                res.records += 1
            if window is not None:
                if writer is not None and window.take_delete_request():
                    res.deleted += _delete_last(writer, written, world.t, delete_seconds)
                window.draw(frame, world, {"recording": recording, "records": res.records})
            progress.update()
            if realtime:
                lag = world.t - (time.perf_counter() - t0)
                if lag > 0:
                    time.sleep(lag)
    finally:
        progress.close()
        res.wall_s = time.perf_counter() - t0
        if writer is not None:
            writer.close()
        if window is not None:
            window.close()
    return res


def _unit(v: float) -> float:
    return round(min(1.0, max(-1.0, float(v))), 4)


def _delete_last(writer: LogWriter, written: list[tuple[int, float]], now: float, seconds: float) -> int:
    """HydraMini's "delete the last N seconds" key: mark the records deleted, in place."""
    keep = [w for w in written if w[1] <= now - seconds + 1e-9]
    gone = written[len(keep) :]
    if not gone:
        return 0
    writer.delete(gone[0][0], gone[-1][0])
    written[:] = keep
    log.info("deleted records %d..%d (last %.1f s)", gone[0][0], gone[-1][0], seconds)
    return len(gone)
