"""The RC transmitter as the loop's user (DonkeyCar's "RC mode").

The motor controller reads the RC receiver: the edgepilot firmware on its receiver pins
(steering, throttle, and channel 2 as kill switch or mode/record switch), the Robo HAT
MM1's ``code.py`` on its RC inputs (steering and throttle). ``RcUser`` turns the newest
reading into the loop's ``UserState``: the transmitter's steering and throttle are the
user's command, and so the recorded label.

Safety rules, all in ``poll``:

* no reading, or one older than ``rc.timeout_ms`` (the receiver lost its signal, the
  firmware reports a silent channel as 0, the controller went quiet): the user command is
  0, 0 with no label source -- the transmitter never overrides with a value it no longer
  sends, and nothing is recorded as a human's answer;
* a transmitter that is heard gives the human's label (``source = "human"``); sticks off
  centre (outside the deadband) are ``active``: in autopilot that is a takeover;
* the firmware's kill switch holding the car: an e-stop request, so the loop commands
  neutral too (which is also what re-arms the firmware once the switch is released);
* channel 2 as mode switch without a signal reads as "user" mode, as record switch as
  recording off: the autopilot never keeps driving because the transmitter went away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig, RcConfig
from edgepilot.drive.parts import Frame, UserInput, UserState
from vehicle.actuators import CALIBRATION, RC_MAX_US, RC_MIN_US, RcReading

AUX_ROLES = ("none", "mode", "record")


class RcSource(Protocol):
    """What reads the receiver: ``FramedActuator`` and ``RoboHatActuator``."""

    def rc_reading(self) -> RcReading | None: ...


@dataclass(frozen=True, slots=True)
class Axis:
    """One transmitter axis: the pulses of -1, 0 and +1, and the centre's deadband."""

    neg_us: int
    mid_us: int
    pos_us: int
    reverse: bool = False
    deadband_us: int = 0

    def value(self, us: int | None) -> float:
        """The command whose calibrated pulse is ``us`` (the inverse of the actuator's
        mapping, each half to its own end point), so the servo gets back the very pulse
        the receiver sent; within the deadband of the centre it reads exactly 0."""
        if us is None:
            return 0.0
        off = us - self.mid_us
        end = self.pos_us if off * (self.pos_us - self.mid_us) > 0 else self.neg_us
        if abs(off) <= self.deadband_us or off * (end - self.mid_us) <= 0:
            return 0.0
        x = min(1.0, off / (end - self.mid_us))
        x = x if end == self.pos_us else -x
        return -x if self.reverse else x


def axes(rc: RcConfig, act: ActuatorConfig) -> tuple[Axis, Axis]:
    """Steering and throttle axes: the ``[rc]`` calibration, its unset keys the actuator's."""
    v = {k: getattr(act, k) if getattr(rc, k) is None else getattr(rc, k) for k in CALIBRATION}
    own = [k for k in CALIBRATION if getattr(rc, k) is not None]
    for k in own:
        if not RC_MIN_US <= v[k] <= RC_MAX_US:
            raise EdgepilotError(f"rc.{k}: {v[k]} us is outside {RC_MIN_US}..{RC_MAX_US} us")
    # the actuator's reverse flags belong to its end points: kept while they are
    s_rev = act.steering_reverse and not {"steering_left_us", "steering_right_us"} & set(own)
    t_rev = act.throttle_reverse and not {"throttle_reverse_us", "throttle_forward_us"} & set(own)
    db = rc.deadband_us
    return (
        Axis(v["steering_left_us"], v["steering_center_us"], v["steering_right_us"], s_rev, db),
        Axis(v["throttle_reverse_us"], v["throttle_neutral_us"], v["throttle_forward_us"], t_rev, db),
    )


def validate_rc(rc: RcConfig, act: ActuatorConfig) -> None:
    """Refuse an ``[rc]`` section the car cannot honour, naming the key."""
    if rc.enabled and act.kind not in ("framed", "robohat"):
        raise EdgepilotError(
            f"rc.enabled: the transmitter is read by the motor controller; actuator.kind "
            f"{act.kind!r} has none (use framed or robohat)"
        )
    if rc.aux not in AUX_ROLES:
        raise EdgepilotError(f"rc.aux: {rc.aux!r} is not one of {', '.join(AUX_ROLES)}")
    if rc.aux != "none" and act.kind != "framed":
        raise EdgepilotError("rc.aux: only the edgepilot firmware reads a third receiver channel")
    if rc.aux != "none" and act.kill_switch != "off":
        raise EdgepilotError(
            f"rc.aux: receiver channel 2 is the kill switch (actuator.kill_switch = "
            f"{act.kill_switch!r}); it cannot also be the {rc.aux} switch"
        )
    if not 0 <= rc.deadband_us < 200:
        raise EdgepilotError(f"rc.deadband_us: {rc.deadband_us} must be in 0..199")
    if rc.timeout_ms <= 0:
        raise EdgepilotError(f"rc.timeout_ms: must be > 0, got {rc.timeout_ms}")
    for name, ax in zip(("steering_center_us", "throttle_neutral_us"), axes(rc, act), strict=True):
        if not min(ax.neg_us, ax.pos_us) <= ax.mid_us <= max(ax.neg_us, ax.pos_us):
            raise EdgepilotError(f"rc.{name}: {ax.mid_us} us is not between the end points")


class RcUser:
    """The transmitter as the loop's user. ``other`` (e.g. ``PilotUser`` with a window)
    still supplies its requests -- mode, recording, e-stop, delete, quit -- but the
    transmitter's steering and throttle replace its command."""

    def __init__(
        self, source: RcSource, rc: RcConfig, act: ActuatorConfig, other: UserInput | None = None
    ) -> None:
        validate_rc(rc, act)
        self.source, self.rc, self.other = source, rc, other
        self.steering, self.throttle = axes(rc, act)
        self._estop = {"other": False, "kill": False}
        self._sent_estop = False
        self._mode: str | None = None
        self._rec: bool | None = None

    def reading(self) -> RcReading | None:
        """The newest reading if it is fresh enough to drive by, else None."""
        r = self.source.rc_reading()
        if r is None or time.monotonic() - r.at > self.rc.timeout_ms / 1000:
            return None
        return r

    def poll(self, frame: Frame) -> UserState:
        st = self.other.poll(frame) if self.other is not None else UserState()
        r = self.reading()
        st.steering = self.steering.value(r.steering_us if r else None)
        st.throttle = self.throttle.value(r.throttle_us if r else None)
        st.applied = None
        # a transmitter that is heard is a human's label; sticks off centre are a
        # takeover in autopilot (an intervention); none heard: nobody's label
        st.source = "human" if r is not None else None
        st.active = r is not None and (st.steering != 0.0 or st.throttle != 0.0)
        if st.estop is not None:
            self._estop["other"] = st.estop
        self._estop["kill"] = bool(r and r.killed)
        estop = any(self._estop.values())
        st.estop = estop if estop != self._sent_estop else None
        self._sent_estop = estop
        self._aux(st, r.aux_us if r else None)
        return st

    def _aux(self, st: UserState, aux_us: int | None) -> None:
        """Channel 2 as a switch: high = mode "local" / recording on; no signal = low."""
        high = aux_us is not None and aux_us > self.rc.aux_threshold_us
        if self.rc.aux == "mode":
            mode = "local" if high else "user"
            if mode != self._mode:
                st.mode = self._mode = mode
        elif self.rc.aux == "record" and high != self._rec:
            st.record = self._rec = high
