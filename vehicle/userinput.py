"""The 'user' of the loop: a keyboard/gamepad window, the simulator's expert, or both.

The loop asks one object per frame for a ``UserState``: the label (what the human or the
expert wants), what actually drives when it differs (the expert's perturbation), and any
request made since the last frame (mode, recording, e-stop, delete, quit). Requests are
reported once, when they change, so the loop's own state stays the single truth.
"""

from __future__ import annotations

from typing import Any

from vehicle.loop import UserState
from vehicle.parts import Frame


class PilotUser:
    """Window and/or expert as the loop's user.

    - expert only (headless sim): the expert's label; its perturbed command drives in user mode;
    - window only (the real car): the keyboard/gamepad command is the label;
    - both (sim with a window): the expert labels, the human takes over in ``user`` mode.
    """

    def __init__(self, window: Any = None, expert: Any = None, world: Any = None) -> None:
        if window is None and expert is None:
            raise ValueError("PilotUser needs a window, an expert, or both")
        self.window, self.expert, self.world = window, expert, world
        self._mode: str | None = None
        self._rec: bool | None = None
        self._estop = False

    def poll(self, frame: Frame) -> UserState:
        st = UserState()
        if self.expert is not None:
            ls, lt, aps, apt = self.expert.act(self.world)
            st = UserState(ls, lt, applied=(aps, apt) if (aps, apt) != (ls, lt) else None)
        w = self.window
        if w is None:
            return st
        w.poll()
        us, ut = w.user_command()
        if self.expert is None or w.mode == "user":
            st = UserState(us, ut)
        elif w.mode == "local_angle":  # the autopilot steers, the human throttles (DonkeyCar)
            st.throttle = ut
            if st.applied is not None:
                st.applied = (st.applied[0], ut)
        if w.mode != self._mode:
            st.mode = self._mode = w.mode
        if w.recording != self._rec:
            st.record = self._rec = w.recording
        if w.estop != self._estop:
            st.estop = self._estop = w.estop
        st.delete = w.take_delete_request()
        st.quit = w.quit
        return st
