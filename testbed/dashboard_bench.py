"""``edgepilot bench dashboard``: the fleet dashboard under a fleet's telemetry, in a browser.

One run, side by side, on this machine:

- a Mosquitto and an idle cloud trainer (``edgepilot cloud``) of its own, and a load
  generator: ``--cars`` simulated cars, each with its own MQTT connection, publishing
  ``fleet.CarTelemetry`` at ``--rate`` Hz (a car flips its mode every ~2 s: a state change
  the page must show);
- rounds of two phases of ``--duration`` s each, alternating: **closed** (no dashboard) and
  **open** (``edgepilot dashboard`` running and its page open in headless Chromium);
- per phase the CPU time of the broker and of the cloud trainer (from /proc), so that the
  rise with the page open is a ratio of two phases of the same run; in the open phases also
  the dashboard's and Chromium's CPU;
- in the open phases, from the page itself (``window.dashProbe``): for every mode change,
  the time from the car's publish (``at``, set just before publishing) to the moment the page
  put it in the DOM (the next animation frame paints it); the age of every telemetry drawn;
  and responsiveness: the page's event-loop lag (a 50 ms timer's lateness), long tasks
  (main-thread work over 50 ms), and input latency (a click on a checkbox to the next frame).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.broker import start_broker
from edgepilot.browser import chromium, until
from edgepilot.config import BrokerConfig
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.stats import pct
from edgepilot.supervise import Supervisor
from testbed.procs import descendants

TICK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 3.0  # after a phase starts: processes started, the page loaded, before measuring

PROFILE = """\
[cloud]
store = "{store}"
retrain_min_frames = 1000000000
[dashboard]
token_file = "{token}"
port = 0
"""

# Injected into the page at the start of an open phase: what a user would call "responsive".
RESPONSIVENESS = """
const r = window.benchResp = {lag: [], longtasks: [], input: []};
let last = performance.now();
setInterval(() => { const now = performance.now(); r.lag.push(now - last - 50); last = now; }, 50);
try {
  new PerformanceObserver((l) => { for (const e of l.getEntries()) r.longtasks.push(e.duration); })
    .observe({entryTypes: ['longtask']});
} catch (e) {}
const box = document.getElementById('hide-offline-edges');
box.addEventListener('change', () => {
  const t0 = performance.now();
  requestAnimationFrame(() => r.input.push(performance.now() - t0));
});
window.dashProbe.changes.length = 0;
window.dashProbe.ages.length = 0;
window.dashProbe.render_ms.length = 0;
"""


class TelemetryLoad:
    """``cars`` cars publishing ``CarTelemetry`` at ``rate`` Hz, each on its own connection."""

    def __init__(self, url: str, cars: int, rate: float, seed: int = 0) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.cars = [f"bench-car-{i:02d}" for i in range(cars)]
        self.conns = [Connection(BrokerConfig(url=url), f"bench-dash-{c}") for c in self.cars]
        self.flip_at = {c: time.time() + self.rng.uniform(0, 2) for c in self.cars}
        self.mode = dict.fromkeys(self.cars, "local")
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry-load", daemon=True)

    def start(self) -> None:
        for c in self.conns:
            c.start(wait_s=10)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn, car in zip(self.conns, self.cars, strict=True):
            conn.publish(fleet.car_telemetry_topic(car), b"", qos=1, retain=True)  # leave no cars behind
            conn.close()

    def _telemetry(self, car: str, now: float) -> fleet.CarTelemetry:
        if now >= self.flip_at[car]:
            self.mode[car] = "local_angle" if self.mode[car] == "local" else "local"
            self.flip_at[car] = now + self.rng.uniform(1.5, 2.5)
        r = self.rng.random
        e0 = 0.6 + 0.2 * r()
        return fleet.CarTelemetry(
            car, "driving", model="early-exit-bench", mode=self.mode[car], loop_hz=19.5 + r(),
            frames=self.published, exit_rate={"0": e0, "1": (1 - e0) * 0.7, "2": (1 - e0) * 0.3},
            offload_rate=0.05 + 0.1 * r(), edge_used_rate=0.04 + 0.1 * r(),
            edge_rtt_ms={"p50": 4 + 2 * r(), "p99": 12 + 8 * r()}, at=time.time(),
        )  # fmt: skip

    def _run(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not self._stop.is_set():
            now = time.time()
            for conn, car in zip(self.conns, self.cars, strict=True):
                t = self._telemetry(car, now)
                t.at = time.time()
                conn.publish(fleet.car_telemetry_topic(car), fleet.encode_car_telemetry(t), qos=0, retain=True)
                self.published += 1
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))


def _load_main(url: str, cars: int, rate: float, stop: Any) -> None:
    """The load generator's own process: its publishing must not share a GIL with the
    baseline subscriber of this process."""
    load = TelemetryLoad(url, cars, rate)
    load.start()
    stop.wait()
    load.stop()


class LoadProcess:
    def __init__(self, url: str, cars: int, rate: float) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.stop_ev = ctx.Event()
        self.proc = ctx.Process(target=_load_main, args=(url, cars, rate, self.stop_ev), daemon=True)

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self.stop_ev.set()
        self.proc.join(30)


class BusBaseline:
    """A plain MQTT subscriber to the same telemetry: how late this machine delivers a car's
    message to any client (receive time minus ``at``), the floor under the page's figure."""

    def __init__(self, url: str) -> None:
        self.lags: list[float] = []
        self.on = False
        self.conn = Connection(BrokerConfig(url=url), "bench-dash-baseline")
        self.conn.subscribe(fleet.CAR_TELEMETRY_FILTER, self._msg, qos=0)
        self.conn.start()

    def _msg(self, msg: Any) -> None:
        if self.on and msg.payload and not msg.retain:
            t = fleet.decode_car_telemetry(msg.payload)
            self.lags.append(1000 * (time.time() - t.at))

    def take(self) -> list[float]:
        out, self.lags = self.lags, []
        return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU use of named process groups over a window, in % of one core."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t0 = time.monotonic()
        self.c0 = {k: sum(cpu_s(p) for p in pids) for k, pids in groups.items()}

    def done(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        return {k: round(100 * (sum(cpu_s(p) for p in pids) - self.c0[k]) / dt, 2) for k, pids in self.groups.items()}


@dataclass
class Rig:
    """The processes of a run: the broker, the cloud trainer and, in open phases, the
    dashboard: its own process, or (``in_cloud``) inside the cloud trainer, restarted with
    ``--dashboard`` for each open phase and without it for each closed one."""

    sup: Supervisor
    url: str
    prof: Path
    store: Path
    broker_pid: int
    in_cloud: bool

    def cloud(self, dashboard: bool = False) -> None:
        if "cloud" in self.sup.children:
            self.sup.stop("cloud")
        extra = ["--dashboard", "--dashboard-port", "0"] if dashboard else []
        self.sup.edgepilot("cloud", "cloud", "--profile", str(self.prof), "--broker", self.url, *extra)
        self.sup.wait_ready("cloud", 60, word="Ctrl-C")

    def fixed(self) -> dict[str, list[int]]:
        return {"broker": [self.broker_pid], "cloud": [self.sup.children["cloud"].proc.pid]}

    def open_dashboard(self) -> tuple[str, int]:
        """Start the dashboard; (its page's URL, the pid of the process serving it)."""
        if self.in_cloud:
            self.cloud(dashboard=True)
            name = "cloud"
        else:
            name = "dashboard"
            self.sup.edgepilot(name, "dashboard", "--profile", str(self.prof), "--broker", self.url, "--store", str(self.store))
            self.sup.wait_ready(name, 60)
        out = self.sup.children[name].out_path.read_text()
        return re.search(r"(http://\S+/) ready", out).group(1), self.sup.children[name].proc.pid

    def close_dashboard(self) -> None:
        if self.in_cloud:
            self.cloud(dashboard=False)
        else:
            self.sup.stop("dashboard")


def _closed_phase(rig: Rig, duration: float) -> dict[str, Any]:
    time.sleep(SETTLE_S)
    meter = CpuMeter(rig.fixed())
    time.sleep(duration)
    return {"cpu": meter.done()}


def _open_phase(rig: Rig, duration: float, cars: int) -> dict[str, Any]:
    page, pid = rig.open_dashboard()
    drv = chromium()
    try:
        drv.get(page)
        until(drv, f"return document.querySelectorAll('#cars tbody tr').length >= {cars}", 60)
        time.sleep(SETTLE_S)
        drv.execute_script(RESPONSIVENESS)
        meter = CpuMeter({**rig.fixed(), "dashboard": [pid], "chromium": descendants(drv.service.process.pid)})
        box = drv.find_element("id", "hide-offline-edges")
        t_end = time.monotonic() + duration
        while time.monotonic() < t_end:
            box.click()  # a user's click, every second: how long until the page answers
            time.sleep(1.0)
        cpu = meter.done()
        probe = drv.execute_script(
            "const p = window.dashProbe; return {changes: p.changes, ages: p.ages, render: p.render_ms, r: window.benchResp}"
        )
    finally:
        drv.quit()
        rig.close_dashboard()
    lat = [c["shown"] - c["at"] for c in probe["changes"] if c["field"] == "mode" and c["at"]]
    r = probe["r"]
    return {
        "cpu": cpu,
        "change_ms": lat,
        "age_ms": probe["ages"],
        "lag_ms": r["lag"],
        "longtask_ms": r["longtasks"],
        "input_ms": r["input"],
        "render_ms": probe["render"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.cars < 1 or args.rate <= 0 or args.duration <= 0 or args.rounds < 1:
        raise EdgepilotError("--cars, --rate, --duration and --rounds must be positive")
    work = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    broker = start_broker(work / "mq")
    prof = work / "bench.toml"
    prof.write_text(PROFILE.format(store=work / "store", token=work / "op.token"))
    load = LoadProcess(broker.url, args.cars, args.rate)
    phases: list[tuple[str, dict[str, Any]]] = []
    try:
        with Supervisor(work / "proc") as sup:
            rig = Rig(sup, broker.url, prof, work / "store", broker.proc.pid, bool(args.in_cloud))
            rig.cloud()
            load.start()
            baseline = BusBaseline(broker.url)
            for i in range(args.rounds):
                print(f"[bench dashboard] round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
                phases.append(("closed", _closed_phase(rig, args.duration)))
                baseline.take()
                baseline.on = True
                opened = _open_phase(rig, args.duration, args.cars)
                baseline.on = False
                phases.append(("open", {**opened, "bus_ms": baseline.take()}))
            baseline.conn.close()
    finally:
        load.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"dashboard": "inside the cloud trainer" if args.in_cloud else "its own process", **summarise(args, phases)}


def summarise(args: argparse.Namespace, phases: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    def cpu(kind: str, who: str) -> float:
        vals = [p["cpu"][who] for k, p in phases if k == kind]
        return round(sum(vals) / len(vals), 2)

    opened = [p for k, p in phases if k == "open"]

    def gather(key: str) -> list[float]:
        return [x for p in opened for x in p[key]]

    change = gather("change_ms")
    res: dict[str, Any] = {
        "cars": args.cars,
        "rate_hz": args.rate,
        "messages_per_s": args.cars * args.rate,
        "rounds": args.rounds,
        "phase_s": args.duration,
        "change_ms": {**pct(change, 50, 95, 99, digits=1), "max": round(max(change), 1) if change else None, "n": len(change)},
        "age_ms": pct(gather("age_ms"), 50, 95, 99, digits=1),
        "bus_baseline_ms": pct(gather("bus_ms"), 50, 95, 99, digits=1),
        "input_ms": {**pct(gather("input_ms"), 50, 95, digits=1), "n": len(gather("input_ms"))},
        "render_ms": {**pct(gather("render_ms"), 50, 95, 99, digits=2), "per_s": round(len(gather("render_ms")) / (args.duration * len(opened)), 1)},
        "event_loop_lag_ms": {**pct(gather("lag_ms"), 50, 95, 99, digits=1), "max": round(max(gather("lag_ms"), default=0), 1)},
        "long_tasks": {"n": len(gather("longtask_ms")), "ms_per_s": round(sum(gather("longtask_ms")) / (args.duration * len(opened)), 1)},
        "cpu_pct": {
            who: {"closed": cpu("closed", who), "open": cpu("open", who), "rise": round(cpu("open", who) - cpu("closed", who), 2)}
            for who in ("broker", "cloud")
        },
        "dashboard_cpu_pct": cpu("open", "dashboard"),
        "chromium_cpu_pct": cpu("open", "chromium"),
    }
    return res
