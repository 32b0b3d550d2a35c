"""The pygame driving window under SDL's dummy driver, driven by posted key events:
a scripted user (not a mock) — the window reads events exactly as from a keyboard."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
pygame = pytest.importorskip("pygame")

from edgepilot.drive.car import drive_car  # noqa: E402
from edgepilot.drivelog import LogReader  # noqa: E402
from edgepilot.sim.drive import expert_drive, open_log, sim_options, sim_parts  # noqa: E402
from edgepilot.sim.expert import Expert  # noqa: E402
from edgepilot.sim.tracks import load_track  # noqa: E402
from edgepilot.sim.world import SimWorld  # noqa: E402
from tests.machine import Interval  # noqa: E402
from vehicle.ui import DriveWindow  # noqa: E402
from vehicle.userinput import WindowUser  # noqa: E402


class ScriptedUser(DriveWindow):
    """Posts the key events of ``script`` (frame -> [(type, key)]) before each poll."""

    def __init__(self, *a, script: dict[int, list[tuple[int, int]]], **kw) -> None:
        super().__init__(*a, **kw)
        self.script = script
        self.k = 0

    def poll(self) -> None:
        for etype, key in self.script.get(self.k, []):
            pygame.event.post(pygame.event.Event(etype, key=key, mod=0, unicode="", scancode=0))
        self.k += 1
        super().poll()


DOWN, UP = pygame.KEYDOWN, pygame.KEYUP


def keyboard_drive(tmp_path, script, *, delete_seconds=5.0, autopilot=True):
    t = load_track("oval")
    w = SimWorld(t)
    win = ScriptedUser(t, script=script, autopilot=autopilot)
    win.mode = "user"
    parts = sim_parts(w, laps=99, max_seconds=60, expert=Expert(t))
    parts.user = WindowUser(win, parts.user)
    parts.recorder = open_log(tmp_path / "log", w, {"pilot": "keyboard"})
    parts.extras.append(win)
    run = drive_car(parts, sim_options(w, "user", realtime=False, record=True, delete_seconds=delete_seconds))
    return run.loop.stats, LogReader(tmp_path / "log").records(), w


def test_keys_drive_the_car_and_esc_closes_a_valid_log(tmp_path):
    script = {
        0: [(DOWN, pygame.K_w)],
        30: [(DOWN, pygame.K_a)],
        36: [(UP, pygame.K_a)],
        50: [(UP, pygame.K_w), (DOWN, pygame.K_DOWN)],
        60: [(UP, pygame.K_DOWN), (DOWN, pygame.K_ESCAPE)],
    }
    res, recs, w = keyboard_drive(tmp_path, script)
    assert res.quit and res.recorded == 60 == len(recs)
    assert all(r.mode == "user" for r in recs)
    assert recs[10].throttle > 0.5 and recs[10].steering == 0  # W held
    assert min(r.steering for r in recs[30:37]) < -0.5  # A: left is negative (DonkeyCar)
    assert recs[59].throttle < 0  # braking / reverse on Down
    assert recs[20].sim["v"] > 0.5  # the car really moved
    assert recs[20].applied_throttle == recs[20].throttle  # the user drives: label = applied
    assert LogReader(tmp_path / "log").skipped == 0


def test_record_toggle_mode_switch_estop_and_delete(tmp_path):
    script = {
        0: [(DOWN, pygame.K_w)],
        10: [(DOWN, pygame.K_r)],  # recording off
        20: [(DOWN, pygame.K_r)],  # on again
        30: [(DOWN, pygame.K_m)],  # local_angle: the expert steers
        40: [(DOWN, pygame.K_m)],  # local: the expert drives
        50: [(DOWN, pygame.K_SPACE)],  # e-stop
        60: [(DOWN, pygame.K_SPACE)],  # release
        62: [(DOWN, pygame.K_BACKSPACE)],  # delete the last 0.5 s (i = 42..51)
        70: [(DOWN, pygame.K_ESCAPE)],
    }
    res, recs, w = keyboard_drive(tmp_path, script, delete_seconds=0.5)
    idx = [r.i for r in recs]
    assert res.recorded == 60  # 70 frames, 10 not recorded
    assert res.deleted == 10 and len(recs) == 50
    assert max(idx) == 59 and 49 not in idx  # the last 0.5 s before the key went
    modes = {r.i: r.mode for r in recs}
    assert modes[5] == "user" and modes[25] == "local_angle" and modes[35] == "local"
    la = next(r for r in recs if r.mode == "local_angle")
    # the expert steers (label = what was applied), the held W key throttles; no model ran
    assert (
        la.applied_steering == pytest.approx(la.steering) and la.throttle == 1.0 and la.pilot_steering is None
    )
    stopped = [r for r in recs if 40 <= r.i < 49]
    assert stopped and all(r.applied_throttle == 0 and r.applied_steering == 0 for r in stopped)


def test_without_autopilot_mode_stays_user(tmp_path):
    script = {0: [(DOWN, pygame.K_m)], 5: [(DOWN, pygame.K_ESCAPE)]}
    res, recs, _ = keyboard_drive(tmp_path, script, autopilot=False)
    assert {r.mode for r in recs} == {"user"}


def test_hud_shows_the_drive():
    t = load_track("oval")
    w = SimWorld(t)
    win = DriveWindow(t)
    try:
        w.step(0.0, 1.0)
        win.draw(w.render(), w, {"recording": True, "records": 1, "exit": 2, "offload_rate": 0.25})
        text = "\n".join(win.hud_lines(w, {"recording": True, "records": 1, "exit": 2, "offload_rate": 0.25}))
        for needle in (
            "mode local",
            "REC",
            "speed",
            "steering",
            "throttle",
            "lap 0",
            "cte",
            "exit 2",
            "offload 25%",
        ):
            assert needle in text
        px = pygame.surfarray.array3d(win.screen)
        assert px[: win.cam_w].std() > 5  # the camera view was drawn
    finally:
        win.close()


def test_gamepad_buttons_follow_the_profile_mapping():
    """Buttons arrive as pygame events; the mapping is the profile's, not hard-wired."""
    from edgepilot.config import GamepadConfig

    gp = GamepadConfig(record_button=7, mode_button=4, estop_button=9, delete_button=5)
    win = DriveWindow(None, gamepad=gp, autopilot=True)
    try:
        win.mode = "user"

        def press(button):
            pygame.event.post(pygame.event.Event(pygame.JOYBUTTONDOWN, button=button, joy=0, instance_id=0))
            win.poll()

        press(0)  # the default record button means nothing with this mapping
        assert win.recording and win.mode == "user"
        press(7)
        assert not win.recording
        press(4)
        assert win.mode == "local_angle"
        press(9)
        assert win.estop
        press(5)
        assert win.take_delete_request() and not win.take_delete_request()
    finally:
        win.close()


def slept_s(drive) -> tuple[float, float]:
    """(wall-clock seconds of ``drive()``, the part of them it slept): the wall clock less its
    CPU time and what the machine kept the threads waiting for a CPU (tests/machine.py), so
    a busy machine makes the run longer but not its sleep."""
    with Interval() as iv:
        cpu0 = time.process_time()
        drive()
        cpu = time.process_time() - cpu0
    return iv.wall_s, iv.wall_s - cpu - iv.waited_s


def test_realtime_rate_paces_simulated_time_to_the_wall_clock(tmp_path):
    t = load_track("oval")
    w = SimWorld(t)
    wall, slept = slept_s(lambda: expert_drive(w, Expert(t), laps=1, max_seconds=0.5, realtime=True))
    assert w.t == pytest.approx(0.5)
    assert wall >= 0.45  # never ahead of the wall clock...
    assert slept < 0.5 + w.dt  # ...and it sleeps no longer than simulated time asks (one step slack)
    _, slept_flat_out = slept_s(lambda: expert_drive(SimWorld(t), Expert(t), laps=1, max_seconds=0.5))
    assert slept_flat_out < 0.5 / 2  # without --rate realtime it does not pace at all
