"""Measure the motor-controller link against the real firmware image running in simavr.

    .venv/bin/python -m vehicle.firmware.bench [--seconds 3] [--json]

Reports, in one run: what ``FramedActuator.run()`` costs the control loop (it only
hands the command to the worker), the command->ACK round trip through the pty and the
simulated ATmega328P's UART, and the failsafe delay measured on the simulated PWM pins
(last command to neutral, in simulated time), plus the image's flash and RAM use.
The RC receiver (``rc``): how far the widths the firmware reports are from the pulse
trains simavr drives on its receiver pins (1000..2000 us), and, in simulated ms, the
kill switch's delay from the frame its kill pulse starts in to neutral on the throttle
pin, and from a silent kill channel's first missing pulse to neutral.
Needs the toolchain ``make -C vehicle/firmware sim`` needs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgepilot.config import ActuatorConfig
from vehicle.actuators import FramedActuator
from vehicle.firmware import build, missing_tools


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class _Sim:
    def __init__(self, exe: Path, elf: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(exe), str(elf), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.pty = ""
        self.pwm: list[tuple[str, int, int]] = []
        self.rc_events: list[tuple[int, int, int]] = []
        ready = threading.Event()

        def reader() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                p = line.split()
                if p[:1] == ["pty"]:
                    self.pty = p[1]
                    ready.set()
                elif p[:1] == ["pwm"]:
                    self.pwm.append((p[1], int(p[2]), int(p[3])))
                elif p[:1] == ["rc"]:
                    self.rc_events.append((int(p[1]), int(p[2]), int(p[3])))
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(10) or not self.pty:
            self.stop()
            raise RuntimeError("ep_simavr did not start")

    def rc(self, ch: int, width_us: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"rc {ch} {width_us}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def _until(cond: Any, seconds: float = 3.0, every: Any = None) -> bool:
    """Poll ``cond`` every 5 ms (calling ``every`` before each poll) until true or timeout."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if every is not None:
            every()
        if cond():
            return True
        time.sleep(0.005)
    return False


def _width_errors(sim: _Sim, act: FramedActuator) -> list[int]:
    """Reported minus driven width, all three channels, 1000..2000 us in 50 us steps."""
    errs: list[int] = []
    for w in range(1000, 2001, 50):
        for ch in range(3):
            sim.rc(ch, w)

        def near(w: int = w) -> bool:
            r = act.rc_reading()
            return r is not None and all(
                v is not None and abs(v - w) < 25 for v in (r.steering_us, r.throttle_us, r.aux_us)
            )

        if not _until(near):
            raise RuntimeError(f"the firmware never reported {w} us: {act.rc_reading()}")
        r = act.rc_reading()
        errs += [v - w for v in (r.steering_us, r.throttle_us, r.aux_us) if v is not None]
    return errs


def _neutral_after(sim: _Sim, act: FramedActuator, width: int) -> int:
    """Full throttle on the pin, then kill channel ``width`` (1900: kill position, 0: no
    signal) while the host keeps commanding full throttle: simulated ms from the frame the
    change starts in to neutral on the throttle pin."""

    def full() -> None:
        act.run(0.0, 1.0)

    def throttle(after: int = 0) -> list[tuple[int, int]]:
        return [(t, w) for c, t, w in sim.pwm if c == "throttle" and t >= after]

    sim.rc(2, 1000)  # run position; a neutral command re-arms, then full throttle
    if not _until(
        lambda: (r := act.rc_reading()) is not None and not r.killed, 10, lambda: act.run(0.0, 0.0)
    ):
        raise RuntimeError(f"the kill switch never re-armed: {act.rc_reading()}")
    if not _until(lambda: throttle()[-1][1] == 2000, 10, full):
        raise RuntimeError("the throttle never reached 2000 us")
    n = len(sim.rc_events)
    sim.rc(2, width)

    def started() -> int | None:
        return next((t for c, t, w in sim.rc_events[n:] if c == 2 and w == width), None)

    _until(lambda: started() is not None, 10, full)
    t0 = started()
    assert t0 is not None
    if not _until(lambda: any(w == 1500 for _, w in throttle(t0)), 10, full):
        raise RuntimeError("the kill switch did not stop the throttle")
    return next(t for t, w in throttle(t0) if w == 1500) - t0


def measure_rc(files: dict[str, Path]) -> dict[str, Any]:
    sim = _Sim(files["ep_simavr"], files["edgepilot_fw.elf"], "--rc")
    try:
        act = FramedActuator(ActuatorConfig(kind="framed"), port=sim.pty)
        try:
            errs = _width_errors(sim, act)
        finally:
            act.close()
        act = FramedActuator(ActuatorConfig(kind="framed", kill_switch="high"), port=sim.pty)
        try:
            kill = [_neutral_after(sim, act, 1900) for _ in range(3)]
            lost = [_neutral_after(sim, act, 0) for _ in range(3)]
        finally:
            act.close()
    finally:
        sim.stop()
    return {
        "width_error_us": {"min": min(errs), "max": max(errs), "n": len(errs)},
        "kill_ms_sim": kill,
        "lost_ms_sim": lost,
    }


def _size(elf: Path) -> dict[str, int]:
    out = subprocess.run(["avr-size", str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(x) for x in out.splitlines()[1].split()[:3])
    return {"flash_bytes": text + data, "ram_bytes": data + bss}


def measure(seconds: float = 3.0, rate_hz: float = 50.0) -> dict[str, Any]:
    why = missing_tools("sim")
    if why:
        raise SystemExit(f"cannot run the firmware bench: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        files = build("sim", Path(tmp))
        sim = _Sim(files["ep_simavr"], files["edgepilot_fw.elf"])
        cfg = ActuatorConfig(kind="framed", heartbeat_ms=50)
        act = FramedActuator(cfg, port=sim.pty)
        try:
            time.sleep(0.3)
            run_us, rtts = [], []
            n = int(seconds * rate_hz)
            for i in range(n):
                t = time.perf_counter()
                act.run(0.5 * ((i % 20) / 10 - 1), 0.2)
                run_us.append((time.perf_counter() - t) * 1e6)
                time.sleep(1 / rate_hz)
                rtt = act.telemetry.get("ack_rtt_ms")
                if rtt is not None:
                    rtts.append(rtt)
            # failsafe: distinct throttle per command, then silence (heartbeats continue)
            gaps = []
            for _ in range(3):
                for i in range(6):
                    act.run(0.0, 0.3 + 0.02 * i)
                    time.sleep(0.05)
                time.sleep(0.6)
                thr = [(t_ms, w) for ch, t_ms, w in sim.pwm if ch == "throttle"]
                last = max(i for i, (_, w) in enumerate(thr) if w != 1500)
                gaps.append(thr[last + 1][0] - thr[last][0])
            stats = dict(act.stats)
        finally:
            act.close()
            sim.stop()
        rc = measure_rc(files)
        return {
            "commands": n,
            "rate_hz": rate_hz,
            "run_call_us": {"p50": statistics.median(run_us), "p99": _pct(run_us, 0.99)},
            "ack_rtt_ms": {"p50": statistics.median(rtts), "p99": _pct(rtts, 0.99)} if rtts else None,
            "failsafe_ms_sim": gaps,
            "acks": stats["acks"],
            "heartbeats": stats["heartbeats"],
            "disconnects": stats["disconnects"],
            "rc": rc,
            **_size(files["edgepilot_fw.elf"]),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=50.0, help="commands per second")
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    a = ap.parse_args()
    res = measure(a.seconds, a.rate)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:18} {v}")


if __name__ == "__main__":
    main()
