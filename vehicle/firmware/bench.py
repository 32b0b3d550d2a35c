"""Measure the motor-controller link against the real firmware image running in simavr.

    .venv/bin/python -m vehicle.firmware.bench [--seconds 3] [--json]

Reports, in one run: what ``FramedActuator.run()`` costs the control loop (it only
hands the command to the worker), the command->ACK round trip through the pty and the
simulated ATmega328P's UART, and the failsafe delay measured on the simulated PWM pins
(last command to neutral, in simulated time), plus the image's flash and RAM use.
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
    def __init__(self, exe: Path, elf: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe), str(elf)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.pty = ""
        self.pwm: list[tuple[str, int, int]] = []
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
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(10) or not self.pty:
            self.stop()
            raise RuntimeError("ep_simavr did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


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
        return {
            "commands": n,
            "rate_hz": rate_hz,
            "run_call_us": {"p50": statistics.median(run_us), "p99": _pct(run_us, 0.99)},
            "ack_rtt_ms": {"p50": statistics.median(rtts), "p99": _pct(rtts, 0.99)} if rtts else None,
            "failsafe_ms_sim": gaps,
            "acks": stats["acks"],
            "heartbeats": stats["heartbeats"],
            "disconnects": stats["disconnects"],
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
