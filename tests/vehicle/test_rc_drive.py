"""`edgepilot collect` in RC mode on a Robo HAT MM1: the MM1's RC read-back is the user.

The real command path: a video file stands in for the camera; the test is the MM1's end
of a pseudo-terminal -- it sends the receiver's pulses back every 25 ms as DonkeyCar's
``code.py`` does (``"%i, %i\\r\\n"``) and reads the command lines the car sends. No
display: with the transmitter driving, collect needs no window.
"""

from __future__ import annotations

import json
import os
import re
import select
import threading
import time

import cv2
import numpy as np

from edgepilot.broker import free_port
from edgepilot.cli import main
from edgepilot.drivelog import LogReader

STEER_US, THROTTLE_US = 1650, 1700  # the transmitter: a little right, gently forward


def test_collect_in_rc_mode_echoes_the_transmitter_and_labels_it(tmp_path, capsys, monkeypatch):
    video = str(tmp_path / "cam.avi")
    vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    for _ in range(40):
        vw.write(np.full((120, 160, 3), 100, np.uint8))
    vw.release()
    master, slave = os.openpty()
    prof = tmp_path / "mm1.toml"
    prof.write_text(f"""
car_id = "car-rc"
[broker]
url = "mqtt://127.0.0.1:{free_port()}"
[camera]
source = "{video}"
[actuator]
kind = "robohat"
port = "{os.ttyname(slave)}"
[rc]
enabled = true
[drive]
throttle_cap = 0.5
record_dir = "{tmp_path / "rec"}"
""")
    got = bytearray()
    stop = threading.Event()

    def mm1() -> None:
        while not stop.is_set():
            try:
                os.write(master, b"%i, %i\r\n" % (STEER_US, THROTTLE_US))
                time.sleep(0.025)
                if select.select([master], [], [], 0)[0]:
                    got.extend(os.read(master, 4096))
            except OSError:
                return

    t = threading.Thread(target=mm1, daemon=True)
    t.start()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    try:
        rc = main(["collect", "--profile", str(prof), "--json"])
    finally:
        stop.set()
        t.join(2)
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cmds = [tuple(map(int, m)) for m in re.findall(rb"(\d+), (\d+)\r", bytes(got))]
    # RC mode: the car gets back the very pulses its receiver reads (0.4 is under the cap)
    assert (STEER_US, THROTTLE_US) in cmds and cmds[-1] == (1500, 1500)
    assert set(cmds) <= {(1500, 1500), (STEER_US, THROTTLE_US)}
    recs = LogReader(res["log"]).records()
    assert recs and all(r.label_source == "human" for r in recs)
    assert {(round(r.steering, 3), round(r.throttle, 3)) for r in recs} == {(0.3, 0.4)}
    os.close(master)
    os.close(slave)
