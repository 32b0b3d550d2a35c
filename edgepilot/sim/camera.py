"""The car's camera: a pinhole looking down at a flat floor.

Because the floor is a plane, the map from floor coordinates to image pixels is one
3x3 homography per frame (``H = K [r1 r2 t]``): rendering is a single
``cv2.warpPerspective`` of a top-down texture, exact, with no meshes and no depth
buffer. Rows above the horizon see no floor; the renderer paints sky there.

Frames: world x, y on the floor, z up; the car at (x, y) heading ``yaw`` (radians,
counter-clockwise from +x). Camera axes in OpenCV's convention: x right, y down,
z forward along the optical axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class CameraSpec:
    """Defaults sit close to the wide-angle 160x120 camera of a DonkeyCar/HydraMini:
    about 20 cm above the floor, tipped down 20 degrees, 100 degrees across."""

    width: int = 160
    height: int = 120
    fov_deg: float = 100.0  # horizontal field of view
    height_m: float = 0.20  # lens above the floor
    pitch_deg: float = 20.0  # down from horizontal
    forward_m: float = 0.10  # lens ahead of the car's centre

    @property
    def fx(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.fov_deg) / 2)

    def K(self) -> np.ndarray:
        f = self.fx
        return np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1.0]])

    def horizon_row(self, pitch_deg: float | None = None) -> float:
        """Image row of the horizon (float; rows below it see the floor)."""
        p = math.radians(self.pitch_deg if pitch_deg is None else pitch_deg)
        return (self.height - 1) / 2 - self.fx * math.tan(p)

    def to_meta(self) -> dict[str, Any]:
        """What a driving log stores in ``SessionMeta.camera``."""
        return {**asdict(self), "model": "pinhole", "source": "sim"}


def floor_to_image(
    spec: CameraSpec,
    x: float,
    y: float,
    yaw: float,
    *,
    pitch_deg: float | None = None,
    height_m: float | None = None,
    roll_deg: float = 0.0,
) -> np.ndarray:
    """The homography taking floor points (X, Y, 1) to image pixels (u, v, 1) for a car
    at (x, y, yaw). ``pitch_deg``/``height_m``/``roll_deg`` override the spec (pose jitter)."""
    p = math.radians(spec.pitch_deg if pitch_deg is None else pitch_deg)
    h = spec.height_m if height_m is None else height_m
    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    f = np.array([cy_, sy_, 0.0])  # car forward
    left = np.array([-sy_, cy_, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    z = math.cos(p) * f - math.sin(p) * up
    yd = -math.sin(p) * f - math.cos(p) * up
    xr = -left
    if roll_deg:
        r = math.radians(roll_deg)
        xr, yd = math.cos(r) * xr + math.sin(r) * yd, -math.sin(r) * xr + math.cos(r) * yd
    Rm = np.stack([xr, yd, z])  # world -> camera rotation (rows are the camera axes)
    C = np.array([x + spec.forward_m * cy_, y + spec.forward_m * sy_, h])
    # camera coords of floor point P = (X, Y, 0): R (P - C) = X r1 + Y r2 - R C
    M = np.stack([Rm[:, 0], Rm[:, 1], -Rm @ C], axis=1)
    return spec.K() @ M


def project(H: np.ndarray, X: float, Y: float) -> tuple[float, float] | None:
    """Pixel (u, v) of floor point (X, Y), or None when it is behind the camera."""
    q = H @ np.array([X, Y, 1.0])
    if q[2] <= 1e-9:
        return None
    return float(q[0] / q[2]), float(q[1] / q[2])
