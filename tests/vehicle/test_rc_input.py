"""The transmitter as the loop's user (``vehicle.rc_input``): the mapping from pulses back
to commands, the safety rules, and the profile. ``Receiver`` stands in for the motor
controller's read-back (the firmware and MM1 paths to it are tested in
tests/vehicle/test_firmware_rc.py and tests/vehicle/test_mm1_receive_rule.py)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig, RcConfig, load_profile
from edgepilot.drive.parts import UserState
from vehicle.actuators import RcReading, pulses, validate
from vehicle.rc_input import Axis, RcUser, axes, validate_rc

FRAMED = ActuatorConfig(kind="framed")
RC = RcConfig(enabled=True, deadband_us=0)


class Receiver:
    """The controller's read-back: ``set()`` a reading now, ``age()`` it."""

    def __init__(self) -> None:
        self.r: RcReading | None = None

    def set(self, s, t, aux=None, killed=False) -> None:
        self.r = RcReading(s, t, aux, killed, time.monotonic())

    def age(self, seconds: float) -> None:
        self.r = replace(self.r, at=self.r.at - seconds)

    def rc_reading(self) -> RcReading | None:
        return self.r


class Window:
    """Another user (the keyboard window's PilotUser) with its own command and requests."""

    def __init__(self) -> None:
        self.next = UserState(0.9, 0.9)

    def poll(self, frame) -> UserState:
        st, self.next = self.next, UserState(0.9, 0.9)
        return st


@st.composite
def calibration(draw):
    def half():
        a, b = draw(st.integers(800, 2200)), draw(st.integers(800, 2200))
        return a, draw(st.integers(min(a, b), max(a, b))), b

    (sl, sc, sr), (tr, tn, tf) = half(), half()
    return ActuatorConfig(
        kind="framed",
        steering_left_us=sl,
        steering_center_us=sc,
        steering_right_us=sr,
        throttle_reverse_us=tr,
        throttle_neutral_us=tn,
        throttle_forward_us=tf,
        steering_reverse=draw(st.booleans()),
        throttle_reverse=draw(st.booleans()),
    )


@given(cfg=calibration(), s=st.floats(-1, 1), t=st.floats(-1, 1))
def test_a_pulse_reads_back_as_the_command_that_makes_it(cfg, s, t):
    """With the actuator's calibration (the default), reading a pulse is the inverse of
    sending one: the transmitter's pulse drives the servo with that same pulse."""
    validate(cfg)
    steer_ax, thr_ax = axes(RC, cfg)
    s_us, t_us = pulses(s, t, cfg)
    back = pulses(steer_ax.value(s_us), thr_ax.value(t_us), cfg)
    assert abs(back[0] - s_us) <= 1 and abs(back[1] - t_us) <= 1


def test_axis_deadband_ends_and_clamping():
    ax = Axis(1000, 1500, 2000, deadband_us=20)
    assert ax.value(1500) == ax.value(1520) == ax.value(1480) == 0.0  # sticks at rest: exactly 0
    assert ax.value(2000) == 1.0 and ax.value(1000) == -1.0  # the ends still reach +-1
    assert ax.value(2100) == 1.0 and ax.value(900) == -1.0
    assert ax.value(1760) == pytest.approx(260 / 500)  # outside it: the exact inverse
    assert ax.value(1521) == pytest.approx(21 / 500)
    assert Axis(2000, 1500, 1000).value(1250) == pytest.approx(0.5)  # left at 2000 us (DonkeyCar MM1)
    assert Axis(1000, 1500, 2000, reverse=True).value(1750) == pytest.approx(-0.5)
    assert ax.value(None) == 0.0
    assert Axis(1500, 1500, 2000).value(1200) == 0.0  # the centre at an end: that half reads 0


def test_rc_calibration_overrides_and_reverse_flags():
    act = replace(FRAMED, steering_reverse=True, throttle_reverse=True)
    s, t = axes(RcConfig(), act)
    assert s.reverse and t.reverse  # inherited end points keep their reverse flags
    s, t = axes(RcConfig(steering_left_us=1900, steering_right_us=1100, throttle_neutral_us=1520), act)
    assert (s.neg_us, s.mid_us, s.pos_us, s.reverse) == (1900, 1500, 1100, False)  # own ends: own direction
    assert (t.mid_us, t.reverse) == (1520, True)  # only a trim: the actuator's direction stays
    with pytest.raises(EdgepilotError, match=r"rc\.throttle_forward_us: 2300 us"):
        axes(RcConfig(throttle_forward_us=2300), FRAMED)


def test_transmitter_is_the_users_command_and_label():
    rx = Receiver()
    user = RcUser(rx, RcConfig(enabled=True), FRAMED)
    rx.set(1250, 1760)
    st = user.poll(None)
    assert (st.steering, st.throttle) == (pytest.approx(-250 / 500), pytest.approx(260 / 500))
    assert st.applied is None and st.estop is None and st.mode is None
    assert st.source == "human" and st.active  # a human's label; in autopilot, a takeover
    rx.set(1510, 1490)  # sticks at rest (inside the deadband): labelled, not a takeover
    st = user.poll(None)
    assert (st.steering, st.throttle, st.source, st.active) == (0.0, 0.0, "human", False)


def test_lost_transmitter_gives_no_override():
    rx = Receiver()
    user = RcUser(rx, RcConfig(enabled=True, timeout_ms=200), FRAMED)
    assert (user.poll(None).steering, user.poll(None).throttle) == (0.0, 0.0)  # nothing read yet
    rx.set(2000, 2000)
    assert user.poll(None).throttle == 1.0
    rx.age(0.25)  # the controller went quiet: the last full throttle is not held
    st = user.poll(None)
    assert (st.steering, st.throttle, st.source, st.active) == (0.0, 0.0, None, False)  # nobody's label
    rx.set(2000, None)  # the firmware reports the throttle channel silent
    st = user.poll(None)
    assert (st.steering, st.throttle) == (1.0, 0.0)


def test_kill_switch_is_an_estop_request_merged_with_the_windows():
    rx, win = Receiver(), Window()
    user = RcUser(rx, RcConfig(enabled=True), FRAMED, other=win)
    rx.set(1500, 1800)
    st = user.poll(None)
    assert st.estop is None and st.throttle > 0 and st.throttle != 0.9  # the transmitter's, not the window's
    rx.set(1500, 1800, killed=True)
    assert user.poll(None).estop is True  # reported once...
    assert user.poll(None).estop is None  # ...not every frame
    win.next = UserState(estop=True)  # the window's e-stop too
    assert user.poll(None).estop is None  # already stopped
    rx.set(1500, 1800, killed=False)
    assert user.poll(None).estop is None  # the window still holds it
    win.next = UserState(estop=False)
    assert user.poll(None).estop is False  # both released
    win.next = UserState(quit=True, delete=True)
    st = user.poll(None)
    assert st.quit and st.delete  # the window's other requests pass through


def test_aux_switch_as_mode_and_record():
    rx = Receiver()
    mode = RcUser(rx, RcConfig(enabled=True, aux="mode"), FRAMED)
    rx.set(1500, 1500, aux=1000)
    assert mode.poll(None).mode == "user"
    assert mode.poll(None).mode is None  # only on change
    rx.set(1500, 1500, aux=1900)
    assert mode.poll(None).mode == "local"  # DonkeyCar's pigpio_rc: channel 3 high = autopilot
    rx.set(1500, 1500, aux=None)  # no signal on it: back to the user, never left on autopilot
    assert mode.poll(None).mode == "user"
    record = RcUser(rx, RcConfig(enabled=True, aux="record"), FRAMED)
    rx.set(1500, 1500, aux=1900)
    assert record.poll(None).record is True
    rx.age(1.0)
    assert record.poll(None).record is False


def test_rc_section_errors_name_the_key():
    mm1 = ActuatorConfig(kind="robohat")
    cases = [
        (RcConfig(enabled=True), ActuatorConfig(kind="none"), "rc.enabled"),
        (RcConfig(aux="lights"), FRAMED, "rc.aux: 'lights'"),
        (RcConfig(aux="mode"), mm1, "rc.aux: only the edgepilot firmware"),
        (
            RcConfig(aux="mode"),
            replace(FRAMED, kill_switch="high"),
            "rc.aux: receiver channel 2 is the kill switch",
        ),
        (RcConfig(deadband_us=300), FRAMED, "rc.deadband_us"),
        (RcConfig(timeout_ms=0), FRAMED, "rc.timeout_ms"),
        (RcConfig(steering_center_us=2100), FRAMED, "rc.steering_center_us"),
    ]
    for rc, act, msg in cases:
        with pytest.raises(EdgepilotError, match=msg.replace(".", r"\.")):
            validate_rc(rc, act)
    validate_rc(RcConfig(enabled=True), mm1)  # the MM1's read-back is user input too


def test_kit_profile_loads_and_is_consistent():
    prof = load_profile("kit-usb-arduino-rc")
    assert prof.actuator.kind == "framed" and prof.actuator.kill_switch == "high"
    assert prof.rc.enabled and prof.rc.aux == "none" and prof.camera.source == "0"
    validate(prof.actuator)
    validate_rc(prof.rc, prof.actuator)


def test_bad_kill_switch_values_are_clear_errors(tmp_path):
    p = tmp_path / "car.toml"
    p.write_text('[actuator]\nkind = "framed"\nkill_switch = "on"\n')
    with pytest.raises(EdgepilotError, match="kill_switch: 'on' is not one of off, high, low"):
        validate(load_profile(str(p)).actuator)
    p.write_text('[actuator]\nkind = "framed"\nkill_switch = "high"\nkill_threshold_us = 2500\n')
    with pytest.raises(EdgepilotError, match=r"kill_threshold_us: 2500 us is outside 800\.\.2200"):
        validate(load_profile(str(p)).actuator)
    p.write_text("[rc]\nenable = true\n")
    with pytest.raises(EdgepilotError, match=r"rc\.enable: unknown key"):
        load_profile(str(p))
