"""The car's camera: frames from OpenCV (V4L2, a video file), newest frame only.

Like the simulator's and replay's sources (``edgepilot.sim.parts``,
``edgepilot.drive.replay``) it hands the loop an ``edgepilot.drive.parts.Frame``; the loop
cannot tell them apart, which is the point (openpilot's replay drives the processes that
run live).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgepilot import EdgepilotError
from edgepilot.config import CameraConfig
from edgepilot.drive.parts import Frame

log = logging.getLogger(__name__)


def _open_capture(source: str) -> cv2.VideoCapture:
    if source.isdigit():
        return (
            cv2.VideoCapture(int(source), cv2.CAP_V4L2)
            if Path("/dev/video0").exists()
            else cv2.VideoCapture(int(source))
        )
    if "!" in source:  # a GStreamer pipeline, e.g. a CSI camera through nvarguscamerasrc / libcamerasrc
        return cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    return cv2.VideoCapture(source)


class CameraSource:
    """An OpenCV camera read by a thread that keeps only the newest frame.

    A control loop must act on the freshest image: a queue of stale frames adds latency
    that no model can make up for. ``read()`` waits for a frame newer than the last one it
    returned (up to ``timeout_s``) and drops any in between (counted in ``dropped``)."""

    def __init__(self, cfg: CameraConfig, timeout_s: float = 1.0) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.cap = _open_capture(cfg.source)
        if not self.cap.isOpened():
            raise EdgepilotError(
                f"camera {cfg.source!r} did not open (check the device, permissions: `groups` should list video)"
            )
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self.cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, int] | None = None
        self._served = -1
        self._count = 0
        self.dropped = 0
        self._ended = False
        self._stop = False
        # a video file stands in for a camera (development, tests): play it at the camera's
        # rate, or the grab thread would race through it in a fraction of a second
        self._pace = 1.0 / cfg.fps if Path(cfg.source).is_file() and cfg.fps > 0 else 0.0
        self._thread = threading.Thread(target=self._grab, name="camera", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        t_next = time.monotonic()
        while not self._stop:
            if self._pace:
                t_next += self._pace
                time.sleep(max(0.0, t_next - time.monotonic()))
            ok, img = self.cap.read()
            if not ok:
                with self._cond:
                    self._ended = True
                    self._cond.notify_all()
                return
            if img.shape[1] != self.cfg.width or img.shape[0] != self.cfg.height:
                img = cv2.resize(img, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
            with self._cond:
                if self._latest is not None and self._latest[2] > self._served:
                    self.dropped += 1  # never handed over: a newer one replaces it
                self._latest = (img, time.time(), self._count)
                self._count += 1
                self._cond.notify_all()

    def read(self) -> Frame | None:
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while self._latest is None or self._latest[2] <= self._served:
                if self._ended:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgepilotError(f"camera {self.cfg.source!r}: no frame for {self.timeout_s:.1f} s")
                self._cond.wait(left)
            img, t, i = self._latest
            self._served = i
        return Frame(img, t, i)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.cap.release()
