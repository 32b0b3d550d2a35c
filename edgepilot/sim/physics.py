"""The car: a kinematic bicycle at RC scale, with actuator latency and noise.

A 1:10 DonkeyCar does not skid at the speeds it drives indoors, so the kinematic
bicycle model (no tyre forces) is what its motion looks like. Steering and throttle
are DonkeyCar's [-1, 1]: steering maps linearly to the front wheel angle, -1 full
left and +1 full right as in DonkeyCar (the world's yaw is counter-clockwise, so
positive steering turns it clockwise); throttle asks for a
fraction of top speed and the car gets there within its acceleration limits (an ESC
with speed control, which is how a car on a speed-limited profile behaves).

Latency: a command sent at time t reaches the wheels at t + latency, exactly — the
step is split at the moment it lands, so 30 ms of latency at a 50 ms step is 30 ms,
not "one step". Time is simulated, never read from the wall clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgepilot.schema.log import unit_command


@dataclass
class CarParams:
    wheelbase_m: float = 0.26
    max_steer_deg: float = 25.0
    max_speed: float = 2.5  # m/s at throttle 1
    max_reverse: float = 1.0  # m/s at throttle -1
    accel: float = 3.0  # m/s^2
    brake: float = 6.0  # m/s^2


@dataclass
class CarState:
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    v: float = 0.0
    steering: float = 0.0  # what the wheels are doing now (after latency and noise)
    throttle: float = 0.0


class Car:
    """Bicycle-model car whose commands land ``latency_s`` after they are sent."""

    def __init__(
        self,
        params: CarParams | None = None,
        *,
        latency_s: float = 0.0,
        actuator_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        if latency_s < 0 or not math.isfinite(latency_s):
            raise ValueError("latency must be a finite, non-negative number of seconds")
        self.p = params or CarParams()
        self.state = CarState()
        self.latency_s = latency_s
        self.actuator_noise = actuator_noise
        self._rng = np.random.default_rng([0xCA7, seed])
        self._pending: deque[tuple[float, float, float]] = deque()  # (lands_at, steering, throttle)
        self._max_steer = math.radians(self.p.max_steer_deg)

    def place(self, x: float, y: float, yaw: float, v: float = 0.0) -> None:
        s = self.state
        s.x, s.y, s.yaw, s.v = x, y, yaw, v

    def step(self, t: float, dt: float, steering: float, throttle: float) -> None:
        """Send (steering, throttle) at time ``t`` and advance the car to ``t + dt``.

        A NaN or infinite command is neutral, as on the real car's actuator
        (``unit_command``); clamped, NaN would be full left lock here."""
        steering = unit_command(steering)
        throttle = unit_command(throttle)
        if self.actuator_noise > 0:
            n = self._rng.standard_normal(2) * self.actuator_noise
            steering = unit_command(steering + n[0])
            throttle = unit_command(throttle + 0.5 * n[1])
        self._pending.append((t + self.latency_s, steering, throttle))
        now, end = t, t + dt
        s = self.state
        while now < end - 1e-12:
            if self._pending and self._pending[0][0] <= now + 1e-12:
                _, s.steering, s.throttle = self._pending.popleft()
                continue
            nxt = min(end, self._pending[0][0]) if self._pending else end
            self._integrate(nxt - now)
            now = nxt
        while self._pending and self._pending[0][0] <= end + 1e-12:  # lands exactly at the end
            _, s.steering, s.throttle = self._pending.popleft()

    def _integrate(self, h: float) -> None:
        """Exact motion over ``h`` seconds with constant wheel angle; speed ramps first."""
        s, p = self.state, self.p
        target = s.throttle * (p.max_speed if s.throttle >= 0 else p.max_reverse)
        dv = target - s.v
        limit = (p.accel if abs(target) > abs(s.v) and target * s.v >= 0 else p.brake) * h
        v0 = s.v
        s.v += max(-limit, min(limit, dv))
        v = 0.5 * (v0 + s.v)  # distance over the step uses the mean speed
        w = -v * math.tan(s.steering * self._max_steer) / p.wheelbase_m  # yaw rate (CCW)
        if abs(w) < 1e-9:
            s.x += v * h * math.cos(s.yaw)
            s.y += v * h * math.sin(s.yaw)
        else:
            yaw1 = s.yaw + w * h
            s.x += v / w * (math.sin(yaw1) - math.sin(s.yaw))
            s.y -= v / w * (math.cos(yaw1) - math.cos(s.yaw))
            s.yaw = math.remainder(yaw1, 2 * math.pi)

    def turning_radius(self, steering: float) -> float:
        """Radius of the circle driven at constant ``steering`` (inf when straight)."""
        t = math.tan(abs(steering) * self._max_steer)
        return math.inf if t == 0 else self.p.wheelbase_m / t
