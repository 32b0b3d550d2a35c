"""Training-time augmentation of camera frames (BGR uint8) and their steering labels.

What each one is for:

- brightness and colour cast: the scene's light changes (the contract's scenes draw
  brightness x0.5-1.5 and a cast of +-25/255 per channel);
- shadows: dark patches (x0.5-0.7) across road and ground, like cast shadows;
- sensor noise: Gaussian, sigma up to 8/255;
- lateral shift *with steering correction*: shows the net the car off-centre and the
  steering that brings it back (the recovery data an expert rarely records). The frame is
  sheared about the horizon row: a floor point's image shift for a sideways camera move
  is proportional to its depth's inverse, i.e. to its distance below the horizon;
- horizontal flip with negated steering: balances left and right curves.

All draws come from the ``rng`` passed in, so a seeded run is reproducible.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    p_flip: float = 0.5
    p_shift: float = 0.5
    max_shift_px: float = 24.0  # at the bottom row, 160-pixel-wide frame
    shift_gain: float = 1.0  # steering change per (shift / width)
    horizon: float = 0.3  # horizon row as a fraction of the height (the sim camera: ~0.29)
    p_light: float = 0.8
    brightness: tuple[float, float] = (0.5, 1.5)
    cast: float = 25.0
    p_shadow: float = 0.5
    shadow: tuple[float, float] = (0.5, 0.7)
    p_noise: float = 0.5
    noise_sigma: float = 8.0


def flip(frame: np.ndarray, steering: float) -> tuple[np.ndarray, float]:
    return cv2.flip(frame, 1), -steering  # the bytes of frame[:, ::-1], ~20x faster to copy


@functools.cache
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices (1 x w) and the row map (h x w) of a frame size, made once."""
    return np.arange(w, dtype=np.float32)[None, :], np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)


def lateral_shift(
    frame: np.ndarray, steering: float, shift_px: float, cfg: AugmentConfig
) -> tuple[np.ndarray, float]:
    """Shear so the bottom row moves ``shift_px`` and the horizon stays; correct steering.

    Shifting the image right means the road moved right: the car sits left of where it
    was, so it must steer right (positive) more."""
    h, w = frame.shape[:2]
    v0 = cfg.horizon * h
    k = shift_px / max(h - 1 - v0, 1.0)
    rows = np.maximum(np.arange(h, dtype=np.float32) - v0, 0.0) * k  # nothing moves above the horizon
    cols, map_y = _grid(h, w)
    out = cv2.remap(frame, cols - rows[:, None], map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, float(np.clip(steering + cfg.shift_gain * shift_px / w, -1.0, 1.0))


def _lut(table: np.ndarray) -> np.ndarray:
    """A 256-entry table (per channel when it has 3 columns) clipped to uint8, for cv2.LUT:
    each pixel then costs a lookup instead of float arithmetic on the whole frame."""
    return np.clip(table, 0, 255).astype(np.uint8).reshape(256, 1, -1)


def light(frame: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    gain = rng.uniform(*cfg.brightness)
    cast = rng.uniform(-cfg.cast, cfg.cast, size=3)
    # the bytes of clip(frame * gain + cast), a fifth of the time
    return cv2.LUT(frame, _lut(np.arange(256, dtype=np.float32)[:, None] * gain + cast))


def shadow(frame: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A random quadrilateral darkened to x0.5-0.7."""
    h, w = frame.shape[:2]
    cx, cy = rng.uniform(0, w), rng.uniform(h * cfg.horizon, h)
    r = rng.uniform(0.15, 0.5) * w
    ang = np.sort(rng.uniform(0, 2 * np.pi, 4))
    pts = np.stack([cx + r * np.cos(ang), cy + 0.6 * r * np.sin(ang)], 1).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, pts, 1)
    factor = rng.uniform(*cfg.shadow)
    dark = cv2.LUT(frame, _lut(np.arange(256, dtype=np.float32) * factor))
    return cv2.copyTo(dark, mask, frame.copy())


def noise(frame: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Gaussian, sigma drawn up to ``noise_sigma``: drawn by OpenCV (seeded from ``rng``),
    4x faster than numpy's normal, which took most of a training frame's augmentation."""
    sigma = rng.uniform(0, cfg.noise_sigma)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    n = np.empty(frame.shape, np.float32)
    cv2.randn(n, 0.0, (sigma,) * frame.shape[2] if frame.ndim == 3 else sigma)
    return np.clip(frame + n, 0, 255).astype(np.uint8)


def augment(
    frame: np.ndarray, steering: float, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, float]:
    """One random draw of every augmentation (each with its probability)."""
    if rng.random() < cfg.p_shift:
        frame, steering = lateral_shift(frame, steering, rng.uniform(-1, 1) * cfg.max_shift_px, cfg)
    if rng.random() < cfg.p_flip:
        frame, steering = flip(frame, steering)
    if rng.random() < cfg.p_shadow:
        frame = shadow(frame, rng, cfg)
    if rng.random() < cfg.p_light:
        frame = light(frame, rng, cfg)
    if rng.random() < cfg.p_noise:
        frame = noise(frame, rng, cfg)
    return frame, steering
