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
from vehicle.loop import DriveLoop, LoopOptions, UserState
from vehicle.parts import Frame
from vehicle.sources import SimActuator, SimSource


class ExpertUser:
    """The expert's label for each frame, plus the window's requests when there is one."""

    def __init__(self, world: Any, expert: Any, window: Any = None, keyboard: bool = False) -> None:
        self.world, self.expert, self.window, self.keyboard = world, expert, window, keyboard
        self._mode: str | None = None
        self._rec: bool | None = None
        self._estop = False

    def poll(self, frame: Frame) -> UserState:
        ls, lt, aps, apt = self.expert.act(self.world)
        st = UserState(ls, lt, applied=(aps, apt) if (aps, apt) != (ls, lt) else None)
        w = self.window
        if w is None:
            return st
        w.poll()
        if self.keyboard or w.mode == "user":
            us, ut = w.user_command()
            st = UserState(us, ut)
        if w.mode != self._mode:
            st.mode = self._mode = w.mode
        if w.recording != self._rec:
            st.record = self._rec = w.recording
        if w.estop != self._estop:
            st.estop = self._estop = w.estop
        st.delete = w.take_delete_request()
        st.quit = w.quit
        return st


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
        user=ExpertUser(world, expert, window, keyboard=False),
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
