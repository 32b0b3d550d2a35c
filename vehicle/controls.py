"""A human at a remote controller (a web page, a gamepad on the car) as the loop's user.

``HumanControl`` is the ``UserInput`` both the web controller and the headless gamepad
hand to ``DriveLoop``. The input side (the web server's thread, the gamepad's event pump)
calls the setters; the loop calls ``poll(frame)`` once per frame. What it adds to the
plain stick value is what makes a remote controller safe and DonkeyCar-like:

- throttle scale and constant-throttle mode (DonkeyCar's "max throttle" and "constant");
- requests (mode, record, e-stop, erase) reported to the loop once each;
- e-stop: user mode, recording and constant throttle off, a short reverse pulse when the
  car was driving forward (an ESC brakes on it), then the loop's e-stop holds neutral;
- a deadman: while the human's throttle drives (``user``, ``local_angle``), a controller
  that goes silent (``deadman_s``) or is lost (tab closed, pad unplugged) gives neutral,
  and the throttle stays at zero until the controller itself returns to zero, so a
  reconnecting page or a replugged pad with the stick held cannot launch the car.

The deadman trips one loop period early: the loop acts on the next ``poll`` only, so
"neutral within ``deadman_s`` of the last command" needs the decision that much sooner.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgepilot.drive.parts import Frame, UserInput, UserState
from edgepilot.schema.log import MODES

log = logging.getLogger(__name__)

DRIVEN_BY_HUMAN = ("user", "local_angle")  # modes in which the human's throttle moves the car


def next_mode(mode: str, autopilot: bool) -> str:
    """user -> local_angle -> local -> user (the pygame window's M key); user only without a pilot."""
    if not autopilot or mode not in MODES:
        return "user"
    return MODES[(MODES.index(mode) + 1) % len(MODES)]


@dataclass
class Trip:
    """Why the car went to neutral without being told to."""

    reason: str  # "silent" | "lost"
    silent_ms: float  # time since the last command when it tripped
    at: float  # wall clock (s)
    count: int  # trips so far, this one included


class HumanControl:
    """Thread-safe user input for a remote human; see the module docstring.

    ``labels``: another user input whose command labels the frames the human does not
    drive (the simulator's expert), as ``vehicle.userinput.WindowUser`` does with a window."""

    def __init__(
        self,
        *,
        mode: str = "user",
        deadman_s: float | None = None,
        brake_s: float = 0.2,
        brake_throttle: float = 0.5,
        labels: UserInput | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.deadman_s = deadman_s
        self.brake_s, self.brake_throttle = brake_s, brake_throttle
        self.labels = labels
        self.throttle_scale = 1.0
        self.constant_throttle = False
        self.loop_mode = mode  # the loop's truth, from observe(); requests update it at once
        self.loop_info: dict[str, Any] = {}
        self._cmd = (0.0, 0.0)
        self._last_rx: float | None = None  # None: no command yet (nothing to time out)
        self._armed = True  # False after a trip until the throttle comes back to zero
        self._req: dict[str, Any] = {}
        self._brake_until: float | None = None
        self._polls: collections.deque[float] = collections.deque(maxlen=9)
        self.trip: Trip | None = None
        self.trips = 0

    # -- the input side -------------------------------------------------------------
    def command(self, steering: float, throttle: float) -> None:
        """The stick now (-1..1 each, validated by the caller); also the deadman's heartbeat."""
        with self._lock:
            self._last_rx = time.monotonic()
            if not self._armed and throttle == 0.0:
                self._armed = True
            self._cmd = (steering, throttle)

    def lost(self, why: str) -> None:
        """The controller is gone (page closed, pad unplugged): neutral at the next frame."""
        with self._lock:
            if self._last_rx is not None:
                self._trip_locked("lost", time.monotonic(), why)

    def request_mode(self, mode: str) -> None:
        with self._lock:
            self._req["mode"] = mode

    def cycle_mode(self, autopilot: bool) -> str:
        with self._lock:
            mode = next_mode(self._req.get("mode", self.loop_mode), autopilot)
            self._req["mode"] = mode
            return mode

    def request_record(self, on: bool | None = None) -> None:
        """``None`` toggles what the loop last reported."""
        with self._lock:
            self._req["record"] = (not self.loop_info.get("recording", False)) if on is None else on

    def request_erase(self) -> None:
        with self._lock:
            self._req["delete"] = True

    def estop(self, on: bool = True) -> None:
        with self._lock:
            if not on:
                self._brake_until = None
                self._req["estop"] = False
                self._armed = self._cmd[1] == 0.0
                return
            self.constant_throttle = False
            self._req.update(mode="user", record=False)
            moving = float(self.loop_info.get("throttle") or 0.0) > 0.0
            self._brake_until = time.monotonic() + self.brake_s if moving and self.brake_s > 0 else None
            if self._brake_until is None:
                self._req["estop"] = True
            log.warning("E-STOP from the controller%s", " (braking)" if moving else "")

    def set_throttle(self, scale: float | None = None, constant: bool | None = None) -> None:
        with self._lock:
            if scale is not None:
                self.throttle_scale = scale
            if constant is not None:
                self.constant_throttle = constant

    def observe(self, info: dict[str, Any]) -> None:
        """The loop's per-frame info (its ``on_frame``): what mode and state really are."""
        with self._lock:
            self.loop_info = info
            self.loop_mode = info.get("mode", self.loop_mode)

    # -- the loop side --------------------------------------------------------------
    def poll(self, frame: Frame) -> UserState:
        now = time.monotonic()
        label = self.labels.poll(frame) if self.labels is not None else None
        with self._lock:
            self._polls.append(now)
            st = self._requests_locked()
            if self._brake_until is not None:
                return self._brake_locked(st, now)
            steering, throttle = self._command_locked(now)
        return self._with_labels(st, steering, throttle, label)

    def _requests_locked(self) -> UserState:
        st = UserState()
        req, self._req = self._req, {}
        st.mode, st.record, st.estop = req.get("mode"), req.get("record"), req.get("estop")
        st.delete = bool(req.get("delete"))
        if st.mode is not None:
            self.loop_mode = st.mode
        return st

    def _brake_locked(self, st: UserState, now: float) -> UserState:
        if now < self._brake_until:
            st.throttle = -self.brake_throttle
            return st
        self._brake_until = None
        st.estop = True
        return st

    def _command_locked(self, now: float) -> tuple[float, float]:
        """The human's command after the deadman, scale and constant throttle."""
        steering, throttle = self._cmd
        watched = self.deadman_s is not None and self._last_rx is not None and self._armed
        if (
            watched
            and self.loop_mode in DRIVEN_BY_HUMAN
            and now + self._period() - self._last_rx > self.deadman_s
        ):
            self._trip_locked("silent", now, f"no command for {(now - self._last_rx) * 1e3:.0f} ms")
        if not self._armed:
            return 0.0, 0.0
        if self.constant_throttle:
            return steering, self.throttle_scale
        return steering, throttle * self.throttle_scale

    def _period(self) -> float:
        """The loop's usual period (the median recent gap between polls), capped so that
        a loop that stalls now and then does not make the deadman trip on a live page."""
        p = sorted(b - a for a, b in zip(self._polls, list(self._polls)[1:], strict=False))
        return min(p[len(p) // 2] if p else 0.0, (self.deadman_s or 0.0) / 4)

    def _trip_locked(self, reason: str, now: float, why: str) -> None:
        """Disarm: zero throttle until the controller sends zero. Only a trip that stopped
        something (a throttle or steering command, constant throttle) is reported."""
        if not self._armed:
            return
        self._armed = False
        if self._cmd == (0.0, 0.0) and not self.constant_throttle:
            return
        self.trips += 1
        silent = (now - self._last_rx) * 1e3 if self._last_rx is not None else 0.0
        self.trip = Trip(reason, round(silent, 1), time.time(), self.trips)
        self.constant_throttle = False
        log.warning("deadman: neutral (%s)", why)

    def _with_labels(
        self, st: UserState, steering: float, throttle: float, label: UserState | None
    ) -> UserState:
        """The human drives in user mode; otherwise the labeller's command labels the frame
        (in local_angle the human's throttle still drives)."""
        if label is None or self.loop_mode == "user":
            st.steering, st.throttle = steering, throttle
            st.source, st.active = "human", steering != 0.0 or throttle != 0.0
            return st
        st.steering, st.throttle, st.applied = label.steering, label.throttle, label.applied
        st.source = label.source
        if self.loop_mode == "local_angle":
            st.throttle = throttle
            if st.applied is not None:
                st.applied = (st.applied[0], throttle)
        return st

    # -- what a controller shows --------------------------------------------------------
    def autopilot(self) -> bool:
        """Modes other than user mean something: a model is loaded, or a labeller drives."""
        return self.labels is not None or self.loop_info.get("model_version") is not None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "throttle_scale": self.throttle_scale,
                "constant_throttle": self.constant_throttle,
                "armed": self._armed,
                "braking": self._brake_until is not None,
                "trips": self.trips,
            }
