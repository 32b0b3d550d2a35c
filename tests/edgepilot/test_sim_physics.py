"""The bicycle model, its limits, latency and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepilot.sim.physics import Car, CarParams


def test_throttle_ramps_at_the_acceleration_limit_up_to_top_speed():
    p = CarParams()
    car = Car(p)
    car.step(0.0, 0.1, 0.0, 1.0)
    assert car.state.v == pytest.approx(p.accel * 0.1)
    for k in range(1, 60):
        car.step(0.1 * k, 0.1, 0.0, 1.0)
    assert car.state.v == pytest.approx(p.max_speed)
    assert car.state.y == pytest.approx(0.0) and car.state.yaw == pytest.approx(0.0)
    car.step(6.0, 0.1, 0.0, 0.0)
    assert car.state.v == pytest.approx(p.max_speed - p.brake * 0.1)


def test_full_right_lock_drives_a_clockwise_circle_of_the_bicycle_radius():
    p = CarParams()
    car = Car(p)
    car.place(0, 0, 0, v=1.0)
    xs, ys = [], []
    for k in range(400):
        car.step(0.02 * k, 0.02, 1.0, 0.4)
        xs.append(car.state.x)
        ys.append(car.state.y)
    expected = p.wheelbase_m / math.tan(math.radians(p.max_steer_deg))
    assert car.turning_radius(1.0) == pytest.approx(expected)
    xs, ys = np.array(xs[100:]), np.array(ys[100:])
    cx, cy = xs.mean(), ys.mean()  # many full turns: the mean is the centre
    r = np.hypot(xs - cx, ys - cy)
    assert r.mean() == pytest.approx(expected, rel=0.02)
    assert cy < 0  # +1 is right: the centre lies to the right of a car heading +x


@pytest.mark.parametrize("latency_ms", [30.0, 100.0])
def test_commands_land_exactly_latency_later(latency_ms):
    p = CarParams()
    car = Car(p, latency_s=latency_ms / 1000)
    dt = 0.05
    t = 0.0
    speeds = []
    for _ in range(6):
        car.step(t, dt, 0.0, 1.0)
        t += dt
        speeds.append(car.state.v)
    lat = latency_ms / 1000
    for k, v in enumerate(speeds, 1):
        moving = max(0.0, k * dt - lat)
        assert v == pytest.approx(min(p.max_speed, p.accel * moving), abs=1e-9)


def test_same_seed_same_noisy_drive():
    def drive(seed):
        car = Car(actuator_noise=0.1, seed=seed)
        for k in range(100):
            car.step(0.05 * k, 0.05, 0.2, 0.5)
        return car.state.x, car.state.y, car.state.yaw

    assert drive(1) == drive(1)
    assert drive(1) != drive(2)


def test_bad_latency_is_refused():
    with pytest.raises(ValueError):
        Car(latency_s=-0.1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_command_is_neutral_as_on_the_real_actuator(bad):
    """Clamped, NaN steering was full left lock in the simulator while the real car's
    actuator sends neutral (``vehicle.actuators._map``): the sim must not be harsher or
    kinder than the car to a broken pilot."""
    car = Car(CarParams())
    car.place(0, 0, 0, v=1.0)
    for k in range(10):
        car.step(0.1 * k, 0.1, bad, 0.0)
    assert car.state.yaw == pytest.approx(0.0) and car.state.y == pytest.approx(0.0)
    v0 = car.state.v
    car.step(1.0, 0.1, 0.0, bad)
    assert math.isfinite(car.state.v) and car.state.v <= v0  # neutral: never flooring it
