"""``HumanControl``: the remote human's command as the loop sees it (deadman, re-arm,
e-stop brake, throttle scale and constant throttle, labels). A stepped clock replaces
``time`` in the module, so the deadman's boundaries are exact, not raced."""

from __future__ import annotations

import numpy as np
import pytest

import vehicle.controls as controls
from edgepilot.drive.parts import Frame, UserState
from vehicle.controls import HumanControl, next_mode

FRAME = Frame(np.zeros((2, 2, 3), np.uint8), 0.0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(controls, "time", c)
    return c


def frames(h: HumanControl, clock: Clock, n: int, period: float = 0.05) -> UserState:
    """``n`` loop frames ``period`` apart; the last one's state."""
    st = UserState()
    for _ in range(n):
        clock.now += period
        st = h.poll(FRAME)
    return st


def test_deadman_trips_one_period_before_it_is_due_and_rearms_at_zero(clock):
    h = HumanControl(deadman_s=0.23)
    frames(h, clock, 5)  # the loop's period is known: 50 ms
    h.command(0.3, 0.6)
    last = clock.now
    st = frames(h, clock, 3)  # 150 ms of silence; the next frame comes at 200 < 230
    assert (st.steering, st.throttle) == (0.3, 0.6) and h.trip is None
    st = frames(h, clock, 1)  # 200 ms: waiting for the next frame (250) would be late
    assert (st.steering, st.throttle) == (0.0, 0.0)
    assert h.trip is not None and h.trip.reason == "silent"
    assert h.trip.silent_ms == pytest.approx((clock.now - last) * 1e3)
    h.command(0.3, 0.6)  # the page comes back with the stick still forward: not yet
    assert frames(h, clock, 1).throttle == 0.0
    h.command(0.3, 0.0)  # back at zero: armed again
    h.command(0.3, 0.6)
    assert frames(h, clock, 1).throttle == 0.6
    assert h.trips == 1


def test_deadman_only_watches_the_modes_where_the_human_throttles(clock):
    h = HumanControl(deadman_s=0.25, mode="local")
    frames(h, clock, 3)
    h.command(0.0, 0.5)
    frames(h, clock, 10)  # 500 ms of silence while the autopilot drives
    assert h.trip is None
    h.observe({"mode": "local_angle"})
    assert frames(h, clock, 1).throttle == 0.0 and h.trip is not None


def test_silence_at_neutral_is_not_reported(clock):
    h = HumanControl(deadman_s=0.25)
    h.command(0.0, 0.0)
    frames(h, clock, 10)
    assert h.trip is None and h.trips == 0


def test_lost_controller_goes_neutral_at_the_next_frame(clock):
    h = HumanControl(deadman_s=0.25)
    h.command(-0.5, 0.4)
    assert frames(h, clock, 1).throttle == 0.4
    h.lost("page closed")
    st = frames(h, clock, 1)
    assert (st.steering, st.throttle) == (0.0, 0.0) and h.trip.reason == "lost"


def test_estop_while_driving_forward_brakes_then_holds(clock):
    h = HumanControl(deadman_s=0.25, brake_s=0.2, brake_throttle=0.5, mode="local")
    h.observe({"mode": "local", "throttle": 0.4, "recording": True})
    h.set_throttle(constant=True)
    h.estop()
    st = frames(h, clock, 1)
    assert st.mode == "user" and st.record is False and st.estop is None and st.throttle == -0.5
    assert not h.constant_throttle
    st = frames(h, clock, 3)  # 200 ms of brake in all
    assert st.throttle == -0.5 and st.estop is None
    st = frames(h, clock, 1)
    assert st.estop is True and st.throttle == 0.0
    h.estop(False)
    assert frames(h, clock, 1).estop is False


def test_estop_at_standstill_holds_at_once(clock):
    h = HumanControl()
    h.observe({"mode": "user", "throttle": 0.0})
    h.estop()
    st = frames(h, clock, 1)
    assert st.estop is True and st.throttle == 0.0 and st.mode == "user"


def test_throttle_scale_and_constant_throttle(clock):
    h = HumanControl(deadman_s=0.25)
    h.set_throttle(scale=0.5)
    h.command(0.2, 0.8)
    assert frames(h, clock, 1).throttle == pytest.approx(0.4)
    h.set_throttle(constant=True)
    h.command(0.2, 0.0)
    assert frames(h, clock, 1).throttle == pytest.approx(0.5)
    frames(h, clock, 6)  # silent: constant throttle is dropped with the trip
    assert not h.constant_throttle and frames(h, clock, 1).throttle == 0.0


def test_requests_are_reported_once():
    h = HumanControl()
    h.observe({"mode": "user", "recording": False})
    h.request_record()  # toggles what the loop last reported
    h.request_erase()
    assert h.cycle_mode(autopilot=True) == "local_angle"
    st = h.poll(FRAME)
    assert st.record is True and st.delete and st.mode == "local_angle"
    st = h.poll(FRAME)
    assert st.record is None and not st.delete and st.mode is None
    assert next_mode("local", autopilot=True) == "user" and next_mode("user", autopilot=False) == "user"


def test_labels_label_what_the_human_does_not_drive():
    class Expert:
        def poll(self, frame):
            return UserState(0.7, 0.3, applied=(0.6, 0.3))

    h = HumanControl(labels=Expert(), mode="user")
    h.command(-0.2, 0.5)
    st = h.poll(FRAME)
    assert (st.steering, st.throttle, st.applied) == (-0.2, 0.5, None)  # the human drives
    h.observe({"mode": "local_angle"})
    st = h.poll(FRAME)
    assert (st.steering, st.throttle, st.applied) == (0.7, 0.5, (0.6, 0.5))  # pilot steers, human throttles
    h.observe({"mode": "local"})
    st = h.poll(FRAME)
    assert (st.steering, st.throttle, st.applied) == (0.7, 0.3, (0.6, 0.3))
