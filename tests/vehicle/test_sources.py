"""Frame sources: OpenCV capture (a real video file through the same VideoCapture path a
USB camera takes), replay at recorded timing, damaged frames in replay."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.config import CameraConfig
from edgepilot.drive.replay import ReplaySource
from edgepilot.drivelog import LogWriter
from edgepilot.schema.log import Record
from vehicle.cameras import make_camera


def test_camera_source_hands_over_newest_frames_resized(tmp_path):
    path = str(tmp_path / "cam.avi")
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    assert vw.isOpened()
    for i in range(60):
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.putText(img, str(i), (100, 150), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
        vw.write(img)
    vw.release()
    cam = make_camera(CameraConfig(source=path, width=160, height=120, fps=1000))  # a fast "camera"
    got = []
    while (f := cam.read()) is not None:
        got.append(f.index)
        assert f.image.shape == (120, 160, 3)
        time.sleep(0.005)  # a slow loop: the capture thread runs ahead and stale frames are dropped
    cam.close()
    assert got == sorted(set(got))  # strictly newer each time
    assert got[-1] == 59 or cam.dropped > 0
    assert len(got) + cam.dropped == 60


def test_camera_that_does_not_open_says_so():
    with pytest.raises(EdgepilotError, match="did not open"):
        make_camera(CameraConfig(source="/nonexistent/video.avi"))


def test_replay_realtime_keeps_recorded_timing_and_skips_bad_frames(tmp_path):
    with LogWriter(tmp_path / "log") as w:
        for i in range(6):
            w.write(
                Record(i=i, t=50 + i * 0.04, steering=0.1 * i, throttle=0.2),
                np.full((120, 160, 3), 80, np.uint8),
            )
    (tmp_path / "log" / "images" / "000003.jpg").write_bytes(b"")
    src = ReplaySource(tmp_path / "log", rate="realtime")
    t0 = time.monotonic()
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    took = time.monotonic() - t0
    assert [f.index for f in frames] == [0, 1, 2, 4, 5]
    assert frames[4].label == pytest.approx((0.5, 0.2))
    assert frames[0].jpeg[:2] == b"\xff\xd8"
    assert took >= 0.19  # 5 intervals of 40 ms recorded (a lower bound only: never a speed test)
    assert src.decode_errors == 1
