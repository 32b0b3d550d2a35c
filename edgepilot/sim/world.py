"""The closed-loop world: track + car + camera + score, advanced in fixed steps.

``SimWorld`` is what both the sim CLI and the onboard loop (``edgepilot.drive.loop``) drive:
``render()`` the camera, decide, ``step(steering, throttle)``, repeat until ``done()``.
Time is simulated (``t``), so a drive is reproducible bit for bit and runs as fast as
the machine allows; pacing to the wall clock is the caller's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgepilot.sim.camera import CameraSpec
from edgepilot.sim.physics import Car, CarParams
from edgepilot.sim.render import Renderer
from edgepilot.sim.scoring import LapCounter, Score
from edgepilot.sim.tracks import Track


@dataclass
class Trail:
    """Per-step history for the trajectory plot and the minimap."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    cte: list[float] = field(default_factory=list)
    interventions: list[tuple[float, float]] = field(default_factory=list)  # where the car left

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.x), np.array(self.y), np.array(self.cte)


class SimWorld:
    """One car on one track. See the module docstring for the loop."""

    def __init__(
        self,
        track: Track,
        *,
        scene_seed: int = 0,
        latency_ms: float = 0.0,
        dt: float = 0.05,
        randomize: bool = False,
        seed: int = 0,
        actuator_noise: float = 0.0,
        camera: CameraSpec | None = None,
        car: CarParams | None = None,
        start_index: int = 0,
        keep_trail: bool = True,
    ) -> None:
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError("dt must be a positive number of seconds")
        self.track = track
        self.dt = dt
        self.latency_ms = latency_ms
        self.camera = camera or CameraSpec()
        self.car = Car(car, latency_s=latency_ms / 1000.0, actuator_noise=actuator_noise, seed=seed)
        self._renderer: Renderer | None = None
        self._render_args = {"scene_seed": scene_seed, "randomize": randomize, "seed": seed}
        self.t = 0.0
        self.frames = 0
        self.score = Score()
        self.trail = Trail() if keep_trail else None
        self.start_index = start_index % len(track.pts)
        self._laps = LapCounter(len(track.pts), start_index=self.start_index)
        x, y = track.pts[self.start_index]
        self.car.place(float(x), float(y), track.heading(self.start_index))
        self._idx, self.cte = track.nearest(x, y)
        self._frame: np.ndarray | None = None
        self.last_intervention = False

    @property
    def renderer(self) -> Renderer:
        """Built on first use: physics-only users (expert sweeps) never paint a floor."""
        if self._renderer is None:
            self._renderer = Renderer(self.track, self.camera, **self._render_args)
        return self._renderer

    @property
    def index(self) -> int:
        """Nearest resampled centerline point (``track.pts``) to the car."""
        return self._idx

    def render(self) -> np.ndarray:
        """BGR uint8 (height, width, 3): the car camera's current view (cached per step)."""
        if self._frame is None:
            s = self.car.state
            self._frame = self.renderer.render(s.x, s.y, s.yaw, self.t, self.frames)
        return self._frame

    def step(self, steering: float, throttle: float) -> None:
        """Send a command now, advance ``dt``, then score the new position."""
        self.car.step(self.t, self.dt, steering, throttle)
        self.t += self.dt
        self.frames += 1
        self._frame = None
        s = self.car.state
        tr = self.track
        self._idx, self.cte = tr.nearest(s.x, s.y, self._idx)
        raw_cte = self.cte
        self.last_intervention = abs(raw_cte) > tr.width_m / 2
        if self.last_intervention:
            self.score.interventions += 1
            if self.trail is not None:
                self.trail.interventions.append((s.x, s.y))
            px, py = tr.pts[self._idx]
            self.car.place(float(px), float(py), tr.heading(self._idx), 0.0)
            self.cte = 0.0
        self._laps.update(self._idx)
        sc = self.score
        sc.laps = self._laps.laps
        sc.elapsed_s = self.t
        sc.frames = self.frames
        sc.sum_abs_cte += abs(raw_cte)  # the error that caused an intervention counts too
        if self.trail is not None:
            self.trail.x.append(s.x)
            self.trail.y.append(s.y)
            self.trail.cte.append(self.cte)

    def truth(self) -> dict[str, float]:
        """Ground truth for ``Record.sim`` (flat floats, metres/radians/seconds)."""
        s = self.car.state
        return {
            "x": round(s.x, 4),
            "y": round(s.y, 4),
            "yaw": round(s.yaw, 5),
            "v": round(s.v, 4),
            "cte": round(self.cte, 4),
            "lap": float(self._laps.laps),
            "progress": round(self._laps.progress(self._idx), 5),
            "heading_err": round(math.remainder(s.yaw - self.track.heading(self._idx), 2 * math.pi), 5),
            "interventions": float(self.score.interventions),
            "t": round(self.t, 4),
        }

    def done(self, laps: int, max_seconds: float | None = None) -> bool:
        return self.score.laps >= laps or (max_seconds is not None and self.t >= max_seconds - 1e-9)
