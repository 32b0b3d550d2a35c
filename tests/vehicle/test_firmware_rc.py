"""The RC receiver and the kill switch, on the real firmware image in simavr.

ep_simavr drives the receiver pins (A0 steering, A1 throttle, A2 aux / kill) with real
pulse trains, a pulse every 20 ms per channel; the firmware measures them with its
pin-change interrupt and reports them in RC frames; the servo/ESC pulses are measured on
the simulated PWM pins. Simulated milliseconds (the ``rc``/``pwm`` events) time what the
firmware does; the wall-clock waits are only timeouts for conditions.

Stood in: the receiver (the simulator's pulse trains), the board (simavr); in the v1
test, the old firmware (a pty answering as version 1 firmware does).
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import serial

from edgepilot.config import REPO_ROOT, ActuatorConfig, load_profile
from edgepilot.drive.loop import DriveLoop, LoopOptions
from edgepilot.drive.parts import Frame
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.schema.log import SessionMeta
from tests.helpers import wait_for
from tests.vehicle.test_firmware_core import core  # noqa: F401 (fixture)
from tests.vehicle.test_firmware_simavr import Simulator, sim_build  # noqa: F401 (fixture)
from tests.vehicle.test_serial_actuators import PtyCable, frames
from vehicle import serial_proto as sp
from vehicle.actuators import FramedActuator, pulses
from vehicle.firmware import FIRMWARE_DIR
from vehicle.rc_input import RcUser

CFG = ActuatorConfig(kind="framed", heartbeat_ms=40, reconnect_max_s=0.2, kill_switch="high")
SERVO_FRAME_MS = 20  # a new pulse width shows on the pin at the next 20 ms PWM period
LOST_MS = sp.RC_LOST_MS


@pytest.fixture
def rc_sim(sim_build):  # noqa: F811
    s = Simulator(sim_build["ep_simavr"], sim_build["edgepilot_fw.elf"], "--rc")
    yield s
    s.stop()


def wait_reading(act, pred, seconds: float = 3.0):
    """The newest RC reading once it satisfies ``pred``, else the last one."""
    wait_for(lambda: act.rc_reading() is not None and pred(act.rc_reading()), seconds)
    return act.rc_reading()


def event_time(sim, ch: int, width: int) -> int:
    """Simulated ms of the frame where receiver channel ch started sending ``width``."""
    assert wait_for(lambda: any(e[0] == ch and e[2] == width for e in sim.rc_events), 3), sim.rc_events
    return [t for c, t, w in sim.rc_events if c == ch and w == width][-1]


def pin_change_after(sim, t_ms: int, width: int) -> int:
    """Simulated ms of the first throttle pulse of ``width`` at or after t_ms."""
    assert sim.wait_width("throttle", width, 3), sim.pwm[-4:]
    return next(t for ch, t, w, _ in sim.pwm if ch == "throttle" and t >= t_ms and abs(w - width) <= 1)


class Pi:
    """A host that keeps commanding the same thing at 20 Hz, whatever happens."""

    def __init__(self, act) -> None:
        self.act, self.cmd, self._stop = act, (0.0, 0.0), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.act.run(*self.cmd)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(1)


class RecordingActuator(FramedActuator):
    """FramedActuator that also keeps every RC report (the test looks at all of them)."""

    def __init__(self, *a, **kw) -> None:
        self.reports: list[sp.RcReport] = []
        super().__init__(*a, **kw)

    def _on_rc(self, r: sp.RcReport) -> None:
        self.reports.append(r)
        super()._on_rc(r)


def test_receiver_pulses_reach_the_host(rc_sim):
    """Every report is right, from the very first pulse: the pins come up high (pull-ups),
    so the first edge the firmware sees on each channel is a fall, which is no pulse."""
    act = RecordingActuator(replace(CFG, kill_switch="off"), port=rc_sim.pty)
    try:
        assert wait_for(lambda: act.telemetry.get("rc_supported") is True and act.reports, 3)
        for ch, us in enumerate((1234, 1777, 1100)):
            rc_sim.rc(ch, us)
        r = wait_reading(act, lambda r: None not in (r.steering_us, r.throttle_us, r.aux_us))
        assert abs(r.steering_us - 1234) <= 2 and abs(r.throttle_us - 1777) <= 2 and abs(r.aux_us - 1100) <= 2
        seen = [(x.steering_us, x.throttle_us, x.aux_us) for x in act.reports]
        for want, got in zip((1234, 1777, 1100), zip(*seen, strict=True), strict=True):
            assert all(v == 0 or abs(v - want) <= 2 for v in got), (want, sorted(set(got)))
        assert not r.killed
        rc_sim.rc(1, 0)  # the throttle channel falls silent: it reads as no signal, not as held
        r = wait_reading(act, lambda r: r.throttle_us is None)
        assert r.throttle_us is None and abs(r.steering_us - 1234) <= 2
        rc_sim.rc(1, 1500)
        r = wait_reading(act, lambda r: r.throttle_us is not None)
        assert abs(r.throttle_us - 1500) <= 2
    finally:
        act.close()


def test_kill_switch_forces_neutral_while_the_pi_commands_full_throttle(rc_sim):
    rc_sim.rc(2, 1000)  # kill switch in the run position
    act = FramedActuator(CFG, port=rc_sim.pty)
    pi = Pi(act)
    try:
        # the kill switch may have caught the firmware before the first run pulse: a
        # neutral command re-arms it (the loop does that by itself: tested below)
        assert wait_reading(act, lambda r: not r.killed).killed is False
        pi.cmd = (0.0, 1.0)
        assert rc_sim.wait_width("throttle", 2000, 3), rc_sim.pwm[-4:]

        rc_sim.rc(2, 1900)  # kill
        t_kill = event_time(rc_sim, 2, 1900)
        t_neutral = pin_change_after(rc_sim, t_kill, 1500)
        # the kill pulse ends 1.9 ms into its frame; the pin follows at the next PWM period
        assert t_neutral - t_kill <= 2 + SERVO_FRAME_MS + 1, (t_kill, t_neutral)
        assert wait_reading(act, lambda r: r.killed).killed
        assert wait_for(lambda: act.stats["killed_acks"] > 0, 2)

        rc_sim.rc(2, 1000)  # switch back to run: the Pi still wants full throttle, so held
        wait_reading(act, lambda r: r.aux_us is not None and r.aux_us < 1500)
        reports = act.stats["rc_reports"]
        assert wait_for(lambda: act.stats["rc_reports"] >= reports + 10, 3)  # 200 ms of reports
        t_release = event_time(rc_sim, 2, 1000)
        assert not [w for ch, t, w, _ in rc_sim.pwm if ch == "throttle" and t > t_release and w != 1500]
        assert act.rc_reading().killed  # re-arm pending

        pi.cmd = (0.0, 0.0)  # a neutral throttle re-arms...
        assert wait_reading(act, lambda r: not r.killed, 3).killed is False
        pi.cmd = (0.0, 1.0)  # ...and the car follows the Pi again
        assert rc_sim.wait_width("throttle", 2000, 3)

        rc_sim.rc(2, 0)  # transmitter off: no signal on the kill channel = killed
        t_lost = event_time(rc_sim, 2, 0)
        t_neutral = pin_change_after(rc_sim, t_lost, 1500)
        # the last pulse ended ~19 ms before t_lost; lost after LOST_MS; then one PWM period
        assert LOST_MS - SERVO_FRAME_MS - 2 <= t_neutral - t_lost <= LOST_MS + SERVO_FRAME_MS + 2, (
            t_lost,
            t_neutral,
        )
    finally:
        pi.stop()
        act.close()


def raw_host(port: str, cmds: list[tuple[int, int]], config: bool = False) -> list[sp.Frame]:
    """A version 1 host: (CONFIG,) CMD frames every 50 ms and a heartbeat; no RC_CONFIG.
    Returns every frame the firmware sent back."""
    out, parser = [], sp.Parser()
    with serial.Serial(port, 115200, timeout=0) as ser:
        seq = 0
        if config:
            ser.write(sp.config(seq, 1500, 1500, 1000, 2000))
            seq += 1
        for s_us, t_us in cmds:
            ser.write(sp.cmd(seq, s_us, t_us) + sp.heartbeat(seq + 1))
            seq += 2
            time.sleep(0.05)
            out += parser.feed(ser.read(4096))
        time.sleep(0.05)
        out += parser.feed(ser.read(4096))
    return out


def test_kill_switch_setting_survives_a_power_cycle(sim_build, tmp_path):  # noqa: F811
    """Configured once, the kill switch is in force after a reset, before any host has
    said a word: a version 1 host's commands are held (no receiver signal = killed). The
    same host on a board that never had the setting drives, and gets no RC frame."""
    exe, elf = sim_build["ep_simavr"], sim_build["edgepilot_fw.elf"]
    eeprom = tmp_path / "eeprom.bin"
    first = Simulator(exe, elf, "--rc", "--eeprom", str(eeprom))
    act = FramedActuator(CFG, port=first.pty)
    try:
        assert wait_for(lambda: act.telemetry.get("rc_supported") is True, 3)
        assert wait_reading(act, lambda r: r.killed).killed  # no receiver: killed
    finally:
        act.close()
        first.stop()
    assert eeprom.stat().st_size == 1024

    again = Simulator(exe, elf, "--rc", "--eeprom", str(eeprom))
    try:
        got = raw_host(again.pty, [(1500, 1800)] * 8)
        acks = [sp.decode_ack(f) for f in got if f.type == sp.T_ACK]
        assert acks and all(a.status == sp.ACK_KILLED for a in acks), acks
        tel = [sp.decode_telemetry(f) for f in got if f.type == sp.T_TELEMETRY]
        assert tel[-1].flags & sp.F_KILLED
        assert again.width("throttle") == 1500 and not [w for c, _, w, _ in again.pwm if w == 1800]
    finally:
        again.stop()

    fresh = Simulator(exe, elf, "--rc")
    try:
        fresh.rc(0, 1300)  # a receiver pulsing, which a v1 host never asked about
        got = raw_host(fresh.pty, [(1500, 1800)] * 8, config=True)
        assert {f.type for f in got} <= {sp.T_ACK, sp.T_TELEMETRY}, {f.type for f in got}
        acks = [sp.decode_ack(f) for f in got if f.type == sp.T_ACK]
        assert acks[-1].status == sp.ACK_OK and acks[-1].throttle_us == 1800
        assert fresh.wait_width("throttle", 1800, 2)
    finally:
        fresh.stop()


class Camera:
    """Stands in for the USB camera: a grey frame per read, then the end."""

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0

    def read(self) -> Frame | None:
        if self.i >= self.n:
            return None
        self.i += 1
        return Frame(np.full((120, 160, 3), 90, np.uint8), time.monotonic(), self.i)

    def close(self) -> None:
        pass


def test_transmitter_drives_the_loop_in_rc_mode(rc_sim, tmp_path):
    """kit-usb-arduino-rc on the real path up to the pins: receiver pulses -> firmware ->
    RC frames -> FramedActuator -> RcUser -> DriveLoop (user mode, recording) -> CMD ->
    firmware -> PWM pins. The transmitter's command is the recorded label; its kill switch
    is an e-stop the loop sees, and the pins hold neutral in the firmware meanwhile."""
    prof = load_profile("kit-usb-arduino-rc")
    act_cfg = replace(prof.actuator, heartbeat_ms=40)
    for ch, us in enumerate((1250, 1650, 1000)):
        rc_sim.rc(ch, us)
    act = FramedActuator(act_cfg, port=rc_sim.pty)
    user = RcUser(act, prof.rc, act_cfg)
    assert wait_reading(act, lambda r: r.aux_us is not None and not r.killed, 3) is not None
    infos: list[dict] = []
    rec = LogWriter(tmp_path / "log", SessionMeta(session="rc", created=0.0, source="car"), block=True)
    opts = LoopOptions(mode="user", throttle_cap=prof.drive.throttle_cap, rate_hz=20, record=True)
    loop = DriveLoop(
        Camera(400), act, user=user, recorder=rec, options=opts, on_frame=lambda f, i: infos.append(i)
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        steer, thr = user.steering.value(1250), user.throttle.value(1650)
        assert steer < -0.4 and 0.2 < thr < prof.drive.throttle_cap  # left, gently forward
        want = pulses(steer, thr, act_cfg)
        assert want == (1250, 1650)  # RC mode: the servo and ESC get the receiver's own pulses
        assert rc_sim.wait_width("steer", want[0], 3) and rc_sim.wait_width("throttle", want[1], 3)
        rc_sim.rc(2, 1900)  # the kill switch
        assert wait_for(lambda: infos and infos[-1]["estop"], 3)
        assert rc_sim.wait_width("throttle", 1500, 3)
        rc_sim.rc(2, 1000)  # released: the loop's e-stop ends, its neutral command re-arms
        assert wait_for(lambda: infos and not infos[-1]["estop"] and infos[-1]["throttle"] > 0, 3)
        assert rc_sim.wait_width("throttle", want[1], 3)
    finally:
        loop.stop()
        thread.join(5)
        rec.close()
    assert rc_sim.wait_width("throttle", 1500, 1)  # the loop's end: neutral
    recs = LogReader(rec.path).records()
    labels = {(round(r.steering, 2), round(r.throttle, 2)) for r in recs if r.label_source == "human"}
    assert (round(steer, 2), round(thr, 2)) in labels  # the transmitter's command is the label


def test_v1_firmware_never_drives_a_profile_with_a_kill_switch(tmp_path, caplog):
    """A firmware that predates the RC receiver answers RC_CONFIG with ACK_UNKNOWN: with
    a kill switch in the profile every command goes out as neutral, with an error that
    says to flash; without one, the car drives as before."""
    for kill, want in (("high", (1500, 1500)), ("off", pulses(0.2, 0.8, CFG))):
        cable = PtyCable(tmp_path / f"tty-{kill}")
        act = FramedActuator(replace(CFG, kill_switch=kill), port=str(cable.path))
        try:
            first = frames(cable.read_until(lambda b: len(frames(b)) >= 3, 2.0))
            rc_cfg = next(f for f in first if f.type == sp.T_RC_CONFIG)
            cable.write(sp.encode(sp.T_ACK, 0, bytes([rc_cfg.seq, sp.ACK_UNKNOWN]) + bytes(4)))
            assert wait_for(lambda a=act: a.telemetry.get("rc_supported") is False, 2)
            for _ in range(5):
                act.run(0.2, 0.8)
                time.sleep(0.05)
            cmds = [sp.decode_cmd(f) for f in frames(cable.read(0.2)) if f.type == sp.T_CMD]
            assert cmds and set(cmds) == {want}, (kill, cmds)
        finally:
            act.close()
            cable.close()
    assert "Flash the current firmware" in caplog.text


def test_kill_switch_persistence_block(core):  # noqa: F811
    """The EEPROM block: written from the settings in force, restored after a reset,
    refused when blank or corrupt (the kill switch then stays off)."""
    dev = ctypes.create_string_buffer(core.ep_device_sizeof())
    core.ep_device_init(dev, 0)
    for b in sp.rc_config(0, sp.RC_KILL | sp.RC_KILL_LOW | sp.RC_REPORT, 1234):
        core.ep_device_feed(dev, b, 1)
    block = (ctypes.c_uint8 * 5)()
    core.ep_device_rc_persist(dev, block)
    assert bytes(block) == bytes([0xEC, 0x03, 0xD2, 0x04, 0xFF ^ 0xEC ^ 0x03 ^ 0xD2 ^ 0x04])

    def boot(saved: bytes) -> tuple[int, int]:
        d = ctypes.create_string_buffer(core.ep_device_sizeof())
        core.ep_device_init(d, 0)
        ok = core.ep_device_rc_restore(d, (ctypes.c_uint8 * 5)(*saved))
        for b in sp.cmd(0, 1500, 1800):
            core.ep_device_feed(d, b, 5)
        return ok, core.ep_device_throttle_us(d)

    assert boot(bytes(block)) == (1, 1500)  # kill switch on, no receiver: held
    assert boot(b"\xff" * 5) == (0, 1800)  # blank EEPROM: kill switch off
    corrupt = bytearray(block)
    corrupt[3] ^= 0x10
    assert boot(bytes(corrupt)) == (0, 1800)


def test_c_header_python_and_docs_agree_on_the_protocol():
    """Frame types, version, ACK statuses and RC flags: ep_proto.h/ep_device.h, serial_proto
    and docs/hardware.md's protocol table name the same values."""
    src = FIRMWARE_DIR / "edgepilot_fw"
    c = {
        m[1]: int(m[2], 0)
        for h in ("ep_proto.h", "ep_device.h")
        for m in re.finditer(r"#define EP_(\w+) (0x[0-9A-Fa-f]+|\d+)", (src / h).read_text())
    }
    py = {k: v for k, v in vars(sp).items() if k.isupper() and isinstance(v, int)}
    shared = ["PROTO_VERSION", "RC_KILL", "RC_KILL_LOW", "RC_REPORT", "RC_LOST_MS", "RC_REPORT_MS"]
    shared += [k for k in py if k.startswith(("T_", "ACK_", "F_", "RCF_"))]
    assert {k: c.get(k) for k in shared} == {k: py[k] for k in shared}
    doc = (REPO_ROOT / "docs" / "hardware.md").read_text()
    documented = {int(m[1], 16) for m in re.finditer(r"^\| `(0x[0-9a-f]{2})` ", doc, re.M)}
    assert documented == {v for k, v in py.items() if k.startswith("T_")}
