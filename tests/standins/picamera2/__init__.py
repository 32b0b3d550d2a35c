"""Stand-in for picamera2 (the Raspberry Pi camera library: apt's python3-picamera2, only on a Pi).

The API shape is picamera2's (0.3.x, ``picamera2/picamera2.py``) for what edgepilot calls:
``Picamera2(camera_num=0)``, the static ``Picamera2.global_camera_info()``,
``create_video_configuration(main=..., transform=..., controls=..., queue=..., buffer_count=...)``
returning a configuration dict, ``configure(config)``, ``start()``, ``capture_array(name="main",
wait=None)``, ``stop()``, ``close()``. Behaviour modelled on the real library:

* ``Picamera2(n)`` looks ``n`` up in ``global_camera_info()`` (IndexError when there is no such
  camera) and acquires the camera (RuntimeError while another instance holds it, as libcamera's
  acquire does); ``close()`` releases it.
* The main stream's format decides the byte order (picamera2 manual, appendix A): ``RGB888`` is
  [B, G, R] per pixel, ``BGR888`` is [R, G, B], ``XBGR8888`` is [R, G, B, 255], ``XRGB8888``
  is [B, G, R, 255].
* The sensor reads out with the configuration's ``transform`` applied (hflip, vflip); a
  transpose is refused, as the Pi's ISP cannot do one.
* One frame per ``FrameDurationLimits`` minimum (default 33333 us, as create_video_configuration
  sets); with ``queue=False`` a capture returns the next frame completed after the call.
* ``capture_array(wait=SECONDS)`` raises TimeoutError when no frame completes in time
  (picamera2's ``Job.get_result(timeout)``): a stalled camera.

The scene: frame ``n`` of size (w, h) has B = n % 256 everywhere (a frame counter), G rising
left to right and R rising top to bottom (``render``). Test controls that are not picamera2 API:
``CAMERAS``, ``INSTANCES``, ``render``, ``Picamera2.stall()``, ``Picamera2.frames_delivered``.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
from libcamera import Transform

CAMERAS: list[dict[str, Any]] = [
    {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a", "Num": 0}
]
INSTANCES: list[Picamera2] = []
_held: set[int] = set()
_BYTE_ORDER = {"RGB888": (0, 1, 2), "BGR888": (2, 1, 0), "XBGR8888": (2, 1, 0), "XRGB8888": (0, 1, 2)}


def render(n: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``n`` as [B, G, R] planes before any flip: B counter, G over x, R over y."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:, :, 0] = n % 256
    img[:, :, 1] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    img[:, :, 2] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    return img


class Picamera2:
    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in CAMERAS]

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None) -> None:
        num = self.global_camera_info()[camera_num]["Num"]
        if num in _held:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        _held.add(num)
        self.camera_idx = num
        self.is_open = True
        self.started = False
        self.camera_config: dict[str, Any] | None = None
        self.frames_delivered = 0
        self._stalled = threading.Event()
        self._t0 = 0.0
        self._last = -1
        INSTANCES.append(self)

    def create_video_configuration(
        self,
        main: dict | None = None,
        lores: dict | None = None,
        raw: dict | None = None,
        transform: Transform | None = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        stream = {"format": "XBGR8888", "size": (1280, 720)} | (main or {})
        ctrls = {"FrameDurationLimits": (33333, 33333)} | (controls or {})
        return {
            "use_case": use_case,
            "transform": transform if transform is not None else Transform(),
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "controls": ctrls,
        }

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if camera_config is None or not isinstance(camera_config.get("transform"), Transform):
            raise RuntimeError("transform must be a libcamera.Transform")
        if camera_config["transform"].transpose:
            raise RuntimeError("Transform transpose is not supported by the Raspberry Pi ISP")
        main = camera_config["main"]
        if main["format"] not in _BYTE_ORDER:
            raise RuntimeError(f"Bad format {main['format']} in stream main")
        self.camera_config = camera_config

    def start(self, config: dict | None = None, show_preview: bool = False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self._t0 = time.monotonic()

    def _frame_s(self) -> float:
        return self.camera_config["controls"]["FrameDurationLimits"][0] / 1e6

    def capture_array(self, name: str = "main", wait: Any = None, signal_function: Any = None) -> np.ndarray:
        if name != "main":
            raise KeyError(name)
        timeout = None if wait is None or wait is True else float(wait)
        if not self.started or self._stalled.is_set():
            # no request completes: picamera2 waits (forever without a number; the stand-in
            # gives up after 10 s so that a test that forgot ``wait`` fails instead of hanging)
            time.sleep(timeout if timeout is not None else 10.0)
            raise (
                TimeoutError() if timeout is not None else AssertionError("capture_array would block forever")
            )
        period = self._frame_s()
        now = time.monotonic()
        n = max(self._last + 1, math.floor((now - self._t0) / period) + 1)  # queue=False: a fresh frame
        due = self._t0 + n * period
        if timeout is not None and due - now > timeout:
            time.sleep(timeout)
            raise TimeoutError()
        time.sleep(max(0.0, due - now))
        self._last = n
        self.frames_delivered += 1
        return self._read_out(n)

    def _read_out(self, n: int) -> np.ndarray:
        main = self.camera_config["main"]
        img = render(n, tuple(main["size"]))
        t = self.camera_config["transform"]
        if t.hflip:
            img = img[:, ::-1]
        if t.vflip:
            img = img[::-1]
        img = img[:, :, list(_BYTE_ORDER[main["format"]])]
        if main["format"].startswith("X"):
            img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
        return np.ascontiguousarray(img)

    def stall(self) -> None:
        """Stop delivering frames, as a camera whose ribbon cable came loose."""
        self._stalled.set()

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        if self.is_open:
            self.stop()
            _held.discard(self.camera_idx)
            self.is_open = False
