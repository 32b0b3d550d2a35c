"""The serial port vanishing and returning while the car drives, measured on the car's end
of a real pseudo-terminal: the longest gap between frames the motor controller received
while a port existed, what the host assumed meanwhile, and how long it took to be back.

While the port is gone nothing can reach the car: the firmware's own failsafe returns
the outputs to neutral 250 ms after the last valid command (measured against the real
firmware in simavr: tests/test_firmware_simavr.py). The host side assumes neutral, keeps
the loop running at full rate, reconnects with back-off and sends CONFIG then neutral
before the next command (tests/test_serial_actuators.py checks the order; this test
measures the timing).
"""

from __future__ import annotations

import json
import os
import select
import time
import tty
from dataclasses import replace

import pytest

from edgepilot.config import REPO_ROOT, ActuatorConfig
from vehicle import serial_proto as sp
from vehicle.actuators import FramedActuator

CFG = ActuatorConfig(kind="framed", heartbeat_ms=40, reconnect_max_s=0.2)
SAFE_GAP_S = 0.250


def save_figures(name: str, figs: dict) -> None:
    """Measured figures for docs/reliability.md: var/reliability/<name>.json and stdout."""
    out = REPO_ROOT / "var" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figs, indent=1, sort_keys=True))
    print("FIGURES", name, json.dumps(figs, sort_keys=True))


@pytest.mark.xfail(
    reason="open finding (docs/reliability.md): after a replug, with the car end reading "
    "continuously, the framed actuator's link flaps (EIO, tens of reconnects in 1.5 s) and a "
    "gap between commands can exceed 250 ms; tests/test_serial_actuators.py (no reader "
    "during the outage) sees one reconnect",
    strict=False,
)
def test_serial_port_vanishes_and_returns_gaps_and_reconnect(tmp_path):
    link = tmp_path / "ttyCAR"
    master, slave = os.openpty()
    tty.setraw(slave)
    os.symlink(os.ttyname(slave), link)
    act = FramedActuator(replace(CFG), port=str(link))
    rx: list[tuple[float, sp.Frame]] = []
    parser = sp.Parser()
    run_times: list[float] = []
    period = 0.05
    t0 = time.monotonic()
    t_unplug = t0 + 1.5
    t_plug = t_unplug + 1.0
    t_end = t_plug + 1.5
    plugged = True
    try:
        next_tick = t0
        while (now := time.monotonic()) < t_end:
            if plugged and now >= t_unplug:
                link.unlink()
                os.close(master)
                os.close(slave)
                plugged = False
                parser = sp.Parser()
            elif not plugged and now >= t_plug:
                master, slave = os.openpty()
                tty.setraw(slave)
                os.symlink(os.ttyname(slave), link)
                plugged = True
            if now >= next_tick:
                t = time.perf_counter()
                act.run(0.3, 0.2)
                run_times.append(time.perf_counter() - t)
                next_tick += period
            if plugged:
                wait = max(0.0, min(next_tick, t_end) - time.monotonic())
                if select.select([master], [], [], wait)[0]:
                    got = time.monotonic()
                    rx += [(got, f) for f in parser.feed(os.read(master, 4096))]
            else:
                time.sleep(max(0.0, min(next_tick, t_plug) - time.monotonic()))
    finally:
        act.close()
        if plugged:
            link.unlink(missing_ok=True)
            os.close(master)
            os.close(slave)
    before = [t for t, _ in rx if t < t_unplug]
    after = [(t, f) for t, f in rx if t >= t_plug]
    gaps_before = [b - a for a, b in zip(before, before[1:], strict=False)]
    after_t = [t for t, _ in after]
    gaps_after = [b - a for a, b in zip(after_t, after_t[1:], strict=False)]
    cmds_after = [sp.decode_cmd(f) for _, f in after if f.type == sp.T_CMD]
    figs = {
        "max_gap_plugged_ms": round(max(gaps_before + gaps_after) * 1e3, 1),
        "unplugged_s": round(t_plug - t_unplug, 2),
        "reconnect_s": round(after_t[0] - t_plug, 3) if after_t else None,
        "first_after_reconnect": after[0][1].type == sp.T_CONFIG if after else None,
        "first_command_after_reconnect_neutral": cmds_after[:1] == [(1500, 1500)],
        "max_run_call_ms": round(max(run_times) * 1e3, 2),
        "disconnects": act.stats["disconnects"],
        "max_gap_before_ms": round(max(gaps_before, default=0) * 1e3, 1),
        "max_gap_after_ms": round(max(gaps_after, default=0) * 1e3, 1),
        "where": [round(t - t0, 3) for t in after_t[:5]] + [round(t_plug - t0, 3)],
    }
    save_figures("serial_vanish", figs)
    assert before and after, "no frames before or after the outage"
    assert figs["max_gap_plugged_ms"] < SAFE_GAP_S * 1e3
    assert figs["reconnect_s"] is not None and figs["reconnect_s"] < 1.0
    assert figs["first_after_reconnect"] and figs["first_command_after_reconnect_neutral"]
    assert figs["max_run_call_ms"] < 50  # the loop never waited on a dead port
    assert act.stats["disconnects"] == 1
