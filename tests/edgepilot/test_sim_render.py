"""Geometry of the rendered camera view, and the scene ranges of the contract."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edgepilot.sim.camera import CameraSpec, floor_to_image, project
from edgepilot.sim.render import Look, Renderer
from edgepilot.sim.tracks import load_track


@pytest.fixture(scope="module")
def straight():
    """A car on the middle of the 14 m straight of long_straights, heading along it."""
    t = load_track("long_straights")
    k = np.abs(t.curvature()) < 1e-3
    # the index in the middle of the longest straight run
    best, run, end = 0, 0, 0
    for i, flat in enumerate(k):
        run = run + 1 if flat else 0
        if run > best:
            best, end = run, i
    i = end - best // 2
    return t, i


def test_centerline_point_ahead_lands_on_the_vertical_centre_line(straight):
    t, i = straight
    spec = CameraSpec()
    x, y = t.pts[i]
    yaw = t.heading(i)
    H = floor_to_image(spec, x, y, yaw)
    horizon = spec.horizon_row()
    prev_v = math.inf
    for ahead_m in (0.6, 1.0, 2.0, 4.0):
        u, v = project(H, *t.pts[i + int(ahead_m / 0.05)])
        assert u == pytest.approx((spec.width - 1) / 2, abs=0.5)
        assert horizon < v < spec.height
        assert v < prev_v  # farther is higher, toward the horizon
        prev_v = v
    assert project(H, *(t.pts[i] - 2 * t.tangent[i])) is None  # behind the camera


def test_marker_on_the_floor_is_drawn_where_the_camera_projects_it(straight):
    """Paint a red disc into the floor texture 1.5 m ahead; find it in the rendered image."""
    t, i = straight
    r = Renderer(t)
    sc = r._scene
    p = t.pts[i + 30]
    col, row, _ = np.linalg.inv(sc.A) @ np.array([p[0], p[1], 1.0])
    cv2.circle(sc.tex, (int(round(col)), int(round(row))), 6, (0, 0, 255), -1)
    img = r.render(*t.pts[i], t.heading(i)).astype(int)
    red = (img[..., 2] > 180) & (img[..., 1] < 90) & (img[..., 0] < 90)
    assert red.sum() > 3
    vs, us = np.nonzero(red)
    u, v = project(floor_to_image(r.spec, *t.pts[i], t.heading(i)), *p)
    assert us.mean() == pytest.approx(u, abs=1.0)
    assert vs.mean() == pytest.approx(v, abs=1.5)
    assert abs(u - (r.spec.width - 1) / 2) < 0.5 and v > r.spec.horizon_row()


def _edge_lines(img: np.ndarray, row: int) -> tuple[float, float]:
    """Columns of the white edge lines in one row (centre of the bright pixels each side)."""
    px = img[row].astype(int)
    white = (px.min(axis=1) > 170) & (np.ptp(px, axis=1) < 40)
    cols = np.nonzero(white)[0]
    mid = (img.shape[1] - 1) / 2
    left, right = cols[cols < mid], cols[cols > mid]
    assert len(left) and len(right), f"no edge lines in row {row}"
    return float(left.mean()), float(right.mean())


def test_lane_lines_converge_toward_the_horizon(straight):
    t, i = straight
    r = Renderer(t)
    img = r.render(*t.pts[i], t.heading(i))
    horizon = r.spec.horizon_row()
    rows = [66, 58, 50, 44, int(horizon) + 4]  # lower rows see only road: the lines are outside
    gaps = []
    for row in rows:
        left, right = _edge_lines(img, row)
        assert left < (r.spec.width - 1) / 2 < right
        assert (left + right) / 2 == pytest.approx((r.spec.width - 1) / 2, abs=2.0)  # centred car
        gaps.append(right - left)
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    # the lines meet near the horizon: extrapolate the gap linearly in the row
    slope = (gaps[0] - gaps[2]) / (rows[0] - rows[2])
    vanish = rows[0] - gaps[0] / slope
    assert vanish == pytest.approx(horizon, abs=3.0)


def test_sky_above_the_horizon_and_floor_below(straight):
    t, i = straight
    r = Renderer(t)
    img = r.render(*t.pts[i], t.heading(i))
    h = int(r.spec.horizon_row())
    sky = img[: h - 1].reshape(-1, 3).astype(float)
    assert sky.std(axis=0).max() < 12  # a smooth gradient, no floor texture
    assert img[h + 5 :].reshape(-1, 3).astype(float).std(axis=0).max() > 20  # road, lines, ground
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8


def test_scene_seeds_cover_the_contract_ranges():
    looks = [Look.from_seed(s) for s in range(1, 200)]
    assert Look.from_seed(0) == Look()
    b = [lk.brightness for lk in looks]
    assert 0.5 <= min(b) < 0.6 and 1.4 < max(b) <= 1.5
    cast = np.array([lk.cast for lk in looks])
    assert cast.min() >= -25 and cast.max() <= 25 and cast.min() < -20 and cast.max() > 20
    gains = [lk.shadow_gain for lk in looks]
    assert min(gains) >= 0.5 and max(gains) <= 0.7
    assert max(lk.noise_sigma for lk in looks) <= 8 and max(lk.noise_sigma for lk in looks) > 7
    assert len({lk.palette for lk in looks}) >= 4  # other ground/road/line textures
    assert sum(lk.shadows > 0 for lk in looks) > 150


def test_scene_seed_changes_the_look_and_is_reproducible():
    t = load_track("oval")
    pose = (*t.pts[50], t.heading(50))
    plain = Renderer(t).render(*pose)
    a = Renderer(t, scene_seed=7).render(*pose)
    b = Renderer(t, scene_seed=7).render(*pose)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - plain.astype(int)).mean() > 5
    look = Look.from_seed(7)
    ratio = a[60:].mean() / plain[60:].mean()
    assert ratio == pytest.approx(look.brightness, rel=0.35)  # brightness dominates the change


def test_randomize_varies_frames_of_one_pose():
    t = load_track("oval")
    r = Renderer(t, randomize=True, seed=3, segment_s=1.0)
    pose = (*t.pts[50], t.heading(50))
    frames = [r.render(*pose, t=float(k), frame=k) for k in range(4)]
    diffs = [np.abs(frames[k].astype(int) - frames[k + 1].astype(int)).mean() for k in range(3)]
    assert min(diffs) > 2
