"""The serial port vanishing and returning while the car drives, measured on the car's end
of a real pseudo-terminal: the longest gap between commands the motor controller received
while a port existed, what the host assumed meanwhile, and how long it took to be back.

While the port is gone nothing can reach the car: the firmware's own failsafe returns
the outputs to neutral 250 ms after the last valid command (measured against the real
firmware in simavr: tests/test_firmware_simavr.py). The host side assumes neutral, keeps
the loop running at full rate, reconnects with back-off and sends CONFIG then neutral
before the next command (tests/test_serial_actuators.py checks the order; this test
measures the timing).

``PtyCar`` is also the car end for the other faults (tests/test_fault_drive.py): the
onboard loop drives a real serial actuator and the gap is measured where the car is.

History: this test was an xfail ("the link flaps with EIO, 60-80 reconnects, gaps up to
436 ms"). The flapping was the test's own: its unplug condition (``now >= t_unplug``)
stayed true after the replug, so it tore the new pty down again on every pass; each
new pty was opened, written, then closed under the driver (EIO on write, "readiness to
read but no data" on read: a pty slave whose master is gone). With one outage the driver
reconnects once (``disconnects == 1``).
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
import tty
from dataclasses import replace
from pathlib import Path

import pytest

from edgepilot.config import REPO_ROOT, ActuatorConfig
from tests.machine import Interval, Stamps, snapshot, waited_s, worst
from vehicle import serial_proto as sp
from vehicle.actuators import FramedActuator, RoboHatActuator, pulses

CFG = ActuatorConfig(kind="framed", heartbeat_ms=40, reconnect_max_s=0.2)
SAFE_GAP_S = 0.250


def save_figures(name: str, figs: dict) -> None:
    """Measured figures for docs/reliability.md: var/reliability/<name>.json and stdout."""
    out = REPO_ROOT / "var" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figs, indent=1, sort_keys=True))
    print("FIGURES", name, json.dumps(figs, sort_keys=True))


class PtyCar:
    """The motor controller's end of a serial cable: a pty whose slave has a stable path
    (a symlink, like /dev/serial/by-id/...) for the driver, read by a thread that decodes
    and timestamps every command as it arrives.

    ``protocol`` is "framed" (only CMD frames count as commands: the firmware's failsafe
    ignores heartbeats) or "robohat" (one text line per command). ``unplug()``/``plug()``
    tear the pty down and build a fresh one at the same path, as a USB replug does.

    Each command also stamps what the machine made the watched processes' threads wait
    for a CPU (tests/machine.py; ``watch(pid)`` adds the process that drives the port), so
    that a gap is checked as ``own_gap``: the wall-clock gap less that waiting."""

    def __init__(self, path: Path, protocol: str = "framed") -> None:
        self.path = path
        self.protocol = protocol
        self.commands: list[tuple[float, tuple[int, int]]] = []  # (monotonic, pulses us)
        self.frames: list[tuple[float, int]] = []  # framed: (monotonic, frame type) of every frame
        self.plugs: list[tuple[float, bool]] = []
        self.stamps = Stamps()  # one per command, in step with ``commands``
        self._lock = threading.Lock()
        self._gen = 0
        self._master = self._slave = -1
        self._parser = sp.Parser()
        self._rx = b""
        self._stop = False
        self.plug()
        self._thread = threading.Thread(target=self._read, name="pty-car", daemon=True)
        self._thread.start()

    def plug(self) -> None:
        with self._lock:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # no echo or line editing before the driver configures it
            os.symlink(os.ttyname(self._slave), self.path)
            self._parser, self._rx = sp.Parser(), b""
            self._gen += 1
            self.plugs.append((time.monotonic(), True))

    def unplug(self) -> None:
        with self._lock:
            self.path.unlink()
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1
            self._gen += 1
            self.plugs.append((time.monotonic(), False))

    @property
    def plugged(self) -> bool:
        return self._master >= 0

    def _read(self) -> None:
        while not self._stop:
            fd, gen = self._master, self._gen
            if fd < 0:
                time.sleep(0.005)
                continue
            try:
                ready = select.select([fd], [], [], 0.02)[0]
            except (OSError, ValueError):
                continue  # closed under us by unplug(): the next pass sees it
            if not ready:
                continue
            with self._lock:
                if gen != self._gen:
                    continue  # that fd belongs to a pty torn down meanwhile
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                self._feed(time.monotonic(), data)

    def _feed(self, now: float, data: bytes) -> None:
        if self.protocol == "framed":
            for f in self._parser.feed(data):
                self.frames.append((now, f.type))
                if f.type == sp.T_CMD:
                    self.commands.append((now, sp.decode_cmd(f)))
                    self.stamps.mark(now)
            return
        *lines, self._rx = (self._rx + data).split(b"\r")
        for line in filter(None, lines):  # the driver opens with a lone CR (no command)
            s, t = line.split(b", ")
            self.commands.append((now, (int(s), int(t))))
            self.stamps.mark(now)

    def max_gap(self, t0: float = 0.0, t1: float = float("inf")) -> float:
        """Longest time between two commands received in [t0, t1] (seconds)."""
        ts = [t for t, _ in self.commands if t0 <= t <= t1]
        return max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=0.0)

    def watch(self, pid: int) -> None:
        """Count the waiting of ``pid``'s threads too (a process that drives the port)."""
        self.stamps.pids.append(pid)

    def own_gap(self, *spans: tuple[float, float]) -> dict[str, float]:
        """The longest gap between commands received within any of ``spans`` (default: all),
        once the machine's waiting in it is taken off (``tests.machine.worst``)."""
        gaps = [g for t0, t1 in spans or [(0.0, float("inf"))] for g in self.stamps.gaps(t0, t1)]
        return worst(gaps)

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        if self.plugged:
            self.unplug()


@pytest.mark.parametrize("kind", ["framed", "robohat"])
def test_serial_port_vanishes_and_returns_gaps_and_reconnect(tmp_path, kind):
    car = PtyCar(tmp_path / "ttyCAR", kind)
    cfg = replace(CFG, kind=kind)
    act = (FramedActuator if kind == "framed" else RoboHatActuator)(cfg, port=str(car.path))
    run_calls: list[Interval] = []
    period = 0.05  # the loop's 20 Hz
    t0 = time.monotonic()
    t_unplug, t_plug = t0 + 0.6, t0 + 1.2
    t_end = t_plug + 0.8
    plugged_snap = None  # what the machine had made the threads wait when the port came back
    try:
        next_tick = t0
        while (now := time.monotonic()) < t_end:
            if car.plugged and t_unplug <= now < t_plug:
                car.unplug()
            elif not car.plugged and now >= t_plug:
                car.plug()
                plugged_snap = snapshot()
            with Interval() as call:
                act.run(0.3, 0.2)
            run_calls.append(call)
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
        stats = dict(act.stats)
    finally:
        act.close()
        car.close()
    assert [up for _, up in car.plugs[:3]] == [True, False, True]  # one outage (close() unplugs last)
    t_unplugged, t_replugged = car.plugs[1][0], car.plugs[2][0]
    before = [t for t, _ in car.commands if t < t_unplugged]
    after = [(t, us) for t, us in car.commands if t >= t_replugged]
    gap = car.own_gap((0.0, t_unplugged), (t_replugged, t_end))
    slowest_call = max(run_calls, key=lambda c: c.own_s)
    reconnect_waited_s = 0.0
    if after:  # the machine's waiting between the replug and the first command through it
        reconnect_waited_s = waited_s(plugged_snap, car.stamps.snaps[len(car.commands) - len(after)])
    figs = {
        "kind": kind,
        "max_gap_plugged_ms": round(
            max(car.max_gap(t1=t_unplugged), car.max_gap(t0=t_replugged, t1=t_end)) * 1e3, 1
        ),
        # the gap that is longest once the machine's CPU waiting in it is taken off
        "max_gap_plugged_own_ms": gap["own_ms"],
        "max_gap_plugged_waited_ms": gap["waited_ms"],
        "unplugged_s": round(t_replugged - t_unplugged, 2),
        "reconnect_s": round(after[0][0] - t_replugged, 3) if after else None,
        "reconnect_waited_s": round(reconnect_waited_s, 3),
        "first_command_after_reconnect_neutral": after[:1] and after[0][1] == (1500, 1500),
        "max_run_call_ms": round(max(c.wall_s for c in run_calls) * 1e3, 2),
        "max_run_call_own_ms": round(slowest_call.own_s * 1e3, 2),
        "disconnects": stats["disconnects"],
        "connects": stats["connects"],
        "commands_received": len(car.commands),
    }
    if kind == "framed":
        first = next(ty for t, ty in car.frames if t >= t_replugged)
        figs["config_first_after_reconnect"] = first == sp.T_CONFIG
    save_figures(f"serial_vanish_{kind}", figs)
    assert len(before) >= 8 and len(after) >= 8, "too few commands before or after the outage"
    # the firmware's failsafe, on the clock that stops while the machine keeps the threads off
    # a CPU (the wall-clock figure is reported: on a busy machine it is longer)
    assert figs["max_gap_plugged_own_ms"] < SAFE_GAP_S * 1e3, figs
    # back within the capped back-off (0.2 s) and a loop period or two, not at the cap's double
    assert figs["reconnect_s"] is not None and figs["reconnect_s"] - reconnect_waited_s < 0.5, figs
    assert figs["first_command_after_reconnect_neutral"]
    assert kind != "framed" or figs["config_first_after_reconnect"]
    assert pulses(0.3, 0.2, cfg) in [us for _, us in after]  # driving again
    assert after[-1][1] == (1500, 1500)  # and close() left the car at neutral
    assert figs["max_run_call_own_ms"] < 50, figs  # the loop never waited on a dead port
    assert stats["disconnects"] == 1 and stats["connects"] == 2  # no flapping
