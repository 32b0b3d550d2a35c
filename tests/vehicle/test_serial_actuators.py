"""Both serial actuators over real pseudo-terminal pairs: the test is the car's end of
the cable and decodes what the driver sends (values, rates, heartbeats, neutral on
stop), then pulls the port away and brings it back."""

from __future__ import annotations

import math
import os
import select
import struct
import time
import tty
from dataclasses import replace
from pathlib import Path

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import ActuatorConfig
from tests.helpers import wait_for
from tests.machine import Interval
from vehicle import serial_proto as sp
from vehicle.actuators import FramedActuator, LogActuator, RoboHatActuator, pulses
from vehicle.drivetrain import make_actuator

CFG = ActuatorConfig(kind="robohat", heartbeat_ms=40, reconnect_max_s=0.2)


class PtyCable:
    """A pty pair with a stable path (a symlink, like /dev/serial/by-id/...) that can be
    unplugged and plugged back in: the car's side is ``master``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo or line editing before the driver configures it
        os.symlink(os.ttyname(self.slave), self.path)

    def unplug(self) -> None:
        self.path.unlink()
        os.close(self.master)
        os.close(self.slave)

    def read(self, seconds: float) -> bytes:
        out = bytearray()
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if select.select([self.master], [], [], left)[0]:
                out += os.read(self.master, 4096)
        return bytes(out)

    def read_until(self, pred, seconds: float) -> bytes:
        out = bytearray()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not pred(bytes(out)):
            if select.select([self.master], [], [], 0.02)[0]:
                out += os.read(self.master, 4096)
        return bytes(out)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.path.is_symlink():
            self.unplug()


@pytest.fixture
def cable(tmp_path):
    c = PtyCable(tmp_path / "ttyCAR")
    yield c
    c.close()


def lines(data: bytes) -> list[tuple[int, int]]:
    out = []
    for raw in data.split(b"\r"):
        if raw:
            s, t = raw.split(b", ")
            out.append((int(s), int(t)))
    return out


# -- calibration -------------------------------------------------------------------


def test_pulses_centre_ends_and_reverse():
    cfg = ActuatorConfig(steering_left_us=1100, steering_center_us=1450, steering_right_us=1900)
    assert pulses(0, 0, cfg) == (1450, 1500)
    assert pulses(-1, -1, cfg) == (1100, 1000)
    assert pulses(1, 1, cfg) == (1900, 2000)
    assert pulses(0.5, 0.25, cfg) == (1675, 1625)  # each half scales to its own end
    assert pulses(-0.5, 0, cfg) == (1275, 1500)
    assert pulses(7, -3, cfg) == (1900, 1000)  # clamped
    assert pulses(math.nan, math.inf, cfg) == (1450, 1500)  # garbage in: the safe command
    rev = replace(cfg, steering_reverse=True, throttle_reverse=True)
    assert pulses(1, 0.5, rev) == (1100, 1250)


def test_bad_calibration_and_kinds_are_clear_errors():
    with pytest.raises(EdgepilotError, match="steering_center_us"):
        make_actuator(ActuatorConfig(kind="none", steering_center_us=2100))
    with pytest.raises(EdgepilotError, match="outside"):
        make_actuator(ActuatorConfig(kind="none", throttle_forward_us=3000))
    with pytest.raises(EdgepilotError, match="heartbeat_ms"):
        make_actuator(ActuatorConfig(kind="none", heartbeat_ms=300))
    with pytest.raises(EdgepilotError, match="unknown kind"):
        make_actuator(ActuatorConfig(kind="pwm-hat"))
    with pytest.raises(EdgepilotError, match="simulator"):
        make_actuator(ActuatorConfig(kind="sim"))
    a = make_actuator(ActuatorConfig(kind="none"))
    assert isinstance(a, LogActuator)
    a.run(1, 1)
    assert a.last_us == (2000, 2000)
    a.close()
    assert a.last_us == (1500, 1500)


# -- Robo HAT MM1 text protocol ----------------------------------------------------


def test_robohat_sends_each_command_as_text_and_neutral_on_close(cable):
    act = RoboHatActuator(CFG, port=str(cable.path))
    try:
        got = lines(cable.read_until(lambda b: b.count(b"\r") >= 1, 2.0))
        assert got[:1] == [(1500, 1500)]  # neutral as soon as the port opens
        assert act.connected
        sent = []
        for i in range(30):  # 20 Hz (the loop's rate; the MM1 takes at most ~33 Hz), a sweep
            s, t = -1 + i / 15, 0.3
            act.run(s, t)
            sent.append(pulses(s, t, CFG))
            time.sleep(0.05)
        rx = lines(cable.read(0.2))
        if rx[-1:] == [(1500, 1500)]:  # the loop went quiet: the driver's own neutral (250 ms)
            rx = rx[:-1]
        assert rx == [x for x in sent if x in rx]  # in order, nothing invented
        # the rate: one line per run() (coalescing only if the worker fell behind)
        assert len(rx) >= 0.9 * len(sent), (len(rx), len(sent))
        assert rx[-1] == sent[-1]
        cable.write(b"1400, 1600\r")  # the MM1 reports the RC receiver
        deadline = time.monotonic() + 2
        while act.telemetry.get("rc_us") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert act.telemetry["rc_us"] == (1400, 1600)
    finally:
        act.close()
    assert lines(cable.read(0.2))[-1:] == [(1500, 1500)]
    assert not act.connected


def _drive_through_outage(act, cable, decode):
    """Run at 50 Hz while the cable is pulled for 0.5 s; returns (the longest run() call in
    seconds, less what the machine kept the threads waiting for a CPU in it; rx after)."""
    cable.read_until(lambda b: len(decode(b)) >= 2, 2.0)
    worst = 0.0
    for i in range(60):
        if i == 10:
            cable.unplug()
        if i == 35:
            cable.plug()
        with Interval() as call:
            act.run(0.5, 0.2)
        worst = max(worst, call.own_s)
        if i == 30:
            assert not act.connected
            assert act.telemetry.get("assumed_neutral") is True
        time.sleep(0.02)
    return worst, decode(cable.read(0.3))


def test_robohat_survives_the_port_vanishing(cable):
    act = RoboHatActuator(CFG, port=str(cable.path))
    try:
        worst, rx = _drive_through_outage(act, cable, lines)
        assert worst < 0.05, worst  # run() never waited on the dead port
        assert act.connected and act.stats["disconnects"] == 1 and act.stats["connects"] == 2
        assert act.stats["open_failures"] >= 1  # it kept trying while the path was gone
        assert rx[0] == (1500, 1500)  # back on the new port: neutral first, then commands
        assert pulses(0.5, 0.2, CFG) in rx[1:]
    finally:
        act.close()


def test_port_missing_at_start_is_retried(tmp_path):
    act = RoboHatActuator(CFG, port=str(tmp_path / "ttyCAR"))
    try:
        act.run(0.1, 0.1)  # no port yet: returns at once, raises nothing
        assert wait_for(lambda: act.stats["open_failures"] >= 2, 5)  # it keeps trying
        assert not act.connected
        cable = PtyCable(tmp_path / "ttyCAR")
        try:
            got = lines(cable.read_until(lambda b: b.count(b"\r") >= 1, 2.0))
            assert got[0] == (1500, 1500)  # the stale command from before was not replayed
            assert act.connected
        finally:
            act.close()
            cable.close()
    finally:
        act.close()


# -- the framed protocol -----------------------------------------------------------


def frames(data: bytes) -> list[sp.Frame]:
    p = sp.Parser()
    out = p.feed(data)
    assert p.bad_crc == 0 and p.bad_len == 0
    return out


def test_framed_commands_heartbeats_and_sequence(cable):
    cfg = replace(CFG, kind="framed", steering_left_us=1100, steering_right_us=1900)
    act = FramedActuator(cfg, port=str(cable.path))
    try:
        first = frames(cable.read_until(lambda b: len(frames(b)) >= 3, 2.0))
        assert first[0].type == sp.T_CONFIG
        assert first[0].payload == (1500).to_bytes(2, "little") * 2 + (1000).to_bytes(2, "little") + (
            2000
        ).to_bytes(2, "little")
        # protocol v2: RC reports requested, no kill switch in this profile
        assert (first[1].type, first[1].payload) == (sp.T_RC_CONFIG, bytes([sp.RC_REPORT, 0xDC, 0x05]))
        assert (first[2].type, sp.decode_cmd(first[2])) == (sp.T_CMD, (1500, 1500))
        with Interval() as window:
            for i in range(20):  # 20 Hz for 1 s
                t_last_run = time.monotonic()
                act.run(-0.5 + i / 20, 0.4)
                time.sleep(0.05)
            rx = frames(cable.read(0.1))
        cmds = [sp.decode_cmd(f) for f in rx if f.type == sp.T_CMD]
        hbs = [f for f in rx if f.type == sp.T_HEARTBEAT]
        assert cmds[-1] == pulses(-0.5 + 19 / 20, 0.4, cfg)
        assert len(cmds) >= 18
        # one per heartbeat_ms (40 ms) over the ~1.1 s window: never more often, and no fewer
        # than the window less what the machine kept the threads waiting for a CPU allows
        hb_s = cfg.heartbeat_ms / 1000
        assert window.own_s / hb_s - 2 <= len(hbs) <= window.wall_s / hb_s + 2, (len(hbs), window)
        seqs = [f.seq for f in first + rx]
        assert all((b - a) % 256 == 1 for a, b in zip(seqs, seqs[1:], strict=False))  # no gaps, no repeats

        # the car answers: ACK for the last command, then telemetry in failsafe
        last = [f for f in rx if f.type == sp.T_CMD][-1]
        cable.write(sp.encode(sp.T_ACK, 0, bytes([last.seq, sp.ACK_OK]) + last.payload))
        tel = struct.pack("<HHBHHHHI", 1500, 1500, sp.F_FAILSAFE, 40, 1, 2, 3, 12345)
        cable.write(sp.encode(sp.T_TELEMETRY, 1, tel))
        deadline = time.monotonic() + 2
        while act.telemetry.get("uptime_ms") != 12345 and time.monotonic() < deadline:
            time.sleep(0.01)
        t_seen = time.monotonic()
        assert act.telemetry["failsafe"] is True and act.telemetry["failsafe_count"] == 3
        assert act.telemetry["rx_lost"] == 2 and act.stats["acks"] == 1
        # that command was sent after its run() call and acknowledged before we saw the ACK
        assert 0 < act.telemetry["ack_rtt_ms"] <= (t_seen - t_last_run) * 1e3
        assert act.stats["disconnects"] == 0 and act.stats["last_error"] is None
    finally:
        act.close()
    tail = frames(cable.read(0.2))
    # that telemetry lacked the "configured" flag (a reset firmware): CONFIG is sent again
    assert [f.payload for f in tail if f.type == sp.T_CONFIG] == [first[0].payload]
    assert sp.decode_cmd([f for f in tail if f.type == sp.T_CMD][-1]) == (1500, 1500)


def test_framed_survives_the_port_vanishing(cable):
    cfg = replace(CFG, kind="framed")
    act = FramedActuator(cfg, port=str(cable.path))
    try:
        worst, rx = _drive_through_outage(act, cable, frames)
        assert worst < 0.05, worst
        assert act.connected and act.stats["disconnects"] == 1
        assert rx[0].type == sp.T_CONFIG  # a fresh link: configure, neutral, then commands
        cmds = [sp.decode_cmd(f) for f in rx if f.type == sp.T_CMD]
        assert cmds[0] == (1500, 1500) and pulses(0.5, 0.2, cfg) in cmds[1:]
    finally:
        act.close()
