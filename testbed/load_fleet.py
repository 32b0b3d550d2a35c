"""Load: N simulated cars offloading through one Mosquitto to two edge node processes.

    .venv/bin/python -m testbed.load_fleet --cars 32 --rate 10 --duration 300 --out var/reliability/load_300s.json

Each car is an ``OffloadClient`` (its own MQTT connection) sending a real 160x120 JPEG at
``--rate`` Hz with a one-period deadline; the edge nodes are ``edgepilot edge`` processes
(builtin PilotNet, one torch thread each) sharing the requests. Every second the RSS of
every process (broker, both edges, this car process) is sampled from /proc. Prints one
JSON object: round-trip percentiles, answered / late / dropped counts, and per process
the RSS at the start of the second half and at the end (growth over the second half is
the leak signal: start-up allocations are done by then).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepilot.broker import start_broker
from edgepilot.config import BrokerConfig
from edgepilot.imaging import encode_jpeg
from edgepilot.offload.client import CircuitBreaker, OffloadClient
from edgepilot.stats import pct
from testbed.procs import rss_mb, spawn_edge

Samples = list[tuple[float, dict[str, float | None]]]  # (seconds since start, RSS MB per process)


def run(cars: int, rate: float, duration: float) -> dict[str, Any]:
    broker = start_broker(Path(tempfile.mkdtemp(prefix="load-mq-")))
    edges = [spawn_edge(broker.url, f"edge-load-{k}") for k in range(2)]
    img = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    frame = encode_jpeg(img, 90)
    period = 1.0 / rate
    clients = [
        OffloadClient(
            BrokerConfig(url=broker.url),
            f"load-car-{i}",
            deadline_s=period,
            breaker=CircuitBreaker(trip_after=10**9),  # measure every frame, never back off
        )
        for i in range(cars)
    ]
    for c in clients:
        c.start(wait_s=10)
    procs = {"broker": broker.proc.pid, "edge-0": edges[0].pid, "edge-1": edges[1].pid, "cars": os.getpid()}
    samples, polled = _drive(clients, frame, period, duration, procs)
    stats = [c.stats for c in clients]
    rtts = [ms for c in clients for ms in c.rtt_samples()]
    for c in clients:
        c.close()
    _stop(edges)
    broker.stop()
    total = {
        k: sum(s[k] for s in stats)
        for k in ("sent", "answered", "late", "missed", "dropped", "errors", "throttled", "stray")
    }
    frames = polled["answered_in_time"] + polled["no_answer"]
    return {
        "cars": cars,
        "rate_hz": rate,
        "duration_s": duration,
        "frames": frames,
        "answered_in_time": polled["answered_in_time"],
        "deadline_miss_rate": round(polled["no_answer"] / frames, 4) if frames else None,
        "counts": total,
        "rtt_ms": {**pct(rtts, 50, 90, 99, digits=2), "max": round(max(rtts), 2)} if rtts else {},
        "memory": _memory(samples, list(procs), duration),
        "rss_samples": len(samples),
        "cores": os.cpu_count(),
        "load_avg_end": round(os.getloadavg()[0], 2),
    }


def _drive(
    clients: list[OffloadClient], frame: bytes, period: float, duration: float, procs: dict[str, int]
) -> tuple[Samples, dict[str, int]]:
    """Every car offloads ``frame`` once a period on its own thread for ``duration`` s while
    this thread samples the processes' RSS once a second. Returns the samples and how
    many frames were answered in time and how many were not."""
    samples: Samples = []
    stop = threading.Event()
    polled = {"answered_in_time": 0, "no_answer": 0}
    lock = threading.Lock()

    def car_loop(k: int, c: OffloadClient) -> None:
        i = 0
        t_next = time.monotonic() + k * period / len(clients)  # spread the cars over the period
        while not stop.is_set():
            time.sleep(max(0.0, t_next - time.monotonic()))
            t0 = time.monotonic()
            ok = c.submit(i, frame)
            ans = c.poll(i, t0 + period) if ok else None
            with lock:
                polled["answered_in_time" if ans is not None else "no_answer"] += 1
            i += 1
            t_next += period

    threads = [threading.Thread(target=car_loop, args=(k, c), daemon=True) for k, c in enumerate(clients)]
    t_start = time.monotonic()
    for th in threads:
        th.start()
    try:
        while (now := time.monotonic()) < t_start + duration:
            samples.append((now - t_start, {n: rss_mb(p) for n, p in procs.items()}))
            time.sleep(1.0)
    finally:
        stop.set()
        for th in threads:
            th.join(2)
    return samples, polled


def _stop(edges: list[subprocess.Popen]) -> None:
    for e in edges:
        e.send_signal(signal.SIGTERM)
    for e in edges:
        try:
            e.wait(10)
        except subprocess.TimeoutExpired:
            e.kill()


def _memory(samples: Samples, names: list[str], duration: float) -> dict[str, dict[str, float]]:
    """Per process, its RSS over the second half of the run (start-up allocations are done
    by then, so growth there is the leak signal)."""
    half = [s for t, s in samples if t >= duration / 2]
    mem = {}
    for name in names:
        series = [v for s in half if (v := s[name]) is not None]
        if series:
            mem[name] = {
                "rss_mb_half": round(series[0], 1),
                "rss_mb_end": round(series[-1], 1),
                "growth_mb": round(series[-1] - series[0], 1),
                "max_mb": round(max(series), 1),
            }
    return mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cars", type=int, default=32)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = run(a.cars, a.rate, a.duration)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
