"""`edgepilot drive` on the real-car code path: an OpenCV capture (a video file stands in
for the camera), the autopilot, and the Robo HAT text protocol over a real pseudo-terminal
— the test reads what the car sends."""

from __future__ import annotations

import json
import os
import re
import threading

import cv2
import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.broker import free_port
from edgepilot.cli import main
from edgepilot.drivelog import LogReader
from edgepilot.model.data import load_samples


def test_drive_headless_sends_commands_and_records(tmp_path, tiny_model, capsys, monkeypatch):
    video = str(tmp_path / "cam.avi")
    vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    for i in range(40):
        img = np.full((120, 160, 3), 90, np.uint8)
        cv2.line(img, (80 + i, 120), (80, 40), (255, 255, 255), 3)
        vw.write(img)
    vw.release()
    master, slave = os.openpty()
    port = os.ttyname(slave)
    prof = tmp_path / "car.toml"
    prof.write_text(f"""
car_id = "car-t"
[broker]
url = "mqtt://127.0.0.1:{free_port()}"  # no fleet: nothing may be pushed to this car
[camera]
source = "{video}"
fps = 20
[actuator]
kind = "robohat"
port = "{port}"
[drive]
mode = "local"
throttle_cap = 0.3
auto_record = false
record_dir = "{tmp_path / "rec"}"
[model]
package = "{tiny_model}"
trusted_keys = []
""")
    got = bytearray()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            got.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    rc = main(["drive", "--profile", str(prof), "--headless", "--json"])
    stop.set()
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["frames"] >= 1 and res["frames"] + 0 <= 40
    cmds = [tuple(map(int, m)) for m in re.findall(rb"(\d+), (\d+)\r", bytes(got))]
    assert len(cmds) >= res["frames"]
    for steer_us, thr_us in cmds:
        assert 1000 <= steer_us <= 2000
        assert abs(thr_us - 1500) <= 0.3 * 500 + 1  # throttle cap: 0.3 of either range
    assert cmds[-1] == (1500, 1500)  # neutral on the way out
    recs = LogReader(res["log"]).records()
    assert len(recs) == res["frames"] and recs[0].model_version == res["model_version"]
    # the autopilot drove with no human: no frame carries a label, so training takes none
    # of them (an old build labelled every one (0, 0) and the cloud retrained on it)
    assert {r.label_source for r in recs} == {"none"}
    with pytest.raises(EdgepilotError, match="no frames with a"):
        load_samples([res["log"]])
    os.close(master)
    os.close(slave)


def test_collect_drives_the_car_by_keyboard_and_records(tmp_path, capsys, monkeypatch):
    """`edgepilot collect`: the pygame window (SDL dummy driver, posted key events: a
    scripted user) drives the real actuator code over a pty; auto-record starts with throttle."""
    pygame = pytest.importorskip("pygame")
    import vehicle.ui

    class ScriptedWindow(vehicle.ui.DriveWindow):
        script = {0: [pygame.K_w], 25: [pygame.K_ESCAPE]}

        def poll(self) -> None:
            self.k = getattr(self, "k", 0)
            for key in self.script.get(self.k, []):
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
            self.k += 1
            super().poll()

    monkeypatch.setattr(vehicle.ui, "DriveWindow", ScriptedWindow)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    video = str(tmp_path / "cam.avi")
    vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    for _ in range(200):
        vw.write(np.full((120, 160, 3), 100, np.uint8))
    vw.release()
    master, slave = os.openpty()
    prof = tmp_path / "car.toml"
    prof.write_text(f"""
car_id = "car-c"
[broker]
url = "mqtt://127.0.0.1:{free_port()}"
[camera]
source = "{video}"
[actuator]
kind = "robohat"
port = "{os.ttyname(slave)}"
[drive]
throttle_cap = 0.5
record_dir = "{tmp_path / "rec"}"
""")
    got = bytearray()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                got.extend(os.read(master, 4096))
            except OSError:
                return

    threading.Thread(target=reader, daemon=True).start()
    rc = main(["collect", "--profile", str(prof), "--json"])
    stop.set()
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["frames"] == 25  # Esc on the 26th frame ends the drive before it acts
    cmds = [tuple(map(int, m)) for m in re.findall(rb"(\d+), (\d+)\r", bytes(got))]
    assert max(t for _, t in cmds) > 1500  # W drove the motor forward...
    assert max(t for _, t in cmds) <= 1500 + 0.5 * 500 + 1  # ...capped
    assert cmds[-1] == (1500, 1500)
    recs = LogReader(res["log"]).records()
    assert 0 < len(recs) <= 25 and all(r.throttle > 0 and r.mode == "user" for r in recs)
    os.close(master)
    os.close(slave)


def test_parked_car_uploads_finished_logs_but_not_the_one_it_records(broker, tmp_path, capsys, monkeypatch):
    """Upload 'automatically from the car when it is idle and connected' (issue 7), on the
    real-car path: a finished log from an earlier session goes to the cloud while the car
    stands still; the session being recorded does not."""
    from cloud_trainer.ingest import Ingest
    from cloud_trainer.store import DirStore
    from edgepilot.config import BrokerConfig
    from edgepilot.drivelog import LogWriter
    from edgepilot.mqtt import Connection
    from edgepilot.schema.log import Record, SessionMeta

    store = DirStore(tmp_path / "store")
    ingest = Ingest(store)
    conn = Connection(BrokerConfig(url=broker.url), "cloud-idle-test")
    conn.start()
    ingest.attach(conn, group="idle-test")
    rec_root = tmp_path / "rec"
    old = rec_root / "car-p-earlier"
    with LogWriter(old, SessionMeta(session="earlier", created=0.0, source="car"), block=True) as w:
        for i in range(20):
            w.write(Record(i=i, t=i * 0.05, steering=0.0, throttle=0.2), np.full((120, 160, 3), 60, np.uint8))
    os.utime(old / "records.jsonl", (1, 1))  # finished long ago
    video = str(tmp_path / "cam.avi")
    vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    for _ in range(80):  # 4 s at the profile's 20 Hz
        vw.write(np.full((120, 160, 3), 100, np.uint8))
    vw.release()
    prof = tmp_path / "car.toml"
    prof.write_text(f"""
car_id = "car-p"
[broker]
url = "{broker.url}"
[camera]
source = "{video}"
[actuator]
kind = "none"
[drive]
mode = "user"
auto_record = false
record_dir = "{rec_root}"
idle_after_s = 0.3
""")
    monkeypatch.delenv("DISPLAY", raising=False)
    try:
        assert conn.wait_subscribed(5)
        assert main(["drive", "--profile", str(prof), "--headless", "--json"]) == 0
    finally:
        ingest.close()
        conn.close()
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res["uploaded"]) == 1 and res["uploaded"][0].endswith("car-p-earlier")
    assert len(store.list("uploads/")) == 1  # only the finished log; the recording one stayed home
