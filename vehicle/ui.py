"""The driving window (pygame): camera view, HUD, minimap; keyboard and gamepad in.

Used by ``edgepilot sim drive`` (and the car's ``collect``). Input is read from
pygame *events* only, with the held keys tracked here: that is what lets tests drive
it under ``SDL_VIDEODRIVER=dummy`` with posted key events (``pygame.key.get_pressed``
does not see posted events).

Keys: W/Up throttle, S/Down brake and reverse, A/Left and D/Right steer, R record
on/off, M mode (user -> local_angle -> local), Space e-stop on/off, Backspace delete
the last N seconds of the log, Esc quit (the log is closed cleanly by the caller).
A gamepad uses the axis/button mapping of the profile's ``[gamepad]`` section.

Steering follows DonkeyCar: -1 is full left, +1 full right.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgepilot.config import GamepadConfig
from vehicle.gamepad import import_pygame

MODES = ("user", "local_angle", "local")
STEER_RATE = 4.0  # keyboard steering slews to full lock in 0.25 s, then recentres
THROTTLE_RATE = 2.5


class DriveWindow:
    """One window. ``poll()`` once per frame, read ``user_command()``, then ``draw()``."""

    def __init__(
        self,
        track: Any,
        *,
        gamepad: GamepadConfig | None = None,
        title: str = "edgepilot",
        autopilot: bool = True,
        scale: int = 4,
        camera_size: tuple[int, int] = (160, 120),
        fps_hint: float = 20.0,
    ) -> None:
        pygame = import_pygame()

        self.pg = pygame
        pygame.display.init()
        pygame.font.init()
        pygame.joystick.init()
        self.track = track
        self.gamepad = gamepad or GamepadConfig()
        self.autopilot = autopilot
        self.scale = scale
        self.cam_w, self.cam_h = camera_size[0] * scale, camera_size[1] * scale
        self.panel = 300
        self.screen = pygame.display.set_mode((self.cam_w + self.panel, self.cam_h))
        pygame.display.set_caption(title)
        self.font = pygame.font.Font(None, 22)
        self.dt = 1.0 / fps_hint
        self.mode = "local" if autopilot else "user"
        self.recording = True
        self.estop = False
        self.quit = False
        self.steering = 0.0
        self.throttle = 0.0
        self._held: set[str] = set()
        self._delete = False
        self._joy: Any = None
        self._minimap = self._make_minimap(track) if track is not None else None
        if pygame.joystick.get_count():
            self._open_joystick(0)

    # -- input -----------------------------------------------------------------------
    KEYMAP = {
        "w": "up",
        "up": "up",
        "s": "down",
        "down": "down",
        "a": "left",
        "left": "left",
        "d": "right",
        "right": "right",
    }

    def _open_joystick(self, index: int) -> None:
        try:
            self._joy = self.pg.joystick.Joystick(index)
            self._joy.init()
        except self.pg.error:
            self._joy = None

    def poll(self) -> None:
        """Handle pending events and update the user's steering/throttle."""
        pg = self.pg
        gp = self.gamepad
        for ev in pg.event.get():
            if ev.type == pg.QUIT:
                self.quit = True
            elif ev.type == pg.KEYDOWN:
                name = pg.key.name(ev.key)
                if ev.key == pg.K_ESCAPE:
                    self.quit = True
                elif name == "r":
                    self.recording = not self.recording
                elif name == "m":
                    self.next_mode()
                elif ev.key == pg.K_SPACE:
                    self.estop = not self.estop
                elif ev.key in (pg.K_BACKSPACE, pg.K_DELETE):
                    self._delete = True
                elif name in self.KEYMAP:
                    self._held.add(self.KEYMAP[name])
            elif ev.type == pg.KEYUP:
                name = pg.key.name(ev.key)
                if name in self.KEYMAP:
                    self._held.discard(self.KEYMAP[name])
            elif ev.type == pg.JOYDEVICEADDED and self._joy is None:
                self._open_joystick(ev.device_index)
            elif ev.type == pg.JOYBUTTONDOWN:
                if ev.button == gp.record_button:
                    self.recording = not self.recording
                elif ev.button == gp.mode_button:
                    self.next_mode()
                elif ev.button == gp.estop_button:
                    self.estop = not self.estop
                elif ev.button == gp.delete_button:
                    self._delete = True
        self._update_command()

    def next_mode(self) -> None:
        if not self.autopilot:
            self.mode = "user"
            return
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]

    def _update_command(self) -> None:
        if self._joy is not None:
            gp = self.gamepad
            try:
                st = self._joy.get_axis(gp.steering_axis)
                th = self._joy.get_axis(gp.throttle_axis)
            except self.pg.error:
                self._joy = None
            else:
                th = -th if gp.invert_throttle else th
                self.steering = 0.0 if abs(st) < gp.deadzone else max(-1.0, min(1.0, st))
                self.throttle = 0.0 if abs(th) < gp.deadzone else max(-1.0, min(1.0, th))
                if self.steering or self.throttle or not self._held:
                    return
        h = self._held
        steer_to = ("right" in h) - ("left" in h)
        thr_to = ("up" in h) - ("down" in h)
        self.steering = _slew(self.steering, float(steer_to), STEER_RATE * self.dt)
        self.throttle = _slew(self.throttle, float(thr_to), THROTTLE_RATE * self.dt)

    def user_command(self) -> tuple[float, float]:
        return self.steering, self.throttle

    def take_delete_request(self) -> bool:
        d, self._delete = self._delete, False
        return d

    # -- drawing ---------------------------------------------------------------------
    def _make_minimap(self, track: Any) -> tuple[Any, Any]:
        pg = self.pg
        size = self.panel - 20
        x0, y0, x1, y1 = track.bounds(1.0)
        k = size / max(x1 - x0, y1 - y0)

        def to_px(x: Any, y: Any) -> tuple[Any, Any]:
            return 10 + (x - x0) * k, 10 + (y1 - y) * k

        surf = pg.Surface((self.panel, size + 20))
        surf.fill((30, 30, 30))
        pts = [to_px(float(x), float(y)) for x, y in track.pts[::4]]
        pg.draw.lines(surf, (110, 110, 110), True, pts, max(2, int(track.width_m * k)))
        pg.draw.lines(surf, (200, 200, 60), True, pts, 1)
        return surf, to_px

    def draw(self, frame: np.ndarray | None, world: Any, info: dict[str, Any]) -> None:
        pg = self.pg
        scr = self.screen
        scr.fill((20, 20, 20))
        if frame is not None:
            rgb = np.ascontiguousarray(frame[:, :, ::-1].swapaxes(0, 1))
            surf = pg.surfarray.make_surface(rgb)
            scr.blit(pg.transform.scale(surf, (self.cam_w, self.cam_h)), (0, 0))
        if self._minimap is not None and world is not None:
            mm, to_px = self._minimap
            scr.blit(mm, (self.cam_w, 0))
            tr = getattr(world, "trail", None)
            if tr is not None and len(tr.x) > 1:
                n = min(len(tr.x), 400)
                pts = [to_px(x, y) for x, y in zip(tr.x[-n:], tr.y[-n:], strict=True)]
                pts = [(px + self.cam_w, py) for px, py in pts]
                pg.draw.lines(scr, (80, 200, 255), False, pts, 2)
            s = world.car.state
            cx, cy = to_px(s.x, s.y)
            pg.draw.circle(scr, (255, 80, 80), (int(cx + self.cam_w), int(cy)), 5)
        lines = self.hud_lines(world, info)
        y = self.panel - 10
        for text in lines:
            scr.blit(self.font.render(text, True, (230, 230, 230)), (self.cam_w + 10, y))
            y += 20
        if self.estop:
            scr.blit(self.font.render("E-STOP", True, (255, 60, 60)), (10, 10))
        pg.display.flip()

    def hud_lines(self, world: Any, info: dict[str, Any]) -> list[str]:
        """The HUD text (also what tests read)."""
        out = [
            f"mode {self.mode}   {'REC' if info.get('recording') else 'rec off'} ({info.get('records', 0)})"
        ]
        if world is not None:
            s = world.car.state
            sc = world.score
            out += [
                f"speed {s.v:.2f} m/s",
                f"steering {s.steering:+.2f}  throttle {s.throttle:+.2f}",
                f"lap {sc.laps}   cte {world.cte:+.3f} m",
                f"interventions {sc.interventions}   autonomy {sc.autonomy:.3f}",
            ]
        if "exit" in info:
            out.append(f"exit {info['exit']}   offload {info.get('offload_rate', 0.0):.0%}")
        out.append("WASD/arrows R rec M mode Space stop Bksp del Esc")
        return out

    def close(self) -> None:
        if self.pg.display.get_init():
            self.pg.display.quit()


def _slew(v: float, target: float, step: float) -> float:
    if target == 0.0:  # released: recentre quickly
        step *= 2
    if v < target:
        return min(target, v + step)
    return max(target, v - step)
