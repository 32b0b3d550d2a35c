"""The keyboard/gamepad window as the loop's user, alone or over the simulator's expert.

The loop asks one object per frame for a ``UserState``: the label (what the human or the
expert wants), what actually drives when it differs (the expert's perturbation), and any
request made since the last frame (mode, recording, e-stop, delete, quit). Requests are
reported once, when they change, so the loop's own state stays the single truth.
"""

from __future__ import annotations

from typing import Protocol

from edgepilot.drive.parts import Frame, UserInput, UserState


class Window(Protocol):
    """What the loop's user needs of a window (``vehicle.ui.DriveWindow`` is the real one)."""

    mode: str
    recording: bool
    estop: bool
    quit: bool

    def poll(self) -> None: ...

    def user_command(self) -> tuple[float, float]: ...

    def take_delete_request(self) -> bool: ...


class WindowUser:
    """The window's keyboard/gamepad, over an optional inner user (the expert).

    - window only (the real car): the keyboard/gamepad command is the human's label;
    - over the expert (sim with a window): the expert labels, the human drives in ``user``
      mode and throttles in ``local_angle`` (DonkeyCar's split)."""

    def __init__(self, window: Window, inner: UserInput | None = None) -> None:
        self.window, self.inner = window, inner
        self._mode: str | None = None
        self._rec = window.recording  # only a change is a request (auto-record stays on till then)
        self._estop = False

    def poll(self, frame: Frame) -> UserState:
        w = self.window
        st = self.inner.poll(frame) if self.inner is not None else UserState()
        w.poll()
        us, ut = w.user_command()
        touching = us != 0.0 or ut != 0.0
        if self.inner is None or w.mode == "user":
            st = UserState(us, ut, source="human", active=touching)
        elif w.mode == "local_angle":  # the autopilot steers, the human throttles (DonkeyCar)
            st.throttle = ut
            if st.applied is not None:
                st.applied = (st.applied[0], ut)
        self._requests(st)
        return st

    def _requests(self, st: UserState) -> None:
        w = self.window
        if w.mode != self._mode:
            st.mode = self._mode = w.mode
        if w.recording != self._rec:
            st.record = self._rec = w.recording
        if w.estop != self._estop:
            st.estop = self._estop = w.estop
        st.delete = w.take_delete_request()
        st.quit = w.quit
