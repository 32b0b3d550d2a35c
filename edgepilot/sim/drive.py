"""One simulated drive from Python: world + expert (+ window) + recorder, until done.

The drive itself runs through the onboard loop (``vehicle.simdrive.run_loop_drive``),
the same loop that drives the real car; this module keeps the simulator's side: the
log's session metadata and a small result. The frame a record stores is the one the
pilot saw; its ``sim`` truth is the state that frame shows; its label is the expert's
(or the user's) answer even while a perturbation bends what the car gets.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgepilot.drivelog import LogWriter
from edgepilot.schema.log import SessionMeta
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
    slot: Any = None,
    offload: Any = None,
    car_id: str = "sim-1",
) -> DriveResult:
    """Drive until ``laps`` are done, ``max_seconds`` of simulated time pass, or the
    window is closed. ``pilot``: "expert", "keyboard" (the user through ``window``), or
    "model" (the model in ``slot``, a ``vehicle.hotswap.ModelSlot``; hard frames go to
    ``offload`` when given).

    The drive runs through the onboard loop (``vehicle.simdrive``), the same loop that
    drives the real car; the expert rides along as the labeller."""
    from vehicle.hotswap import ModelSlot
    from vehicle.simdrive import run_loop_drive

    expert = expert or Expert(world.track)
    mode = "user" if pilot == "keyboard" else "local"
    if window is not None:
        window.mode = mode
    run = run_loop_drive(
        world,
        expert=expert,
        slot=slot if slot is not None else ModelSlot(None),
        laps=laps,
        max_seconds=max_seconds,
        writer=writer,
        window=window,
        offload=offload,
        realtime=realtime,
        mode=mode,
        delete_seconds=delete_seconds,
        car_id=car_id,
    )
    st = run.loop.stats
    return DriveResult(
        world=world,
        records=st.recorded,
        deleted=st.deleted,
        wall_s=run.wall_s,
        quit_early=st.quit,
        log_dir=writer.path if writer else None,
        extra={"loop": run.loop},
    )
