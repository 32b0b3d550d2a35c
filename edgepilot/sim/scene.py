"""The look of the simulated world: the floor texture (ground, road, lines, shadows),
the sky, and the lighting/sensor knobs the contract's ``--scene-seed`` draws from.

Painting a floor is the expensive, once-per-look part (~0.1-0.5 s); ``render.Renderer``
reuses the result for every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from edgepilot.sim.camera import CameraSpec
from edgepilot.sim.tracks import Track

RES_M = 0.02
"""Floor texture resolution: a 5 cm edge line is 2.5 texels."""
MAX_TEXELS = 2600
"""Longest texture side; a bigger track gets a coarser texture instead of gigabytes."""
PAD_M = 8.0
"""Floor painted around the track's bounding box; beyond it the floor is a flat colour."""

BGR = tuple[int, int, int]


class Palette(NamedTuple):
    """The colours of one look (BGR); a contrast is the texture's amplitude (of 255)."""

    name: str
    ground: BGR
    ground_contrast: float
    road: BGR
    road_contrast: float
    edge_line: BGR
    centre_line: BGR
    sky_top: BGR
    sky_bottom: BGR


# fmt: off
PALETTES = [  # a table: one look a row
    Palette("lab-carpet", (92, 96, 100), 10, (58, 58, 60), 6, (235, 235, 235), (40, 200, 230), (205, 190, 170), (225, 220, 210)),  # noqa: E501
    Palette("grass", (60, 125, 70), 22, (70, 70, 72), 8, (240, 240, 240), (240, 240, 240), (230, 180, 120), (240, 220, 200)),  # noqa: E501
    Palette("concrete", (170, 172, 168), 14, (90, 90, 95), 8, (250, 250, 250), (30, 190, 235), (220, 200, 180), (235, 230, 225)),  # noqa: E501
    Palette("dirt", (70, 105, 140), 18, (55, 55, 55), 5, (210, 220, 225), (210, 220, 225), (210, 170, 130), (230, 210, 190)),  # noqa: E501
    Palette("wood-floor", (80, 130, 170), 16, (40, 40, 42), 4, (220, 230, 235), (60, 160, 220), (190, 195, 200), (215, 215, 215)),  # noqa: E501
    Palette("blue-mat", (140, 95, 60), 8, (45, 45, 45), 5, (245, 245, 245), (0, 215, 255), (200, 200, 200), (230, 230, 230)),  # noqa: E501
]
# fmt: on


@dataclass
class Look:
    """How the world looks: textures, lighting, sensor. The contract's scene ranges."""

    palette: int = 0
    texture_seed: int = 0
    brightness: float = 1.0  # x0.5 .. x1.5
    cast: tuple[float, float, float] = (0.0, 0.0, 0.0)  # BGR offset, +-25 each
    shadows: int = 0  # number of cast-shadow patches
    shadow_gain: float = 0.6  # x0.5 .. x0.7 inside a shadow
    noise_sigma: float = 0.0  # 0 .. 8 (out of 255)
    dash_m: float = 0.3  # centre line dash (and gap) length
    line_w_m: float = 0.05

    @classmethod
    def from_seed(cls, scene_seed: int) -> Look:
        """The scoring scene of ``scene_seed``; 0 is the plain look."""
        if scene_seed == 0:
            return cls()
        rng = np.random.default_rng([0x5CE0E, scene_seed])
        return cls(
            palette=int(rng.integers(len(PALETTES))),
            texture_seed=int(rng.integers(1 << 30)),
            brightness=float(rng.uniform(0.5, 1.5)),
            cast=tuple(float(c) for c in rng.uniform(-25, 25, 3)),
            shadows=int(rng.integers(0, 25)),
            shadow_gain=float(rng.uniform(0.5, 0.7)),
            noise_sigma=float(rng.uniform(0, 8)),
            dash_m=float(rng.uniform(0.15, 0.5)),
            line_w_m=float(rng.uniform(0.03, 0.07)),
        )

    def lut(self) -> np.ndarray:
        """The (1, 256, 3) table applying brightness and colour cast in one cv2.LUT."""
        v = np.arange(256, dtype=np.float32)[:, None] * self.brightness + np.array(self.cast, np.float32)
        return np.clip(np.rint(v), 0, 255).astype(np.uint8)[None]

    @property
    def plain_light(self) -> bool:
        return self.brightness == 1.0 and self.cast == (0.0, 0.0, 0.0)


def _blotches(rng: np.random.Generator, shape: tuple[int, int], scale_px: int) -> np.ndarray:
    """Smooth random field in [-1, 1]: coarse noise upsampled (cheap Perlin-like texture)."""
    h, w = shape
    small = rng.standard_normal((max(2, h // scale_px), max(2, w // scale_px))).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(big / 2.0, -1, 1)


@dataclass(frozen=True)
class _Texels:
    """The floor texture's grid: ``res`` metres a texel, (``x0``, ``y1``) its top-left corner."""

    x0: float
    y1: float
    res: float
    w: int
    h: int

    @classmethod
    def around(cls, track: Track) -> _Texels:
        x0, y0, x1, y1 = track.bounds(PAD_M)
        res = max(RES_M, max(x1 - x0, y1 - y0) / MAX_TEXELS)
        return cls(x0, y1, res, int(math.ceil((x1 - x0) / res)), int(math.ceil((y1 - y0) / res)))

    @property
    def affine(self) -> np.ndarray:
        """Texel (col, row) -> world."""
        return np.array([[self.res, 0, self.x0], [0, -self.res, self.y1], [0, 0, 1.0]])

    def px(self, pts: np.ndarray) -> np.ndarray:
        """World metres -> fixed-point texel coordinates (cv2 shift=4) for sub-texel lines."""
        col = (pts[:, 0] - self.x0) / self.res
        row = (self.y1 - pts[:, 1]) / self.res
        return np.rint(np.stack([col, row], axis=1) * 16).astype(np.int32)

    def blank(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def shade(self, rng: np.random.Generator, base: BGR, contrast: float, scale_px: int) -> np.ndarray:
        """A float image of ``base`` with blotches and grain of ``contrast``."""
        f = _blotches(rng, (self.h, self.w), scale_px) * contrast
        f += rng.standard_normal((self.h, self.w)).astype(np.float32) * (contrast * 0.4)
        img = np.empty((self.h, self.w, 3), np.float32)
        for c in range(3):
            img[..., c] = base[c] + f
        return img


def paint_floor(track: Track, look: Look) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The floor texture, its texel->world affine (3x3) and the colour beyond its border."""
    grid = _Texels.around(track)
    pal = PALETTES[look.palette % len(PALETTES)]
    rng = np.random.default_rng([0x7E27, look.texture_seed])
    floor = grid.shade(rng, pal.ground, pal.ground_contrast, int(rng.integers(8, 40)))
    road_tex = grid.shade(rng, pal.road, pal.road_contrast, int(rng.integers(4, 20)))
    road = grid.blank()
    cv2.polylines(
        road, [grid.px(track.pts)], True, 255, max(1, int(round(track.width_m / grid.res))), cv2.LINE_AA, 4
    )
    img = _blend(floor, road, road_tex)
    normal = np.stack([-track.tangent[:, 1], track.tangent[:, 0]], axis=1)
    lines, dashes = _line_masks(grid, track, look, normal)
    img = _blend(img, lines, np.array(pal.edge_line, np.float32))
    img = _blend(img, dashes, np.array(pal.centre_line, np.float32))
    if look.shadows:
        s = (_shadow_mask(grid, track, look, normal, rng).astype(np.float32) / 255)[..., None]
        img = img * (1 - s * (1 - look.shadow_gain))
    tex = np.clip(img, 0, 255).astype(np.uint8)
    return tex, grid.affine, tuple(int(v) for v in pal.ground)


def _blend(under: np.ndarray, mask: np.ndarray, over: np.ndarray) -> np.ndarray:
    """``over`` painted on ``under`` where the 8-bit ``mask`` says (anti-aliased edges)."""
    a = (mask.astype(np.float32) / 255)[..., None]
    return under * (1 - a) + over * a


def _line_masks(grid: _Texels, track: Track, look: Look, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two edge lines and the dashed centre line, as 8-bit masks."""
    lw = max(1, int(round(look.line_w_m / grid.res)))
    lines = grid.blank()
    off = track.width_m / 2 - look.line_w_m
    for side in (1, -1):
        cv2.polylines(lines, [grid.px(track.pts + side * off * normal)], True, 255, lw, cv2.LINE_AA, 4)
    dashes = grid.blank()
    on = (track.s // look.dash_m).astype(int) % 2 == 0
    for start, end in _runs(on):
        cv2.polylines(dashes, [grid.px(track.pts[start : end + 1])], False, 255, lw, cv2.LINE_AA, 4)
    return lines, dashes


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in ``on``."""
    runs = []
    start, n = 0, len(on)
    while start < n:
        if on[start]:
            end = start
            while end + 1 < n and on[end + 1]:
                end += 1
            runs.append((start, end))
            start = end + 1
        else:
            start += 1
    return runs


def _shadow_mask(
    grid: _Texels, track: Track, look: Look, normal: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Soft-edged cast shadows: a tree or a table leg near the road, each an ellipse within
    a few metres of it."""
    shadow = grid.blank()
    for _ in range(look.shadows):
        i = int(rng.integers(len(track.pts)))
        cx, cy = track.pts[i] + normal[i] * rng.uniform(-2.5, 2.5)
        c = grid.px(np.array([[cx, cy]]))[0]
        axes = (int(rng.uniform(0.2, 1.2) / grid.res * 16), int(rng.uniform(0.2, 1.2) / grid.res * 16))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(shadow, tuple(int(v) for v in c), axes, angle, 0, 360, 255, -1, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(shadow, (0, 0), 0.05 / grid.res)


def sky_image(spec: CameraSpec, look: Look) -> np.ndarray:
    pal = PALETTES[look.palette % len(PALETTES)]
    top, bottom = pal.sky_top, pal.sky_bottom
    a = np.linspace(0, 1, spec.height, dtype=np.float32)[:, None, None]
    sky = np.array(top, np.float32) * (1 - a) + np.array(bottom, np.float32) * a
    return np.ascontiguousarray(np.broadcast_to(np.rint(sky), (spec.height, spec.width, 3)), dtype=np.uint8)
