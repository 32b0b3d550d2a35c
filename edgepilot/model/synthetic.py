"""Synthetic driving logs for tests: a bright road band whose position and angle encode
the steering label. Not a driving simulator (``edgepilot.sim`` is): it is a learnable,
cheap, fully known mapping from pixels to labels, so a test can check that training
*learns* in seconds (MAE far below the label spread) without the simulator."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edgepilot.drivelog import LogWriter
from edgepilot.schema.log import Record, SessionMeta


def road_frame(steering: float, rng: np.random.Generator, w: int = 160, h: int = 120) -> np.ndarray:
    """Ground, a road band that leans with ``steering`` (road bends right -> steer right)."""
    ground = rng.integers(40, 90)
    img = np.full((h, w, 3), (ground, ground + 20, ground), np.uint8)
    img[: int(0.3 * h)] = (200, 170, 140)  # sky
    bottom = w / 2 - steering * 30
    top = w / 2 + steering * 70
    y0 = int(0.3 * h)
    pts = np.array([[bottom - 45, h - 1], [bottom + 45, h - 1], [top + 8, y0], [top - 8, y0]], np.int32)
    road = int(rng.integers(150, 220))
    cv2.fillConvexPoly(img, pts, (road, road, road))
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_synthetic_log(
    path: str | Path, frames: int = 120, seed: int = 0, session: str | None = None
) -> Path:
    """A driving log of ``frames`` labelled road frames; steering follows a smooth wave."""
    rng = np.random.default_rng(seed)
    meta = SessionMeta(
        session=session or f"synthetic-{seed}", created=time.time(), source="sim", notes={"synthetic": True}
    )
    phase = rng.uniform(0, 2 * np.pi)
    with LogWriter(path, meta, block=True) as lw:
        for i in range(frames):
            s = float(np.clip(0.8 * np.sin(phase + i * 0.13) + rng.normal(0, 0.03), -1, 1))
            lw.write(Record(i=i, t=i * 0.05, steering=s, throttle=0.5 - 0.2 * abs(s)), road_frame(s, rng))
    return Path(path)
