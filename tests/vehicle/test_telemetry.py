"""The car's telemetry for the fleet's dashboard: a driving car publishes about once a
second what it runs and how (model, mode, exit shares, offloading, loop rate); a car that
ends its drive says "offline"; one that is killed says so through its Last Will."""

from __future__ import annotations

import signal
import subprocess
import sys

from edgepilot.config import REPO_ROOT, BrokerConfig
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from tests.helpers import run_json, wait_for


def listen(url: str, name: str) -> tuple[Connection, list[fleet.CarTelemetry]]:
    got: list[fleet.CarTelemetry] = []
    conn = Connection(BrokerConfig(url=url), name)
    conn.subscribe(fleet.CAR_TELEMETRY_FILTER, lambda m: m.payload and got.append(fleet.decode_car_telemetry(m.payload)), qos=1)
    conn.start()
    assert conn.wait_subscribed(5)
    return conn, got


def sim_args(url: str, model: str, *extra: str) -> list[str]:
    return ["sim", "drive", "--pilot", "model", "--model", model, "--follow-fleet", "--broker", url, "--headless", *extra]


def test_a_driving_car_publishes_its_telemetry_and_goes_offline(broker, tiny_model, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPILOT_CAR_ID", "car-telemetry")
    conn, got = listen(broker.url, "dash-t")
    try:
        args = sim_args(broker.url, tiny_model, "--rate", "realtime", "--max-seconds", "3", "--record", str(tmp_path / "log"), "--json")
        rc, res = run_json(capsys, args)
        assert rc == 0
        assert wait_for(lambda: got and got[-1].state == "offline", 5)
        mine = [t for t in got if t.car == "car-telemetry"]
        driving = [t for t in mine if t.state == "driving"]
        assert len(driving) >= 2  # about once a second over a 3 s drive
        last = driving[-1]
        assert last.model == res["model_version"] and last.mode == "local" and last.loop_hz > 0
        assert abs(sum(last.exit_rate.values()) - 1) < 1e-3 and last.offload_rate == 0.0
        assert last.recording and 0 < last.records <= res["records"] and last.frames <= res["frames"]
        assert mine[-1].state == "offline"
    finally:
        conn.close()


def test_a_killed_car_goes_offline_by_its_last_will(broker, tiny_model):
    conn, got = listen(broker.url, "dash-k")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgepilot", *sim_args(broker.url, tiny_model, "--rate", "realtime", "--laps", "50")],
        cwd=REPO_ROOT,
        env={**__import__("os").environ, "EDGEPILOT_CAR_ID": "car-killed"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: any(t.car == "car-killed" and t.state == "driving" for t in got), 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: got[-1].car == "car-killed" and got[-1].state == "offline", 30)  # keepalive x 1.5
    finally:
        if proc.poll() is None:
            proc.kill()
        conn.close()
