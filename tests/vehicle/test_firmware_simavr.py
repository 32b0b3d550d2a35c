"""The real firmware image in simavr: FramedActuator on one end of a pty, the built
ATmega328P binary on the other, and the servo/ESC pulses measured on the simulated pins.

This is the end-to-end check of the failsafe: commands at the loop's rate hold the
pulses; when they stop (heartbeats still flowing) both outputs fall back to neutral
250 ms after the last command, measured in simulated time from the PWM pin edges.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from edgepilot.config import ActuatorConfig
from tests.helpers import wait_for
from tests.machine import Interval
from vehicle.actuators import FramedActuator, pulses
from vehicle.firmware import build, missing_tools

CFG = ActuatorConfig(kind="framed", heartbeat_ms=40, reconnect_max_s=0.2)


class Simulator:
    """ep_simavr running the firmware; collects its ``pwm`` events (and with ``--rc``, its
    ``rc`` events: the receiver pulse trains it drives, set with ``rc()``) in a thread."""

    def __init__(self, exe, elf, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(exe), str(elf), *args],
            stdin=subprocess.PIPE if "--rc" in args else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.pwm: list[tuple[str, int, int, float]] = []  # channel, sim ms, width us, wall time
        self.rc_events: list[tuple[int, int, int]] = []  # receiver channel, sim ms, width us
        self.pty: str | None = None
        ready = threading.Event()

        def reader() -> None:
            for line in self.proc.stdout:
                parts = line.split()
                if parts[:1] == ["pty"]:
                    self.pty = parts[1]
                    ready.set()
                elif parts[:1] == ["pwm"]:
                    self.pwm.append((parts[1], int(parts[2]), int(parts[3]), time.monotonic()))
                elif parts[:1] == ["rc"]:
                    self.rc_events.append((int(parts[1]), int(parts[2]), int(parts[3])))
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(10) or self.pty is None:
            self.stop()
            raise RuntimeError("ep_simavr did not start")

    def rc(self, ch: int, width_us: int) -> None:
        """Receiver channel ch sends width_us pulses from its next frame on (0: none)."""
        self.proc.stdin.write(f"rc {ch} {width_us}\n")
        self.proc.stdin.flush()

    def width(self, ch: str) -> int | None:
        w = [e[2] for e in self.pwm if e[0] == ch]
        return w[-1] if w else None

    def wait_width(self, ch: str, us: int, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.width(ch) is not None and abs(self.width(ch) - us) <= 1:
                return True
            time.sleep(0.005)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def sim_build(tmp_path_factory):
    why = missing_tools("sim")
    if why:
        pytest.skip(why)
    return build("sim", tmp_path_factory.mktemp("fw-sim"))


@pytest.fixture(params=["avr", "arduino"])
def sim(request, sim_build, tmp_path_factory):
    """The plain avr-libc image, and the .ino sketch linked with the Arduino core."""
    elf = sim_build["edgepilot_fw.elf"]
    if request.param == "arduino":
        why = missing_tools("arduino")
        if why:
            pytest.skip(why)
        elf = build("arduino", tmp_path_factory.mktemp("fw-ino"))["edgepilot_fw.elf"]
    s = Simulator(sim_build["ep_simavr"], elf)
    yield s
    s.stop()


def test_firmware_boots_at_neutral_and_follows_commands(sim):
    assert sim.wait_width("steer", 1500, 5) and sim.wait_width("throttle", 1500, 5)
    act = FramedActuator(CFG, port=sim.pty)
    try:
        target = pulses(-0.6, 0.5, CFG)
        for _ in range(10):
            act.run(-0.6, 0.5)
            time.sleep(0.05)
        assert sim.wait_width("steer", target[0], 2), sim.pwm[-4:]
        assert sim.wait_width("throttle", target[1], 2), sim.pwm[-4:]
        # the firmware's own reports come back through the framed back channel
        deadline = time.monotonic() + 2
        while act.telemetry.get("outputs_us") != target and time.monotonic() < deadline:
            time.sleep(0.01)
        assert act.telemetry["outputs_us"] == target
        assert act.stats["acks"] >= 5 and act.stats["telemetry"] >= 1
        assert act.telemetry["rx_bad"] == 0 and act.stats["rx_bad_crc"] == 0
        assert act.stats["disconnects"] == 0 and act.stats["last_error"] is None
        # the firmware took the CONFIG (a second one only if its boot report, sent before
        # the port was open, got through); no re-send at every telemetry
        assert act.stats["configs"] <= 2
        # close() sends neutral: the pulses return at once, not after the 250 ms failsafe.
        # In simulated ms from the last command taking effect, less what the machine kept the
        # host's and the simulator's threads waiting for a CPU from that command to close()'s
        # return (a host paused that long before its neutral rightly gets the failsafe)
        last = pulses(-0.6, 0.4, CFG)  # a new width, so that its taking effect shows on the pins
        with Interval([os.getpid(), sim.proc.pid]) as closing:
            act.run(-0.6, 0.4)
            assert sim.wait_width("throttle", last[1], 2)
            act.close()
        assert sim.wait_width("throttle", 1500, 2)
    finally:
        act.close()
    thr = [(t_ms, w) for ch, t_ms, w, _ in sim.pwm if ch == "throttle"]
    (t_cmd, w_cmd), (t_neutral, w_neutral) = thr[-2:]
    assert (w_cmd, w_neutral) == (last[1], 1500)
    assert t_neutral - t_cmd - closing.waited_s * 1e3 < 230, (t_neutral - t_cmd, closing)


def failsafe_violations(thr: list[tuple[int, int]], neutral: int = 1500) -> list[str]:
    """The failsafe rule checked on every pulse-width change, in simulated ms: a change to
    neutral comes no earlier than 250 ms after the previous command took effect (minus one
    20 ms servo frame), and a command holds no longer than 250 ms plus one frame (plus
    slack) without the next command or neutral. Simulated time, not the host's: on a
    loaded machine the host may pause for longer than 250 ms between two commands, and
    then the firmware *must* go to neutral -- that is the property, not a failure."""
    out = []
    for (t_a, w_a), (t_b, w_b) in zip(thr, thr[1:], strict=False):
        if w_a == neutral:
            continue
        held = t_b - t_a
        if w_b == neutral and held < 230:
            out.append(f"neutral {held} ms after a command at {t_a} ms (failsafe early)")
        if held > 290:
            out.append(f"{w_a} us held {held} ms from {t_a} ms (failsafe late)")
    return out


def test_failsafe_250ms_after_the_last_command_measured_on_the_pins(sim):
    assert sim.wait_width("throttle", 1500, 5)
    cfg = replace(CFG, throttle_forward_us=2000)
    act = FramedActuator(cfg, port=sim.pty)
    try:
        # 20 Hz commands, each throttle a little different, so every command shows as a
        # pulse-width change at the simulated time it took effect
        sent = []
        for i in range(12):
            act.run(0.0, 0.2 + 0.02 * i)
            sent.append(pulses(0.0, 0.2 + 0.02 * i, cfg)[1])
            time.sleep(0.05)
        assert sim.wait_width("throttle", sent[-1], 2)
        hb_before = act.stats["heartbeats"]
        assert sim.wait_width("throttle", 1500, 2), "no failsafe"
        # heartbeats flow, and did not hold the car
        assert wait_for(lambda: act.stats["heartbeats"] > hb_before, 2)
        thr = [(t_ms, w) for ch, t_ms, w, _ in sim.pwm if ch == "throttle"]
        first = next(i for i, (_, w) in enumerate(thr) if w != 1500)
        last = max(i for i, (_, w) in enumerate(thr) if w != 1500)
        run = thr[first : last + 2]
        assert run[-1][1] == 1500 and run[-2][1] == sent[-1]
        # every command took effect, in order (two that land in one servo frame show once)
        widths = [w for _, w in run if w != 1500]
        assert widths == sorted(widths) and set(widths) <= set(sent) and widths[-1] == sent[-1]
        assert not failsafe_violations(run), failsafe_violations(run)
        # and the final stop: 250 ms of no command, seen at the next 20 ms servo frame
        gap = run[-1][0] - run[-2][0]
        assert 230 <= gap <= 290, (gap, thr[-5:])
        deadline = time.monotonic() + 2
        while not act.telemetry.get("failsafe") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert act.telemetry["failsafe"] and act.telemetry["failsafe_count"] >= 1
    finally:
        act.close()


def test_failsafe_rule_checker_catches_early_and_late_neutral():
    """The checker above must be able to fail: an early neutral and a held command."""
    assert not failsafe_violations([(0, 1600), (50, 1620), (300, 1500)])
    assert failsafe_violations([(0, 1600), (120, 1500)])  # neutral after 120 ms: early
    assert failsafe_violations([(0, 1600), (400, 1620)])  # held 400 ms: late
    assert failsafe_violations([(0, 1600), (600, 1500)])  # neutral only after 600 ms


def test_controller_vanishes_and_comes_back(sim_build, tmp_path):
    """The simulated controller dies (USB unplugged) and a fresh one appears at the same
    path: the driver notices, keeps the loop prompt, reconnects, configures the new
    firmware and drives it."""
    link = tmp_path / "ttyEP"
    first = Simulator(sim_build["ep_simavr"], sim_build["edgepilot_fw.elf"])
    link.symlink_to(first.pty)
    cfg = replace(CFG, throttle_neutral_us=1520, throttle_reverse_us=1100)
    act = FramedActuator(cfg, port=str(link))
    second = None
    try:
        for _ in range(6):
            act.run(0.0, 0.5)
            time.sleep(0.05)
        assert first.wait_width("throttle", pulses(0.0, 0.5, cfg)[1], 2)
        first.stop()
        link.unlink()
        worst = 0.0  # the longest run() call, less the machine's CPU waiting in it
        for _ in range(10):
            with Interval() as call:
                act.run(0.0, 0.5)
            worst = max(worst, call.own_s)
            time.sleep(0.05)
        assert not act.connected and act.stats["disconnects"] == 1
        assert worst < 0.05, worst
        second = Simulator(sim_build["ep_simavr"], sim_build["edgepilot_fw.elf"])
        assert second.wait_width("throttle", 1500, 5)  # a fresh firmware at its default neutral
        link.symlink_to(second.pty)
        deadline = time.monotonic() + 5
        while not act.connected and time.monotonic() < deadline:
            act.run(0.0, 0.0)
            time.sleep(0.05)
        assert act.connected
        # configured by the driver: its failsafe neutral is now the profile's 1520 us
        assert second.wait_width("throttle", 1520, 2), second.pwm[-3:]
        for _ in range(6):
            act.run(0.0, -0.5)
            time.sleep(0.05)
        assert second.wait_width("throttle", pulses(0.0, -0.5, cfg)[1], 2)
        assert second.wait_width("throttle", 1520, 1)  # and the failsafe uses it
    finally:
        act.close()
        first.stop()
        if second is not None:
            second.stop()
