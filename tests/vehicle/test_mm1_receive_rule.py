"""The Robo HAT MM1 as DonkeyCar's ``code.py`` sees our bytes.

``Mm1CodePy`` below re-implements the receive rule of ``code.py`` (autorope/donkeycar,
``donkeycar/contrib/robohat/code.py``, ``main()``) step by step; it stands in for the
board, and the bytes it gets are the ones ``RoboHatActuator`` writes to a real pty.
What the rule means for a sender:

* bytes are read one at a time while the UART has any; a CR clears the line buffer and
  ends the pass; every other byte is appended and the stripped text kept in ``datastr``;
* after the reads, a ``datastr`` of 10 or more characters is a command: steering from its
  first 4 characters, throttle from its last 4 -- so a line with a 3-digit pulse
  (``"999, 1500"``, 9 characters) is never taken and the previous command stays;
* when ``int()`` fails, both outputs take the RC receiver's readings instead;
* one pass per >= 25 ms loop iteration, one command at most per pass.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig, load_profile
from tests.helpers import wait_for
from vehicle.actuators import (
    MM1_INTERVAL_S,
    STALE_S,
    RoboHatActuator,
    mm1_line,
    pulses,
    serial_port,
    validate,
)
from vehicle.drivetrain import make_actuator

RC_READING = (1523, 1477)  # what the model's receiver reads: where a failed parse lands


class Mm1CodePy:
    """code.py's receive rule, one ``loop_pass()`` per iteration of its main loop."""

    def __init__(self) -> None:
        self.uart = bytearray()  # bytes the board's UART holds, not yet read
        self.data = bytearray()
        self.datastr = ""
        self.applied: list[tuple[int, int]] = []  # commands taken, in order
        self.fallbacks = 0  # lines whose int() failed: the RC readings drove instead
        self.changed = threading.Condition()

    def loop_pass(self) -> None:
        while self.uart:  # byte = uart.read(1); None when the UART is empty
            byte = bytes(self.uart[:1])
            del self.uart[:1]
            if byte == b"\r":  # data = bytearray(''); break
                self.data = bytearray()
                break
            self.data += byte
            self.datastr = "".join(chr(c) for c in self.data).strip()
        if len(self.datastr) >= 10:
            steering_val, throttle_val = RC_READING
            try:
                steering_val = int(self.datastr[:4])
                throttle_val = int(self.datastr[-4:])
            except ValueError:
                self.fallbacks += 1
            self.data = bytearray()
            self.datastr = ""
            with self.changed:
                self.applied.append((steering_val, throttle_val))
                self.changed.notify_all()

    def receive(self, chunk: bytes) -> None:
        """``chunk`` arrived; the board runs passes until its UART is empty."""
        self.uart += chunk
        while self.uart:
            self.loop_pass()


def test_the_model_drops_what_code_py_drops():
    """The model is able to fail a sender: short lines, torn lines, glued lines."""
    m = Mm1CodePy()
    m.receive(b"1600, 1700\r")
    m.receive(b"999, 1500\r")  # 9 characters: never a command
    assert m.applied == [(1600, 1700)]
    m.receive(b"12")  # the remains of an old line, then a good one glued on
    m.receive(b"1500, 1500\r")
    assert m.applied[-1] == (1215, 1500)  # steering from "12" + "15": a wrong command taken
    m.receive(b"1500, 150")
    m.receive(b"0\r")  # split anywhere: still one command
    assert m.applied[-1] == (1500, 1500)
    m.receive(b"15x0, 1500\r")
    assert m.applied[-1] == RC_READING and m.fallbacks == 1


def expected_us(x: float, neg: int, mid: int, pos: int, reverse: bool) -> int:
    """The pulse a calibration promises for command x (docs/hardware.md#calibration):
    each half of -1..1 scales linearly to its own end point, ``reverse`` flips x."""
    x = max(-1.0, min(1.0, -x if reverse else x))
    return round(mid + abs(x) * ((pos if x >= 0 else neg) - mid))


def expected(cfg: ActuatorConfig, s: float, t: float) -> tuple[int, int]:
    c = cfg
    return (
        expected_us(s, c.steering_left_us, c.steering_center_us, c.steering_right_us, c.steering_reverse),
        expected_us(
            t, c.throttle_reverse_us, c.throttle_neutral_us, c.throttle_forward_us, c.throttle_reverse
        ),
    )


SWEEP = [round(-1 + i / 100, 2) for i in range(201)]  # -1..1 in steps of 0.01

CALIBRATIONS = {
    "full range": ActuatorConfig(kind="robohat"),
    "the shipped kit-picam-mm1 profile": load_profile("kit-picam-mm1").actuator,
    "DonkeyCar MM1 defaults (left = 2000 us)": ActuatorConfig(
        kind="robohat", steering_left_us=2000, steering_right_us=1000
    ),
    "asymmetric, odd values": ActuatorConfig(
        kind="robohat",
        steering_left_us=1001,
        steering_center_us=1234,
        steering_right_us=1999,
        throttle_reverse_us=1333,
        throttle_neutral_us=1517,
        throttle_forward_us=1666,
    ),
    "narrow": ActuatorConfig(
        kind="robohat",
        steering_left_us=1490,
        steering_right_us=1510,
        throttle_reverse_us=1495,
        throttle_forward_us=1505,
    ),
    "centre at the ends, reversed": ActuatorConfig(
        kind="robohat",
        steering_left_us=1000,
        steering_center_us=1000,
        steering_right_us=2000,
        throttle_reverse_us=2000,
        throttle_neutral_us=2000,
        throttle_forward_us=1000,
        steering_reverse=True,
        throttle_reverse=True,
    ),
}


class Mm1Board:
    """The board's end of a pty: a thread hands every read to the code.py model."""

    def __init__(self, path) -> None:
        self.model = Mm1CodePy()
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.symlink(os.ttyname(self.slave), path)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    self.model.receive(os.read(self.master, 4096))
                except OSError:
                    return

    def wait_applied(self, n: int, timeout: float = 5.0) -> bool:
        with self.model.changed:
            return self.model.changed.wait_for(lambda: len(self.model.applied) >= n, timeout)

    def send_rc(self, line: bytes) -> None:
        os.write(self.master, line)

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def board(tmp_path):
    b = Mm1Board(tmp_path / "serial0")
    yield b
    b.close()


@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_every_command_passes_code_py_and_applies_the_intended_pulse(board, tmp_path, name):
    """Steering and throttle each over -1..1 in steps of 0.01, through the real driver and a
    pty: the board takes every line and applies exactly the calibrated pulses.

    The driver's pace (one line per 30 ms, tested below) is lifted here so 201 commands take
    a second: each run() waits for the board to apply the previous one, so none coalesce."""
    cfg = CALIBRATIONS[name]
    act = RoboHatActuator(cfg, port=str(tmp_path / "serial0"))
    act.min_interval_s = 0.0
    try:
        assert board.wait_applied(1)
        assert board.model.applied[0] == expected(cfg, 0.0, 0.0)  # neutral on connect
        for i, (s, t) in enumerate(zip(SWEEP, reversed(SWEEP), strict=True)):
            act.run(s, t)
            assert board.wait_applied(i + 2), (name, s, t, board.model.applied[-3:])
            assert board.model.applied[-1] == expected(cfg, s, t), (name, s, t)
    finally:
        act.close()
    assert board.model.fallbacks == 0
    assert board.wait_applied(len(SWEEP) + 2) and board.model.applied[-1] == expected(cfg, 0.0, 0.0)


def _calibration(lo: int, hi: int):
    """Any calibration the MM1 validation allows: centre between the ends, either order."""

    @st.composite
    def half(draw):
        a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
        mid = draw(st.integers(min(a, b), max(a, b)))
        return (a, mid, b) if draw(st.booleans()) else (b, mid, a)

    return half


@given(
    steering=_calibration(1000, 2000)(),
    throttle=_calibration(1000, 2000)(),
    rev=st.tuples(st.booleans(), st.booleans()),
    cuts=st.lists(st.integers(1, 10), min_size=1, max_size=40),
)
def test_any_allowed_calibration_and_any_chunking(steering, throttle, rev, cuts):
    """Every allowed calibration, the full sweep, the bytes split into the board's UART at
    arbitrary points (a pass may run on half a line): every line is taken as intended."""
    cfg = ActuatorConfig(
        kind="robohat",
        steering_left_us=steering[0],
        steering_center_us=steering[1],
        steering_right_us=steering[2],
        throttle_reverse_us=throttle[0],
        throttle_neutral_us=throttle[1],
        throttle_forward_us=throttle[2],
        steering_reverse=rev[0],
        throttle_reverse=rev[1],
    )
    validate(cfg)  # an allowed calibration
    cmds = list(zip(SWEEP, SWEEP[::-1], strict=True)) + [(s, 0.37) for s in SWEEP]
    stream = b"".join(mm1_line(pulses(s, t, cfg)) for s, t in cmds)
    m = Mm1CodePy()
    pos, k = 0, 0
    while pos < len(stream):
        step = cuts[k % len(cuts)]
        m.receive(stream[pos : pos + step])
        pos, k = pos + step, k + 1
    assert m.fallbacks == 0
    assert m.applied == [expected(cfg, s, t) for s, t in cmds]


def test_calibration_outside_what_the_mm1_takes_is_refused_naming_the_key():
    for key, bad in [("steering_left_us", 999), ("throttle_forward_us", 2001), ("steering_center_us", 950)]:
        cfg = replace(ActuatorConfig(kind="robohat"), **{key: bad})
        with pytest.raises(
            EdgepilotError, match=rf"actuator\.{key}: {bad} us is outside 1000\.\.2000 us.*code\.py"
        ):
            RoboHatActuator(cfg, port="/nonexistent/serial0")
    # the framed firmware takes 500..2500 us: the same value is fine there
    make_actuator(ActuatorConfig(kind="none", steering_left_us=999)).close()
    with pytest.raises(EdgepilotError, match="kill_switch"):
        RoboHatActuator(ActuatorConfig(kind="robohat", kill_switch="high"), port="/nonexistent/serial0")


def test_the_last_guard_clamps_to_four_digits():
    assert mm1_line((999, 2500)) == b"1000, 2000\r"
    assert mm1_line((1500, 1500)) == b"1500, 1500\r"


def test_default_port_is_the_gpio_uart_code_py_reads():
    assert serial_port(ActuatorConfig(kind="robohat")) == "/dev/serial0"
    assert serial_port(ActuatorConfig(kind="framed")) == "/dev/ttyACM0"
    assert serial_port(ActuatorConfig(kind="robohat", port="/dev/ttyAMA0")) == "/dev/ttyAMA0"


def test_steering_direction_matches_donkeycar_mm1_defaults():
    """DonkeyCar's RoboHATDriver.set_pulse with cfg_complete's MM1 defaults
    (MM1_STEERING_MID 1500, MM1_MAX_FORWARD 2000, MM1_STOPPED_PWM 1500, MM1_MAX_REVERSE 1000):
    steering > 0 maps 0..1 onto MID..1000, steering <= 0 maps -1..0 onto 2000..MID; throttle
    > 0 onto STOPPED..MAX_FORWARD, else MAX_REVERSE..STOPPED; donkeycar.utils.map_range
    floors. The calibration docs/hardware.md gives for the MM1 reproduces it (to the floor)."""

    def map_range(x, x_min, x_max, y_min, y_max):
        return int(((x - x_min) / ((x_max - x_min) / (y_max - y_min)) + y_min) // 1)

    def donkey(s, t):
        st_us = map_range(s, 0, 1.0, 1500, 1000) if s > 0 else map_range(s, -1, 0, 2000, 1500)
        th_us = map_range(t, 0, 1.0, 1500, 2000) if t > 0 else map_range(t, -1, 0, 1000, 1500)
        return st_us, th_us

    cfg = CALIBRATIONS["DonkeyCar MM1 defaults (left = 2000 us)"]
    for s in SWEEP:
        for t in (-1.0, -0.33, 0.0, 0.5, 1.0):
            ours, theirs = pulses(s, t, cfg), donkey(s, t)
            assert abs(ours[0] - theirs[0]) <= 1 and abs(ours[1] - theirs[1]) <= 1, (s, t, ours, theirs)
    # and our plain default is the mirror image: full left is 1000 us there
    assert pulses(-1, 0, ActuatorConfig())[0] == 1000 and donkey(-1, 0)[0] == 2000
    # the shipped MM1 profile steers as DonkeyCar does (its throttle is capped lower on purpose)
    kit = load_profile("kit-picam-mm1").actuator
    assert all(abs(pulses(s, 0, kit)[0] - donkey(s, 0)[0]) <= 1 for s in SWEEP)


def test_the_driver_keeps_to_the_boards_pace(board, tmp_path):
    """run() at ~200 Hz for 0.6 s: code.py takes one line per >= 25 ms pass, so more would
    pile up in its UART buffer. The driver sends at most one line per MM1_INTERVAL_S
    (the newest command; the others coalesce), and the last command always arrives."""
    act = RoboHatActuator(ActuatorConfig(kind="robohat"), port=str(tmp_path / "serial0"))
    try:
        assert board.wait_applied(1)
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 0.6:
            n += 1
            act.run(-1 + (n % 200) / 100, 0.2)
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        last = pulses(-1 + (n % 200) / 100, 0.2, ActuatorConfig(kind="robohat"))
        with board.model.changed:
            assert board.model.changed.wait_for(lambda: board.model.applied[-1] == last, 2)
        lines = len(board.model.applied) - 1
        st = act.stats
        # the worker counts a line after writing it: the board may have it first (loaded machine)
        assert wait_for(lambda: st["sent"] >= lines, 2), (st, lines)
        # each run() call went out as one line or was replaced by a newer one, never queued...
        assert st["sent"] == lines and st["sent"] + st["coalesced"] + st["dropped_stale"] == n, (st, n, lines)
        assert lines <= elapsed / MM1_INTERVAL_S + 2, (lines, elapsed)  # ...at most one per interval
        assert st["coalesced"] > 0 and board.model.fallbacks == 0
    finally:
        act.close()


def test_mm1_rc_read_back_becomes_a_reading(board, tmp_path):
    """code.py writes "%i, %i\\r\\n" (steering, throttle) every pass; garbage is counted."""
    act = RoboHatActuator(ActuatorConfig(kind="robohat"), port=str(tmp_path / "serial0"))
    try:
        assert board.wait_applied(1)
        t_sent = time.monotonic()
        board.send_rc(b"1400, 1650\r\nnoise\r\n1401, 16")
        deadline = time.monotonic() + 2
        while act.rc_reading() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        r = act.rc_reading()
        assert (r.steering_us, r.throttle_us, r.aux_us, r.killed) == (1400, 1650, None, False)
        assert t_sent <= r.at <= time.monotonic() and act.telemetry["rc_us"] == (1400, 1650)
        assert act.stats["bad_lines"] == 1
        board.send_rc(b"50\r\n")  # the rest of the torn line
        deadline = time.monotonic() + 2
        while act.rc_reading().steering_us != 1401 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert act.rc_reading().throttle_us == 1650
    finally:
        act.close()


def test_connect_ends_a_partial_line_the_board_still_holds(board, tmp_path):
    """The remains of an old line ("12": a Pi that died mid-write, boot noise) would glue
    onto our first line and steer 1215 us; the driver opens with a CR, which code.py
    takes as the end of any line."""
    board.model.receive(b"12")
    act = RoboHatActuator(ActuatorConfig(kind="robohat"), port=str(tmp_path / "serial0"))
    try:
        assert board.wait_applied(1)
        assert board.model.applied == [(1500, 1500)]
    finally:
        act.close()


def test_a_quiet_loop_gets_neutral_not_code_pys_10_s_hold(board, tmp_path):
    """code.py keeps the last command for 10 s after the last byte. A loop that stops
    calling run() (hung, stuck) makes the driver's worker send neutral itself, no earlier
    than the firmware's 250 ms failsafe would."""
    act = RoboHatActuator(ActuatorConfig(kind="robohat"), port=str(tmp_path / "serial0"))
    try:
        assert board.wait_applied(1)
        for _ in range(4):
            time.sleep(0.05)
            act.run(0.3, 0.6)
        last_run = time.monotonic()
        drive = pulses(0.3, 0.6, ActuatorConfig(kind="robohat"))
        with board.model.changed:
            assert board.model.changed.wait_for(lambda: board.model.applied[-1] == (1500, 1500), 3)
            stopped = time.monotonic()
        assert drive in board.model.applied and stopped - last_run >= STALE_S
        # counted after the write: the board may apply it before the worker counts it
        assert wait_for(lambda: act.stats["quiet_neutral"] >= 1, 2)
        assert act.stats["quiet_neutral"] == 1
        time.sleep(STALE_S * 2)
        assert act.stats["quiet_neutral"] == 1  # once, not every period
    finally:
        act.close()
