"""The simulator as parts of the onboard loop: a camera, a car, and the expert as 'user'.

``SimSource`` renders the world as it is now, ``SimActuator`` steps it by one frame per
command, exactly where a camera and a motor controller sit on the real car. The expert
rides along as the loop's user: its answer is the label every record keeps (so a model's
drive is also DAgger training data), and in user mode its (perturbed) command drives.
"""

from __future__ import annotations

from edgepilot.drive.parts import Frame, UserState
from edgepilot.sim.expert import Expert
from edgepilot.sim.world import SimWorld


class SimSource:
    """The simulator's camera: renders the world as it is now (the actuator steps it)."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.laps: int | None = None
        self.max_seconds: float | None = None

    def until(self, laps: int | None, max_seconds: float | None) -> SimSource:
        self.laps, self.max_seconds = laps, max_seconds
        return self

    def read(self) -> Frame | None:
        w = self.world
        if (self.laps or self.max_seconds) and w.done(self.laps or 10**9, self.max_seconds):
            return None
        return Frame(w.render(), w.t, w.frames, truth=w.truth())

    def close(self) -> None:
        pass


class SimActuator:
    """The simulator's car: each command advances simulated time by one step."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world

    def run(self, steering: float, throttle: float) -> None:
        self.world.step(steering, throttle)

    def neutral(self) -> None:
        pass

    def close(self) -> None:
        pass


class ExpertUser:
    """The expert as the loop's user: its clean answer is the label ("expert"), and what
    it applies (a perturbation that drives off the line to teach recovery) drives."""

    def __init__(self, expert: Expert, world: SimWorld) -> None:
        self.expert, self.world = expert, world

    def poll(self, frame: Frame) -> UserState:
        ls, lt, aps, apt = self.expert.act(self.world)
        applied = (aps, apt) if (aps, apt) != (ls, lt) else None
        return UserState(ls, lt, applied=applied, source="expert")
