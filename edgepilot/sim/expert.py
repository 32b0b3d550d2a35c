"""The expert pilot: pure pursuit on the centerline with a curvature speed profile.

It knows the truth (pose, track), not the image, and is what makes training data
without a human. With ``perturb > 0`` it now and then pushes the steering off for a
moment and lets the car recover: the *label* stays the expert's own answer for the
state the car is really in, so the data holds recoveries from off-centre poses (the
DAgger idea; behaviour cloning on perfect driving alone never sees one).

The speed profile: the fastest speed at which the lateral acceleration stays within
``a_lat`` on the local curvature, then a backward pass so the car brakes *before* a
hairpin rather than in it, and a look-ahead of the actuator latency plus a bit.
"""

from __future__ import annotations

import math

import numpy as np

from edgepilot.sim.tracks import SPACING_M, Track
from edgepilot.sim.world import SimWorld


class Expert:
    """``act(world)`` -> (label_steer, label_thr, applied_steer, applied_thr)."""

    def __init__(
        self,
        track: Track,
        *,
        perturb: float = 0.0,
        seed: int = 0,
        cruise: float = 2.0,
        a_lat: float = 2.2,
        a_dec: float = 2.5,
    ) -> None:
        self.track = track
        self.perturb = max(0.0, float(perturb))
        self.cruise = cruise
        self._rng = np.random.default_rng([0xE4E27, seed])
        self.speed = speed_profile(track, cruise=cruise, a_lat=a_lat, a_dec=a_dec)
        self._pert_until = 0.0
        self._pert_next = self._rng.uniform(1.0, 3.0)
        self._pert_amp = 0.0
        self._pert_start = 0.0

    def command(self, world: SimWorld) -> tuple[float, float]:
        """The expert's (steering, throttle) for the world's current state."""
        tr = self.track
        car = world.car
        s = car.state
        lat = world.latency_ms / 1000.0
        # where the car will be when this command lands: a straight-line prediction
        px = s.x + s.v * lat * math.cos(s.yaw)
        py = s.y + s.v * lat * math.sin(s.yaw)
        ld = min(1.6, max(0.6, 0.45 + 0.35 * abs(s.v)))
        n = len(tr.pts)
        ahead = int(round((ld + s.v * lat) / SPACING_M))
        i = (world.index + ahead) % n
        tx, ty = tr.pts[i]
        dx, dy = tx - px, ty - py
        alpha = math.atan2(dy, dx) - s.yaw
        dist = max(math.hypot(dx, dy), 1e-3)
        delta = math.atan2(2 * car.p.wheelbase_m * math.sin(alpha), dist)
        # delta > 0 is a left turn; DonkeyCar steering is -1 full left
        steer = max(-1.0, min(1.0, -delta / math.radians(car.p.max_steer_deg)))
        j = (world.index + int(round((0.3 + s.v * (lat + 0.15)) / SPACING_M))) % n
        v_target = float(self.speed[j])
        thr = v_target / car.p.max_speed
        return steer, max(-1.0, min(1.0, thr))

    def act(self, world: SimWorld) -> tuple[float, float, float, float]:
        steer, thr = self.command(world)
        applied = steer
        if self.perturb > 0:
            applied = max(-1.0, min(1.0, steer + self._perturbation(world)))
        return steer, thr, applied, thr

    def _perturbation(self, world: SimWorld) -> float:
        """A smooth bump of steering offset now and then; cut short once the car is well
        off-centre so that it leaves the road rarely but still has to recover."""
        t = world.t
        if t >= self._pert_until and t >= self._pert_next:
            dur = float(self._rng.uniform(0.3, 1.0))
            self._pert_start = t
            self._pert_until = t + dur
            self._pert_next = t + dur + float(self._rng.uniform(1.0, 3.0))
            self._pert_amp = (
                self.perturb * float(self._rng.uniform(0.5, 1.0)) * float(self._rng.choice([-1, 1]))
            )
        if t < self._pert_until:
            if abs(world.cte) > 0.3 * self.track.width_m:
                self._pert_until = t
                return 0.0
            ph = (t - self._pert_start) / max(self._pert_until - self._pert_start, 1e-6)
            return self._pert_amp * math.sin(math.pi * ph)
        return 0.0


def speed_profile(track: Track, *, cruise: float, a_lat: float, a_dec: float) -> np.ndarray:
    """Target speed (m/s) per resampled centerline point."""
    k = np.abs(track.curvature())
    # a bend is felt a little before and after its apex: widen with a running max
    w = max(1, int(round(0.3 / SPACING_M)))
    kk = np.max(np.stack([np.roll(k, s) for s in range(-w, w + 1)]), axis=0)
    v = np.minimum(cruise, np.sqrt(a_lat / np.maximum(kk, 1e-6)))
    v = np.maximum(v, 0.5)
    n = len(v)
    for _ in range(2):  # backward pass around the loop: brake in time
        for i in range(n - 1, -1, -1):
            j = (i + 1) % n
            v[i] = min(v[i], math.sqrt(v[j] ** 2 + 2 * a_dec * SPACING_M))
    return v
