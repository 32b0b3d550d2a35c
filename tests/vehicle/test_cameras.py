"""Cameras (vehicle.cameras): the Pi Camera path against the picamera2 stand-in
(tests/standins: picamera2's API shape, frames from a test scene; everything from the frame
onwards -- byte order, orientation, resize, newest-frame hand-over, errors -- is the real code),
and the OpenCV path through real video files written with OpenCV."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.config import CameraConfig, GamepadConfig
from vehicle import cameras
from vehicle.cameras import make_camera, opencv_has_gstreamer, resolve_kind

STANDINS = Path(__file__).parents[1] / "standins"
ORIENTATIONS = [(h, v, r) for h in (False, True) for v in (False, True) for r in (0, 90, 180, 270)]


@pytest.fixture
def fresh_modules():
    """picamera2/libcamera imported afresh by the test and forgotten after it."""
    for name in ("picamera2", "libcamera"):
        sys.modules.pop(name, None)
    yield
    for name in ("picamera2", "libcamera"):
        sys.modules.pop(name, None)


def expected_view(scene: np.ndarray, flip_h: bool, flip_v: bool, rotate: int) -> np.ndarray:
    """What the car should see, by numpy (not by the code under test): mirror, then turn clockwise."""
    if flip_h:
        scene = scene[:, ::-1]
    if flip_v:
        scene = scene[::-1]
    return np.ascontiguousarray(np.rot90(scene, k=-(rotate // 90)))


def test_picamera2_configures_rgb888_at_the_profile_size_and_fps_and_hands_over_bgr(picam):
    cam = make_camera(CameraConfig(kind="picamera2", source="0", width=160, height=120, fps=50))
    try:
        f = cam.read()
        (dev,) = picam.INSTANCES
        cfg = dev.camera_config
        assert cfg["main"] == {"format": "RGB888", "size": (160, 120)}
        assert cfg["controls"]["FrameDurationLimits"] == (20000, 20000)
        assert cfg["queue"] is False
        assert f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8
        # BGR for the loop: blue holds the sensor's frame counter, green rises to the right,
        # red rises downwards -- a swapped byte order fails here
        n = int(f.image[0, 0, 0])
        assert np.array_equal(f.image, picam.render(n, (160, 120)))
        assert f.image[0, -1, 1] == 255 and f.image[-1, 0, 2] == 255 and f.image[0, 0, 1:].tolist() == [0, 0]
    finally:
        cam.close()
    assert not dev.is_open  # released: another program may open the camera now


@pytest.mark.parametrize(("flip_h", "flip_v", "rotate"), ORIENTATIONS)
def test_picamera2_orientation(picam, flip_h, flip_v, rotate):
    cfg = CameraConfig(
        kind="picamera2", width=64, height=48, fps=200, flip_h=flip_h, flip_v=flip_v, rotate=rotate
    )
    cam = make_camera(cfg)
    try:
        f = cam.read()
    finally:
        cam.close()
    sensor = (48, 64) if rotate in (90, 270) else (64, 48)  # a quarter turn is done after the sensor
    assert picam.INSTANCES[0].camera_config["main"]["size"] == sensor
    assert f.image.shape == (48, 64, 3)
    assert np.array_equal(
        f.image, expected_view(picam.render(int(f.image[0, 0, 0]), sensor), flip_h, flip_v, rotate)
    )


def test_picamera2_hands_over_only_the_newest_frame(picam):
    cam = make_camera(CameraConfig(kind="picamera2", width=32, height=24, fps=300))
    got, newest_ok = [], []
    try:
        for _ in range(30):
            time.sleep(0.01)  # a slow loop: the capture thread runs ahead
            before = cam.frames
            f = cam.read()
            newest_ok.append(f.index >= before - 1)
            got.append((f.index, int(f.image[0, 0, 0])))
    finally:
        cam.close()
    idx = [i for i, _ in got]
    assert idx == sorted(set(idx))  # strictly newer each time, never one twice
    assert all(newest_ok)  # the newest at the time of asking, not the oldest in a queue
    assert all((b - a) % 256 >= 1 for (_, a), (_, b) in zip(got, got[1:], strict=False))
    assert cam.dropped > 0
    assert cam.frames - len(got) - cam.dropped in (0, 1)  # every frame served, dropped, or the last one


def test_picamera2_that_stops_delivering_is_an_error_not_an_end(picam, monkeypatch):
    monkeypatch.setattr(cameras, "START_TIMEOUT_S", 0.6)  # the capture thread's own give-up
    cam = make_camera(CameraConfig(kind="picamera2", width=32, height=24, fps=100), timeout_s=0.3)
    try:
        assert cam.read() is not None
        picam.INSTANCES[0].stall()
        with pytest.raises(EdgepilotError, match=r"camera picamera2 '0': no frame for 0.3 s"):
            for _ in range(100):
                cam.read()
        errors = []
        for _ in range(20):  # then the thread gives the camera up, and every read says why
            with pytest.raises(EdgepilotError) as e:
                cam.read()
            errors.append(str(e.value))
            if "stopped delivering" in errors[-1]:
                break
        assert errors[-1] == "camera picamera2 '0' stopped delivering frames: no frame within 0.6 s"
    finally:
        cam.close()


def test_picamera2_no_camera_and_busy_camera_say_so(picam, monkeypatch):
    first = make_camera(CameraConfig(kind="picamera2"))
    try:
        with pytest.raises(EdgepilotError, match="did not open .*Device or resource busy.*another program"):
            make_camera(CameraConfig(kind="picamera2"))
    finally:
        first.close()
    make_camera(CameraConfig(kind="picamera2")).close()  # released by close()
    monkeypatch.setattr(picam, "CAMERAS", [])
    with pytest.raises(EdgepilotError, match=r"number 0 not found; libcamera sees 0 camera\(s\).*ribbon"):
        make_camera(CameraConfig(kind="picamera2"))
    with pytest.raises(EdgepilotError, match="not a Pi Camera number"):
        make_camera(CameraConfig(kind="picamera2", source="/dev/video0"))


def test_picamera2_missing_says_apt_and_system_site_packages(monkeypatch, tmp_path, fresh_modules):
    with pytest.raises(EdgepilotError) as e:
        make_camera(CameraConfig(kind="picamera2"))
    msg = str(e.value)
    assert "cannot import libcamera" in msg and "sudo apt install python3-picamera2 python3-libcamera" in msg
    assert "--system-site-packages" in msg and "launch/car-setup" in msg
    # installed by apt, but a venv that cannot see it: say exactly that
    (tmp_path / "picamera2").mkdir()
    venv_cfg = tmp_path / "venv"
    venv_cfg.mkdir()
    (venv_cfg / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    monkeypatch.setattr(sys, "prefix", str(venv_cfg))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    msg = cameras._picamera2_missing("picamera2", apt_dir=tmp_path)
    assert "installed from apt" in msg and "made without --system-site-packages" in msg


def test_picamera2_broken_by_numpy_abi_says_how_to_fix(monkeypatch, tmp_path, fresh_modules):
    """The real failure on Bookworm when pip put numpy 2 in the venv: apt's simplejpeg raises on import."""
    pkg = tmp_path / "picamera2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n"
    )
    monkeypatch.syspath_prepend(str(STANDINS))  # libcamera imports
    monkeypatch.syspath_prepend(str(tmp_path))  # picamera2 is found here first
    with pytest.raises(
        EdgepilotError, match=r"does not import \(numpy.dtype size changed.*pip install simplejpeg"
    ):
        make_camera(CameraConfig(kind="picamera2"))


# -- OpenCV: files (real videos written with OpenCV), V4L2, GStreamer -------------------------


def scene_video(path: Path, n: int, size: tuple[int, int], fourcc: str = "FFV1") -> list[np.ndarray]:
    """A lossless video whose frame i has B = i, G rising to the right, R rising downwards."""
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (w, h))
    assert vw.isOpened()
    frames = []
    for i in range(n):
        img = np.empty((h, w, 3), np.uint8)
        img[:, :, 0] = i
        img[:, :, 1] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
        img[:, :, 2] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
        vw.write(img)
        frames.append(img)
    vw.release()
    return frames


@pytest.mark.parametrize(("flip_h", "flip_v", "rotate"), ORIENTATIONS)
def test_file_camera_orientation_matches_the_pi_camera_convention(tmp_path, flip_h, flip_v, rotate):
    size = (48, 64) if rotate in (90, 270) else (64, 48)
    frames = scene_video(tmp_path / "v.avi", 3, size)
    cfg = CameraConfig(kind="file", source=str(tmp_path / "v.avi"), width=64, height=48, fps=1000)
    cam = make_camera(replace(cfg, flip_h=flip_h, flip_v=flip_v, rotate=rotate))
    try:
        f = cam.read()
    finally:
        cam.close()
    assert np.array_equal(f.image, expected_view(frames[int(f.image[0, 0, 0])], flip_h, flip_v, rotate))


def test_file_camera_resizes_paces_and_ends(tmp_path):
    path = tmp_path / "cam.avi"
    scene_video(path, 12, (320, 240), fourcc="MJPG")
    for kind in ("file", "auto"):
        cam = make_camera(CameraConfig(kind=kind, source=str(path), width=160, height=120, fps=50))
        assert cam.kind == "file"
        t0 = time.monotonic()
        got = []
        while (f := cam.read()) is not None:
            assert f.image.shape == (120, 160, 3)
            got.append(f.index)
        took = time.monotonic() - t0
        cam.close()
        assert got == sorted(set(got)) and len(got) + cam.dropped == 12
        assert took >= 11 / 50  # played at the camera's rate: 11 intervals of 20 ms at least


def test_v4l2_camera_that_does_not_open_says_so():
    with pytest.raises(EdgepilotError, match=r"'/dev/video99' \(v4l2\) did not open .*v4l2-ctl"):
        make_camera(CameraConfig(kind="v4l2", source="/dev/video99"))
    with pytest.raises(EdgepilotError, match="is not a video file"):
        make_camera(CameraConfig(kind="file", source="/nonexistent/video.avi"))


def test_gstreamer_only_where_opencv_has_it(tmp_path):
    yes = (
        "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.22.0)\n"
    )
    no = "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   NO\n"
    assert opencv_has_gstreamer(yes) and not opencv_has_gstreamer(no) and not opencv_has_gstreamer("")
    pipeline = "videotestsrc num-buffers=5 ! videoconvert ! video/x-raw,format=BGR ! appsink"
    assert resolve_kind(CameraConfig(source=pipeline)) == "gstreamer"
    if opencv_has_gstreamer():  # an OpenCV built with GStreamer (Debian's python3-opencv)
        cam = make_camera(CameraConfig(source=pipeline, width=32, height=24))
        assert cam.read().image.shape == (24, 32, 3)
        cam.close()
        return
    with pytest.raises(EdgepilotError) as e:
        make_camera(CameraConfig(source=pipeline))
    msg = str(e.value)
    assert "\n" not in msg and "built without GStreamer" in msg and 'kind = "picamera2"' in msg


def test_auto_kind_and_bad_settings(tmp_path):
    video = tmp_path / "v.avi"
    scene_video(video, 1, (32, 24))
    assert resolve_kind(CameraConfig(source=str(video))) == "file"
    assert resolve_kind(CameraConfig(source="0")) == "v4l2"
    assert resolve_kind(CameraConfig(kind="picamera2", source="0")) == "picamera2"
    with pytest.raises(EdgepilotError, match=r"camera.rotate: 45 is not one of 0, 90, 180, 270"):
        make_camera(CameraConfig(rotate=45))
    with pytest.raises(EdgepilotError, match="camera.kind: unknown kind 'csi'"):
        make_camera(CameraConfig(kind="csi"))
    with pytest.raises(EdgepilotError, match="camera.fps: must be > 0"):
        make_camera(CameraConfig(fps=0))


@pytest.mark.parametrize("kind", ["v4l2", "file", "gstreamer"])
def test_a_camera_that_needs_opencv_says_which_extra_brings_it(kind, monkeypatch, tmp_path):
    """The car's install has no OpenCV: these kinds fail with one line naming the extra."""
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError, as without it
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    source = {"v4l2": "0", "file": str(video), "gstreamer": "videotestsrc ! appsink"}[kind]
    with pytest.raises(EdgepilotError, match=r"edgepilot\[car,opencv\]"):
        make_camera(CameraConfig(kind=kind, source=source, width=160, height=120, fps=20))


def test_the_gamepad_without_pygame_says_which_extra_brings_it(monkeypatch):
    from vehicle.gamepad import GamepadUser

    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(EdgepilotError, match=r"edgepilot\[car,gamepad\]"):
        GamepadUser(GamepadConfig())
