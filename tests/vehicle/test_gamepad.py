"""The headless gamepad part through pygame's real joystick path, with SDL's own virtual
joystick standing in for the USB pad.

pygame 2.6 does not expose SDL's virtual joysticks, so the test calls
``SDL_JoystickAttachVirtual`` and friends (SDL >= 2.0.14) on the very SDL library pygame
loaded, through ctypes: SDL then reports the pad to pygame as a plugged device (a
``JOYDEVICEADDED`` event, axes, buttons) and ``SDL_JoystickDetachVirtual`` unplugs it.
Everything from SDL's joystick layer up (pygame's events and ``Joystick.get_axis``,
``GamepadUser``, the loop, the serial actuator on a pty) is the car's code."""

from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import replace

import numpy as np
import pytest

from edgepilot.config import GamepadConfig
from edgepilot.drive.parts import Frame

pygame = pytest.importorskip("pygame")

FRAME = Frame(np.zeros((2, 2, 3), np.uint8), 0.0, 0)
SDL_JOYSTICK_TYPE_GAMECONTROLLER = 1


def _sdl() -> ctypes.CDLL:
    """The SDL pygame itself runs on (its wheel bundles one): the same handle, the same state."""
    here = os.path.dirname(pygame.__file__)
    found = glob.glob(os.path.join(here, "..", "pygame.libs", "libSDL2-2*.so*"))
    if not found:
        pytest.skip("pygame's bundled SDL library was not found (a system SDL build of pygame)")
    lib = ctypes.CDLL(found[0])
    if not hasattr(lib, "SDL_JoystickAttachVirtual"):
        pytest.skip("this SDL has no virtual joysticks (needs SDL >= 2.0.14)")
    lib.SDL_JoystickAttachVirtual.restype = ctypes.c_int
    lib.SDL_JoystickOpen.restype = ctypes.c_void_p
    lib.SDL_JoystickClose.argtypes = [ctypes.c_void_p]
    lib.SDL_JoystickSetVirtualAxis.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int16]
    lib.SDL_JoystickSetVirtualButton.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint8]
    lib.SDL_GetError.restype = ctypes.c_char_p
    return lib


class VirtualPad:
    """A 4-axis, 8-button pad plugged into SDL; ``axis(i, v)`` with v in -1..1."""

    def __init__(self) -> None:
        self.sdl = _sdl()
        self.index = -1
        self.handle = None

    def plug(self) -> None:
        self.index = self.sdl.SDL_JoystickAttachVirtual(SDL_JOYSTICK_TYPE_GAMECONTROLLER, 4, 8, 0)
        assert self.index >= 0, self.sdl.SDL_GetError()
        self.handle = self.sdl.SDL_JoystickOpen(self.index)
        assert self.handle, self.sdl.SDL_GetError()

    def axis(self, i: int, v: float) -> None:
        raw = max(-32768, min(32767, round(v * 32767))) if v > -1 else -32768
        assert self.sdl.SDL_JoystickSetVirtualAxis(self.handle, i, raw) == 0

    def button(self, b: int, down: bool) -> None:
        assert self.sdl.SDL_JoystickSetVirtualButton(self.handle, b, int(down)) == 0

    def press(self, b: int, user) -> object:
        """Press and release ``b`` with a frame in between (what a thumb does)."""
        self.button(b, True)
        st = user.poll(FRAME)
        self.button(b, False)
        user.poll(FRAME)
        return st

    def unplug(self) -> None:
        self.sdl.SDL_JoystickClose(self.handle)
        assert self.sdl.SDL_JoystickDetachVirtual(self.index) == 0
        self.handle = None


@pytest.fixture
def pad(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    pygame.display.init()
    pygame.joystick.init()
    pygame.event.clear()
    p = VirtualPad()
    p.plug()
    yield p
    if p.handle is not None:
        p.unplug()
    pygame.joystick.quit()


def test_axes_dead_zone_and_inversion(pad):
    from vehicle.gamepad import GamepadUser

    user = GamepadUser(GamepadConfig(steering_axis=0, throttle_axis=1, deadzone=0.1, invert_throttle=True))
    assert user.joy is not None and user.plugs == 1
    pad.axis(0, 0.05)  # inside the dead zone: nothing
    pad.axis(1, -0.06)
    st = user.poll(FRAME)
    assert (st.steering, st.throttle) == (0.0, 0.0)
    pad.axis(0, 0.5)
    pad.axis(1, -1.0)  # stick fully up: SDL says -1.00003; inverted and clamped: +1
    st = user.poll(FRAME)
    assert st.steering == pytest.approx(0.5, abs=1e-4) and st.throttle == 1.0
    pad.axis(0, -1.0)
    pad.axis(1, 0.4)  # pulled back: reverse
    st = user.poll(FRAME)
    assert st.steering == -1.0 and st.throttle == pytest.approx(-0.4, abs=1e-4)
    user.cfg = replace(user.cfg, invert_throttle=False, steering_axis=2, throttle_axis=3)
    pad.axis(2, 0.25)
    pad.axis(3, 0.75)
    st = user.poll(FRAME)
    assert st.steering == pytest.approx(0.25, abs=1e-4) and st.throttle == pytest.approx(0.75, abs=1e-4)
    user.close()


def test_unplug_goes_neutral_and_replug_needs_the_stick_centred(pad):
    from vehicle.gamepad import GamepadUser

    user = GamepadUser(GamepadConfig(deadzone=0.05))
    pad.axis(1, -0.6)
    assert user.poll(FRAME).throttle == pytest.approx(0.6, abs=1e-4)
    pad.unplug()
    st = user.poll(FRAME)
    assert (st.steering, st.throttle) == (0.0, 0.0) and user.joy is None
    assert user.trip is not None and user.trip.reason == "lost"
    pad.plug()
    pad.axis(1, -0.6)  # the replugged stick is still held forward
    st = user.poll(FRAME)
    assert user.joy is not None and user.plugs == 2 and st.throttle == 0.0
    pad.axis(1, 0.0)  # centred: armed again
    assert user.poll(FRAME).throttle == 0.0
    pad.axis(1, -0.3)
    assert user.poll(FRAME).throttle == pytest.approx(0.3, abs=1e-4)
    user.close()


def test_buttons_record_mode_estop_erase(pad):
    from vehicle.gamepad import GamepadUser

    cfg = GamepadConfig(record_button=0, mode_button=1, estop_button=2, delete_button=3)
    user = GamepadUser(cfg)
    user.observe({"mode": "user", "recording": False, "model_version": "m1", "throttle": 0.0})
    assert pad.press(0, user).record is True
    assert pad.press(1, user).mode == "local_angle"
    assert pad.press(3, user).delete is True
    assert pad.press(2, user).estop is True  # standing still: no brake pulse, hold at once
    user.observe({"mode": "user", "estop": True})
    assert pad.press(2, user).estop is False  # the same button releases it
    user.observe({"mode": "user", "recording": False, "model_version": None})
    assert pad.press(1, user).mode == "user"  # no model: there is nothing but user mode
    user.close()


def test_gamepad_drives_the_motor_controller_through_the_loop(pad, tmp_path):
    """The pad's stick, through the loop and the framed serial protocol, onto the pty."""
    from edgepilot.config import ActuatorConfig
    from edgepilot.drive.loop import DriveLoop, LoopOptions
    from vehicle.actuators import FramedActuator, pulses
    from vehicle.gamepad import GamepadUser
    from vehicle.web.rig import LiveReplay, PtyMotor

    motor = PtyMotor()
    cfg = ActuatorConfig(kind="framed", port=motor.path)
    user = GamepadUser(GamepadConfig())
    pad.axis(0, 1.0)
    pad.axis(1, -0.5)
    loop = DriveLoop(
        LiveReplay(fps=50),
        FramedActuator(cfg),
        user=user,
        options=LoopOptions(mode="user", throttle_cap=0.4),
    )
    try:
        loop.run(max_frames=10)
    finally:
        user.close()
        got = motor.wait(lambda c: c.throttle_us != 1500, timeout=2.0)
        motor.close()
    assert got is not None
    assert (got.steering_us, got.throttle_us) == pulses(1.0, 0.4, cfg)  # full right, capped at 0.4
