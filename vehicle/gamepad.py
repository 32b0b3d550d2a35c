"""A gamepad plugged into the car, with no window: ``GamepadUser``, the loop's user input.

pygame's joystick module reads ``/dev/input/js*``/evdev through SDL; SDL's event queue
needs its video subsystem, which the ``dummy`` driver provides without a display (no
window is opened). The profile's ``[gamepad]`` section maps axes and buttons; the pad may
be unplugged and plugged back in at any time: on unplug the car goes to neutral at the
next frame and the throttle stays at zero until the replugged stick is back at zero
(``vehicle.controls.HumanControl``).

Buttons: record on/off, mode (user -> local_angle -> local), e-stop on/off, erase the
last N seconds.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Protocol

from edgepilot.config import GamepadConfig
from edgepilot.drive.parts import Frame, UserInput, UserState
from edgepilot.extras import require
from vehicle.controls import HumanControl

log = logging.getLogger(__name__)


class Joystick(Protocol):
    """What is used of ``pygame.joystick.JoystickType``."""

    def get_axis(self, axis: int) -> float: ...

    def get_numaxes(self) -> int: ...

    def get_instance_id(self) -> int: ...

    def get_name(self) -> str: ...

    def quit(self) -> None: ...


def import_pygame() -> ModuleType:
    """pygame, or an error naming the install that brings it (the car's leaves it out)."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    return require("pygame", "a gamepad or the drive window", "./launch/car-setup --gamepad on a Pi")


def map_axes(steering_raw: float, throttle_raw: float, cfg: GamepadConfig) -> tuple[float, float]:
    """Raw axes (-1..1; SDL gives -1.00003 at one end) to (steering, throttle): the dead
    zone around the centre, the throttle's inversion (a stick's "up" is negative)."""
    th = -throttle_raw if cfg.invert_throttle else throttle_raw

    def shape(v: float) -> float:
        return 0.0 if abs(v) < cfg.deadzone else max(-1.0, min(1.0, float(v)))

    return shape(steering_raw), shape(th)


class GamepadUser(HumanControl):
    """The first gamepad SDL sees drives; ``poll(frame)`` once per frame (the loop thread)."""

    def __init__(
        self,
        cfg: GamepadConfig,
        *,
        mode: str = "user",
        labels: UserInput | None = None,
        brake_s: float = 0.2,
        brake_throttle: float = 0.5,
    ) -> None:
        super().__init__(mode=mode, brake_s=brake_s, brake_throttle=brake_throttle, labels=labels)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # events without a window
        pygame = import_pygame()

        self.pg = pygame
        self.cfg = cfg
        pygame.display.init()
        pygame.joystick.init()
        self.joy: Joystick | None = None
        self.plugs = 0  # pads opened so far (a replug counts again)
        if pygame.joystick.get_count():
            self._open(0)
        else:
            log.warning("no gamepad yet: plug one in (the car stays at neutral until then)")

    def _open(self, index: int) -> None:
        try:
            joy = self.pg.joystick.Joystick(index)
            joy.init()
        except self.pg.error as e:
            log.warning("gamepad %d did not open: %s", index, e)
            return
        self.joy = joy
        self.plugs += 1
        log.info("gamepad: %s (%d axes)", joy.get_name(), joy.get_numaxes())

    def pump(self) -> None:
        """Handle what SDL saw since the last frame: plugs, unplugs, buttons."""
        pg = self.pg
        for ev in pg.event.get():  # all of them: what is left queued would pile up
            if ev.type == pg.JOYDEVICEADDED and self.joy is None:
                self._open(ev.device_index)
            elif ev.type == pg.JOYDEVICEREMOVED and self._ours(ev.instance_id):
                log.warning("gamepad unplugged: neutral until it is back and centred")
                self.joy = None
                self.lost("gamepad unplugged")
            elif ev.type == pg.JOYBUTTONDOWN and self._ours(ev.instance_id):
                self._button(ev.button)

    def _ours(self, instance_id: int) -> bool:
        return self.joy is not None and self.joy.get_instance_id() == instance_id

    def _button(self, button: int) -> None:
        cfg = self.cfg
        if button == cfg.record_button:
            self.request_record()
        elif button == cfg.mode_button:
            self.cycle_mode(self.autopilot())
        elif button == cfg.estop_button:
            self.estop(not self.loop_info.get("estop", False))
        elif button == cfg.delete_button:
            self.request_erase()

    def poll(self, frame: Frame) -> UserState:
        self.pump()
        joy = self.joy
        if joy is not None:
            try:
                s, t = map_axes(
                    joy.get_axis(self.cfg.steering_axis), joy.get_axis(self.cfg.throttle_axis), self.cfg
                )
            except self.pg.error as e:  # an axis the pad does not have: a profile mistake
                log.error("gamepad: %s (check [gamepad] steering_axis/throttle_axis)", e)
                s, t = 0.0, 0.0
            self.command(s, t)
        return super().poll(frame)

    def close(self) -> None:
        """Release the pad (not pygame's joystick module: other parts may use it)."""
        if self.joy is not None and self.pg.joystick.get_init():
            self.joy.quit()
        self.joy = None
