"""Seeded random closed tracks with two guarantees: a minimum curve radius, and a road
that never overlaps itself.

The centerline is a polar curve r(theta) = R0 * (1 + sum_k a_k cos(k theta + phi_k)):
with r > 0 everywhere a polar graph cannot cross itself, and its derivatives are
analytic, so the curvature is exact rather than estimated from points. The whole
curve is then scaled up until its tightest bend has the requested radius (radius
scales linearly with size). Finally the road is checked for near-misses between parts
of the loop that are far apart along it; a seed that fails is redrawn from a derived
seed, so the same seed always gives the same track.
"""

from __future__ import annotations

import math

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.sim.tracks import Track, resample_closed

MARGIN_M = 0.4
"""Clearance kept between the edges of two different parts of the road."""


def generate_track(
    seed: int,
    *,
    width_m: float = 1.2,
    min_radius_m: float = 2.0,
    size_m: float = 8.0,
    name: str | None = None,
    attempts: int = 50,
) -> Track:
    """A random closed track from ``seed``; same seed, same track."""
    if min_radius_m < width_m / 2:
        raise EdgepilotError(f"min_radius_m must be >= width_m / 2 ({width_m / 2} m)")
    for attempt in range(attempts):
        rng = np.random.default_rng([seed, attempt])
        pts = _polar_curve(rng, size_m, min_radius_m)
        if not overlaps(pts, width_m):
            c = resample_closed(pts, 0.1)
            return Track(name=name or f"gen-{seed}", width_m=width_m, centerline=c)
    raise EdgepilotError(f"seed {seed}: no valid track in {attempts} attempts")


def _polar_curve(rng: np.random.Generator, size_m: float, min_radius_m: float) -> np.ndarray:
    n = 4096
    th = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ks = np.arange(2, 6)
    amp = rng.uniform(0, 1, len(ks)) * np.array([0.25, 0.15, 0.08, 0.05])
    amp *= min(1.0, 0.45 / max(amp.sum(), 1e-9))  # keep r > 0.55 R0: a star-shaped loop
    phase = rng.uniform(0, 2 * math.pi, len(ks))
    r0 = size_m * rng.uniform(0.7, 1.3)
    # r and its first two derivatives in theta
    arg = ks[:, None] * th[None, :] + phase[:, None]
    r = r0 * (1 + (amp[:, None] * np.cos(arg)).sum(0))
    dr = r0 * (-(amp * ks)[:, None] * np.sin(arg)).sum(0)
    ddr = r0 * (-(amp * ks**2)[:, None] * np.cos(arg)).sum(0)
    # curvature of a polar curve
    kappa = (r**2 + 2 * dr**2 - r * ddr) / np.power(r**2 + dr**2, 1.5)
    scale = max(1.0, min_radius_m * float(np.abs(kappa).max()) * 1.001)
    r = r * scale
    xy = np.stack([r * np.cos(th), r * np.sin(th)], axis=1)
    return xy - xy.mean(axis=0)


def overlaps(pts: np.ndarray, width_m: float, margin_m: float = MARGIN_M) -> bool:
    """True when two parts of the closed centerline far apart along the loop come closer
    than ``width_m + margin_m`` in the plane (the road would touch itself).

    "Far apart along the loop" is an arc length over pi/2 times that clearance: nearer
    pairs are neighbours on one bend, whose chord is short by geometry, not overlap."""
    clear = width_m + margin_m
    p = resample_closed(pts, 0.1)
    n = len(p)
    s = np.arange(n) * (float(np.hypot(*np.diff(np.vstack([p, p[:1]]), axis=0).T).sum()) / n)
    total = s[-1] + s[1]
    min_sep = clear * math.pi / 2
    for i in range(0, n, 2):
        d = np.hypot(p[:, 0] - p[i, 0], p[:, 1] - p[i, 1])
        ds = np.abs(s - s[i])
        ds = np.minimum(ds, total - ds)
        if np.any((ds > min_sep) & (d < clear)):
            return True
    return False
