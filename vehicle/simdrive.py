"""A simulated drive through the onboard loop: the simulator is just a source and an
actuator for ``vehicle.loop.DriveLoop``, exactly like a camera and a motor controller.

The expert rides along as the 'user': its answer is the label every record keeps (so a
model's drive is also DAgger training data), and in ``user`` mode it drives. A window,
when there is one, adds the keyboard/gamepad's requests (mode, record, e-stop, delete,
quit) and draws each frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from edgepilot.drivelog import LogWriter
from edgepilot.progress import bar
from vehicle.hotswap import ModelSlot
from vehicle.loop import DriveLoop, LoopOptions
from vehicle.parts import Frame
from vehicle.sources import SimActuator, SimSource
from vehicle.userinput import PilotUser


@dataclass
class SimDriveResult:
    loop: DriveLoop
    wall_s: float


def run_loop_drive(
    world: Any,
    *,
    expert: Any,
    slot: ModelSlot,
    laps: int,
    max_seconds: float | None,
    writer: LogWriter | None = None,
    window: Any = None,
    offload: Any = None,
    realtime: bool = False,
    mode: str = "local",
    delete_seconds: float = 5.0,
    car_id: str = "sim-1",
) -> SimDriveResult:
    """Drive ``world`` with the model in ``slot`` until ``laps`` or ``max_seconds``."""
    progress = bar(desc=f"sim {world.track.name}", unit="frame")

    def on_frame(frame: Frame, info: dict[str, Any]) -> None:
        progress.update()
        if window is not None:
            window.draw(frame.image, world, info)

    opts = LoopOptions(
        mode=mode,
        rate_hz=1.0 / world.dt if realtime else None,
        record=writer is not None,
        delete_seconds=delete_seconds,
        deadline_s=world.dt,
        car_id=car_id,
    )
    loop = DriveLoop(
        SimSource(world).until(laps, max_seconds),
        SimActuator(world),
        model=slot,
        user=PilotUser(window, expert, world),
        offload=offload,
        recorder=writer,
        options=opts,
        on_frame=on_frame,
    )
    t0 = time.perf_counter()
    try:
        loop.run()
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if window is not None:
            window.close()
    return SimDriveResult(loop, time.perf_counter() - t0)
