"""The car's cameras: a Pi Camera through picamera2, a USB camera through OpenCV (V4L2), a
GStreamer pipeline where OpenCV has GStreamer, and a video file standing in for a camera.

``make_camera(cfg)`` picks the kind (``camera.kind`` in the profile):

* ``picamera2`` -- Pi Camera v2/v3/HQ on the CSI port, Raspberry Pi OS Bookworm. picamera2 and
  libcamera's Python bindings exist only on a Pi and come from apt (``python3-picamera2``,
  ``python3-libcamera``), not from pip; a virtualenv sees them only when it was made with
  ``--system-site-packages`` (``launch/car-setup`` does that). They are imported only when this
  kind is chosen, and a missing or broken install is one error that says which and how to fix it.
  The main stream is ``RGB888``, which picamera2 hands over as [B, G, R] per pixel -- already
  OpenCV's order. Flips (and the half turn of ``rotate = 180``) are done by the sensor
  (``libcamera.Transform``: free); a quarter turn is done here because the Pi's ISP cannot
  transpose. ``FrameDurationLimits`` holds the sensor at the profile's fps, and ``queue=False``
  makes every capture a frame exposed after the request, never one that waited in a queue.
* ``v4l2`` -- a USB camera (``source`` = index or ``/dev/videoN``) through OpenCV, which the
  car's install leaves out (``pip install "edgepilot[car,opencv]"``; a missing OpenCV is one
  error saying so). The other kinds need no OpenCV except ``gstreamer`` and ``file``.
* ``gstreamer`` -- a pipeline string through OpenCV, only when ``cv2.getBuildInformation()``
  says ``GStreamer: YES``; the ``opencv-python`` wheel from PyPI says NO, and then this is a
  one-line error naming what to use instead.
* ``file`` -- a video file played at the camera's fps (development, tests).
* ``auto`` -- ``gstreamer`` for a string with ``!``, ``file`` for an existing file, else ``v4l2``.
  A Pi Camera is never guessed: on a Pi ``/dev/video0`` may well be the CSI receiver, which
  OpenCV cannot use, so a Pi Camera is always ``kind = "picamera2"`` and said so when V4L2 fails.

Every kind hands the loop BGR uint8 ``height`` x ``width`` x 3 frames, turned by ``flip_h`` /
``flip_v`` first and then ``rotate`` degrees clockwise, through one capture thread that keeps
only the newest frame (a control loop must act on the freshest image; a queue of stale frames
adds latency no model can make up for). A camera that stops delivering is an error at the
next ``read()``, never a silent end of the drive; only a video file ends (``None``).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.config import CameraConfig
from edgepilot.drive.parts import Frame
from edgepilot.extras import require
from edgepilot.imaging import orient, resize_area

KINDS = ("auto", "picamera2", "v4l2", "gstreamer", "file")
ROTATIONS = (0, 90, 180, 270)
PI_MODEL_FILE = Path("/proc/device-tree/model")
# A Pi Camera needs a moment (exposure, gains) before its first frame; it is also how long a
# capture waits before the thread gives a stalled camera up (read() reports a late frame sooner).
START_TIMEOUT_S = 5.0
CAR_SETUP_HINT = "./launch/car-setup (docs/hardware.md#cameras)"


class Grabber(Protocol):
    """The device side of a camera: one frame per call, as the device delivers it."""

    def grab(self) -> np.ndarray | None:
        """The next frame (HxWx3 uint8, BGR), None at the end of a file; raises when the device fails."""

    def release(self) -> None: ...


def validate_camera(cfg: CameraConfig) -> None:
    if cfg.kind not in KINDS:
        raise EdgepilotError(f"camera.kind: unknown kind {cfg.kind!r} (one of {', '.join(KINDS)})")
    if cfg.rotate not in ROTATIONS:
        raise EdgepilotError(f"camera.rotate: {cfg.rotate} is not one of 0, 90, 180, 270 (degrees clockwise)")
    for name in ("width", "height", "fps"):
        if getattr(cfg, name) <= 0:
            raise EdgepilotError(f"camera.{name}: must be > 0, got {getattr(cfg, name)}")


def resolve_kind(cfg: CameraConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    if "!" in cfg.source:
        return "gstreamer"
    if Path(cfg.source).is_file():
        return "file"
    return "v4l2"


def import_cv2() -> ModuleType:
    """OpenCV, or an error naming the install that brings it (the car's leaves it out)."""
    return require("cv2", "this camera kind", 'or kind = "picamera2" for a Pi Camera')


def opencv_has_gstreamer(build_info: str | None = None) -> bool:
    """True when this OpenCV build lists ``GStreamer: YES`` in its build information."""
    info = import_cv2().getBuildInformation() if build_info is None else build_info
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return m is not None and m.group(1).upper() == "YES"


def is_raspberry_pi() -> bool:
    try:
        return "Raspberry Pi" in PI_MODEL_FILE.read_text(errors="replace")
    except OSError:
        return False


class CameraSource:
    """A camera read by a thread that keeps only the newest frame.

    ``read()`` waits for a frame newer than the last one it returned (up to ``timeout_s``;
    the first frame up to ``START_TIMEOUT_S``) and drops any in between (counted in
    ``dropped``). ``soft_orient`` is the part of the orientation the device did not do."""

    def __init__(
        self,
        grabber: Grabber,
        cfg: CameraConfig,
        *,
        kind: str,
        soft_orient: tuple[bool, bool, int],
        pace_s: float = 0.0,
        timeout_s: float = 1.0,
    ) -> None:
        self.grabber, self.cfg, self.kind = grabber, cfg, kind
        self.timeout_s = timeout_s
        self._soft = soft_orient
        self._pace = pace_s
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, int] | None = None
        self._served = -1
        self._count = 0
        self.dropped = 0
        self._ended = False
        self._error: str | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._grab_loop, name=f"camera-{kind}", daemon=True)
        self._thread.start()

    def _shape(self, img: np.ndarray) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
            raise EdgepilotError(f"the camera gave a {img.shape} {img.dtype} array, not HxWx3 uint8")
        if img.shape[2] == 4:  # an XBGR8888 stream: drop the padding byte
            img = np.ascontiguousarray(img[:, :, :3])
        img = orient(img, *self._soft)
        if img.shape[1] != self.cfg.width or img.shape[0] != self.cfg.height:
            img = resize_area(img, self.cfg.width, self.cfg.height)
        return img

    def _grab_loop(self) -> None:
        t_next = time.monotonic()
        while not self._stop:
            if self._pace:
                t_next += self._pace
                time.sleep(max(0.0, t_next - time.monotonic()))
            try:
                raw = self.grabber.grab()
                img = None if raw is None else self._shape(raw)
            except Exception as e:  # the device failed: the reader hears of it, the car stops
                if not self._stop:
                    why = (
                        f"no frame within {START_TIMEOUT_S:.1f} s" if isinstance(e, TimeoutError) else repr(e)
                    )
                    self._finish(f"camera {self.kind} {self.cfg.source!r} stopped delivering frames: {why}")
                return
            if img is None:
                self._finish(None)
                return
            with self._cond:
                if self._latest is not None and self._latest[2] > self._served:
                    self.dropped += 1  # never handed over: a newer one replaces it
                self._latest = (img, time.time(), self._count)
                self._count += 1
                self._cond.notify_all()

    def _finish(self, error: str | None) -> None:
        with self._cond:
            self._ended = True
            self._error = error
            self._cond.notify_all()

    def read(self) -> Frame | None:
        wait_s = self.timeout_s if self._served >= 0 else max(self.timeout_s, START_TIMEOUT_S)
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._latest is None or self._latest[2] <= self._served:
                if self._error is not None:
                    raise EdgepilotError(self._error)
                if self._ended:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgepilotError(
                        f"camera {self.kind} {self.cfg.source!r}: no frame for {wait_s:.1f} s"
                    )
                self._cond.wait(left)
            img, t, i = self._latest
            self._served = i
        return Frame(img, t, i)

    @property
    def frames(self) -> int:
        return self._count

    def describe(self) -> dict[str, object]:
        """What a driving log's session metadata records about the camera."""
        c = self.cfg
        return {
            "kind": self.kind,
            "source": c.source,
            "width": c.width,
            "height": c.height,
            "fps": c.fps,
            "flip_h": c.flip_h,
            "flip_v": c.flip_v,
            "rotate": c.rotate,
        }

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=START_TIMEOUT_S + 1.0)  # a capture in progress ends by then
        self.grabber.release()


# -- OpenCV: V4L2, GStreamer, a video file -------------------------------------------------


class OpenCVGrabber:
    def __init__(self, cfg: CameraConfig, kind: str) -> None:
        self.live = kind != "file"
        cv2 = import_cv2()
        self.cap = _open_capture(cv2, cfg, kind)
        if not self.cap.isOpened():
            self.cap.release()
            raise EdgepilotError(_not_opened(cfg, kind))
        if kind == "v4l2":
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            self.cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue is latency too
        self.source = cfg.source

    def grab(self) -> np.ndarray | None:
        ok, img = self.cap.read()
        if ok:
            return img
        if self.live:
            raise EdgepilotError("the device returned no frame (unplugged? `dmesg | tail` says more)")
        return None

    def release(self) -> None:
        self.cap.release()


def _open_capture(cv2: ModuleType, cfg: CameraConfig, kind: str) -> Any:
    src = cfg.source
    if kind == "gstreamer":
        if not opencv_has_gstreamer():
            raise EdgepilotError(
                f"camera.source is a GStreamer pipeline, but this OpenCV {cv2.__version__} was built without "
                'GStreamer (the opencv-python wheel from PyPI is): use kind = "picamera2" for a Pi Camera, '
                'kind = "v4l2" with source = "/dev/videoN" for a USB camera, or an OpenCV built with '
                "GStreamer (Debian's python3-opencv in a venv made with --system-site-packages)"
            )
        return cv2.VideoCapture(src, cv2.CAP_GSTREAMER)
    if kind == "file":
        if not Path(src).is_file():
            raise EdgepilotError(f'camera.source: {src!r} is not a video file (camera.kind = "file")')
        return cv2.VideoCapture(src)
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    return cv2.VideoCapture(int(src) if src.isdigit() else src, api)


def _not_opened(cfg: CameraConfig, kind: str) -> str:
    msg = f"camera {cfg.source!r} ({kind}) did not open"
    if kind == "v4l2":
        msg += (
            " (check the device with `v4l2-ctl --list-devices` and permissions: `groups` should list video)"
        )
        if is_raspberry_pi():
            msg += '; a Pi Camera on the ribbon cable is not a V4L2 camera for OpenCV: set camera.kind = "picamera2"'
    return msg


# -- picamera2: the Pi Camera -------------------------------------------------------------


def _import_picamera2() -> tuple[type, type]:
    """``(Picamera2, libcamera.Transform)``, or an error that says exactly what is missing."""
    try:
        from libcamera import Transform
        from picamera2 import Picamera2
    except ModuleNotFoundError as e:
        raise EdgepilotError(_picamera2_missing(e.name or "picamera2")) from None
    except (ImportError, ValueError) as e:  # a C extension built for another numpy
        raise EdgepilotError(
            f"camera.kind 'picamera2': picamera2 is installed but does not import ({e}). With numpy "
            f"{np.__version__} in this venv the apt build of simplejpeg (made for Debian's numpy) breaks; "
            f"`.venv/bin/pip install simplejpeg` puts a matching build first ({CAR_SETUP_HINT} does it)"
        ) from None
    return Picamera2, Transform


APT_PYTHON_DIR = Path("/usr/lib/python3/dist-packages")  # where Debian's python3-* packages live


def _picamera2_missing(module: str, apt_dir: Path = APT_PYTHON_DIR) -> str:
    head = f"camera.kind 'picamera2': Python cannot import {module}."
    apt_copy = apt_dir / module
    in_venv = sys.prefix != sys.base_prefix
    if apt_copy.exists() and in_venv and not _venv_sees_system_packages():
        return (
            f"{head} It is installed from apt ({apt_copy}) but this virtualenv ({sys.prefix}) was made without "
            f"--system-site-packages, so it cannot see it: recreate the venv with {CAR_SETUP_HINT}"
        )
    return (
        f"{head} picamera2 and libcamera exist only on a Raspberry Pi and come from apt, not pip: "
        f"`sudo apt install python3-picamera2 python3-libcamera`, in a venv made with --system-site-packages; "
        f'{CAR_SETUP_HINT} does both. Not a Pi Camera? Use camera.kind = "v4l2" for a USB camera.'
    )


def _venv_sees_system_packages() -> bool:
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    try:
        text = cfg.read_text()
    except OSError:
        return True
    return (
        re.search(r"^\s*include-system-site-packages\s*=\s*true\s*$", text, re.MULTILINE | re.I) is not None
    )


class Picamera2Grabber:
    """A Pi Camera through picamera2: RGB888 main stream (BGR order in memory), sensor flips,
    fps held by ``FrameDurationLimits``, a capture that gives up after ``START_TIMEOUT_S``."""

    def __init__(self, cfg: CameraConfig) -> None:
        picamera2_cls, transform_cls = _import_picamera2()
        num = _camera_number(cfg.source)
        cams = picamera2_cls.global_camera_info()
        if num >= len(cams):
            raise EdgepilotError(
                f"camera.source: Pi Camera number {num} not found; libcamera sees {len(cams)} camera(s) "
                f"{[c.get('Model') for c in cams]} (check the ribbon cable and `rpicam-hello --list-cameras`)"
            )
        try:
            self.cam = picamera2_cls(num)
        except (RuntimeError, IndexError) as e:
            raise EdgepilotError(
                f"Pi Camera {num} did not open ({e}): is another program (rpicam-*, a second edgepilot) using it?"
            ) from None
        try:
            self._start(cfg, transform_cls)
        except Exception as e:
            self.release()
            raise EdgepilotError(
                f"Pi Camera {num}: could not start {cfg.width}x{cfg.height} @ {cfg.fps} fps: {e}"
            ) from None

    def _start(self, cfg: CameraConfig, transform_cls: type) -> None:
        half_turn = cfg.rotate in (180, 270)  # 270 = a half turn here + a quarter turn in software
        quarter = cfg.rotate in (90, 270)
        size = (cfg.height, cfg.width) if quarter else (cfg.width, cfg.height)
        frame_us = int(round(1e6 / cfg.fps))
        config = self.cam.create_video_configuration(
            main={"size": size, "format": "RGB888"},
            transform=transform_cls(hflip=cfg.flip_h != half_turn, vflip=cfg.flip_v != half_turn),
            controls={"FrameDurationLimits": (frame_us, frame_us)},
            queue=False,
        )
        self.cam.configure(config)
        self.cam.start()

    def grab(self) -> np.ndarray:
        return self.cam.capture_array("main", wait=START_TIMEOUT_S)

    def release(self) -> None:
        for step in (self.cam.stop, self.cam.close):
            with suppress(Exception):
                step()


def _camera_number(source: str) -> int:
    if source.isdigit():
        return int(source)
    raise EdgepilotError(
        f"camera.source: {source!r} is not a Pi Camera number (0, 1, ...) for kind 'picamera2'"
    )


def make_camera(cfg: CameraConfig, timeout_s: float = 1.0) -> CameraSource:
    """The profile's camera, started: frames are flowing when this returns a source."""
    validate_camera(cfg)
    kind = resolve_kind(cfg)
    if kind == "picamera2":
        grabber: Grabber = Picamera2Grabber(cfg)
        soft = (False, False, 90 if cfg.rotate in (90, 270) else 0)
    else:
        grabber = OpenCVGrabber(cfg, kind)
        soft = (cfg.flip_h, cfg.flip_v, cfg.rotate)
    pace = 1.0 / cfg.fps if kind == "file" else 0.0  # a file would race through in a blink
    return CameraSource(grabber, cfg, kind=kind, soft_orient=soft, pace_s=pace, timeout_s=timeout_s)
