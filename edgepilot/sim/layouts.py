"""The shipped tracks, drawn with a turtle of straights and arcs.

Exact straights and circular arcs make the hairpin radii and straight lengths what the
name says. ``python -m edgepilot.sim.layouts`` rewrites ``datasets/tracks/*.json``;
the files are the source of truth afterwards (they are the contract's format, and
users add their own next to them).

Most layouts use one closing trick: a piece ``seq`` whose net heading change is zero,
then a 180-degree left turn, ``seq`` again, and another equal 180-degree turn. The
second half is the first rotated by 180 degrees about the centre, so the loop closes
exactly whatever ``seq`` holds.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from edgepilot.sim.generator import generate_track, overlaps
from edgepilot.sim.tracks import TRACKS_DIR, Track, save_track

Piece = tuple[str, float, float]  # ("S", length, 0) | ("L"/"R", degrees, radius)


def S(length: float) -> Piece:
    return ("S", length, 0.0)


def L(deg: float, r: float) -> Piece:
    return ("L", deg, r)


def R(deg: float, r: float) -> Piece:
    return ("R", deg, r)


def turtle(pieces: list[Piece], step: float = 0.05) -> np.ndarray:
    """The centerline traced by ``pieces`` from (0, 0) heading +x (last point dropped)."""
    x = y = h = 0.0
    out = [(x, y)]
    for kind, a, r in pieces:
        if kind == "S":
            n = max(1, int(round(a / step)))
            for _ in range(n):
                x += math.cos(h) * a / n
                y += math.sin(h) * a / n
                out.append((x, y))
        else:
            sign = 1.0 if kind == "L" else -1.0
            total = math.radians(a)
            n = max(2, int(round(total * r / step)))
            cx, cy = x - sign * r * math.sin(h), y + sign * r * math.cos(h)
            for k in range(1, n + 1):
                hk = h + sign * total * k / n
                out.append((cx + sign * r * math.sin(hk), cy - sign * r * math.cos(hk)))
            h += sign * total
            x, y = out[-1]
    pts = np.array(out)
    gap = float(np.hypot(*(pts[-1] - pts[0])))
    if gap > 1e-6 or abs(math.remainder(h, 2 * math.pi)) > 1e-6:
        raise ValueError(f"layout does not close: gap {gap:.4f} m, heading {math.degrees(h):.2f} deg")
    return pts[:-1]


def mirrored(seq: list[Piece], r: float) -> list[Piece]:
    return [*seq, L(180, r), *seq, L(180, r)]


def rect(a: float, b: float, r: tuple[float, float, float, float]) -> list[Piece]:
    """A rounded rectangle with four different corner radii (sides solved to close)."""
    r1, r2, r3, r4 = r
    c = r4 + a + r1 - r2 - r3
    d = r1 + b + r2 - r3 - r4
    return [S(a), L(90, r1), S(b), L(90, r2), S(c), L(90, r3), S(d), L(90, r4)]


LAYOUTS: dict[str, tuple[str, list[Piece]]] = {
    "oval": ("the classic: two 6 m straights, 3 m turns", mirrored([S(6)], 3.0)),
    "long_straights": (
        "14 m straights and tight 2 m corners: speed, then braking",
        rect(14, 4, (2.0, 2.0, 2.0, 2.0)),
    ),
    "rounded_square": ("unequal corners from 1.5 m to 3 m", rect(5, 5, (1.5, 3.0, 2.0, 2.5))),
    "switchback": (
        "three 1.5 m hairpins stacked like a paperclip",
        [S(10), L(180, 1.5), S(6), R(180, 1.5), S(6), L(180, 1.5), S(10), L(180, 4.5)],
    ),
    "s_bends": (
        "esses on both sides: left-right-left without a straight between",
        mirrored(
            [S(3), R(45, 2.0), L(90, 2.0), R(45, 2.0), S(2), L(40, 2.5), R(80, 2.5), L(40, 2.5), S(2)], 4.0
        ),
    ),
    "omega": (
        "two omega loops with 1.5 m hairpins turning against the loop",
        mirrored([S(2), L(90, 1.5), R(180, 1.5), L(90, 1.5), S(2)], 4.5),
    ),
    "chicane": (
        "fast straights broken by shallow chicanes",
        mirrored([S(5), L(25, 3.0), R(50, 3.0), L(25, 3.0), S(5)], 3.5),
    ),
    "triangle": ("three 120-degree corners of 2 m", [S(7), L(120, 2.0)] * 3),
    "kidney": (
        "a bean: a long outward bulge and an inward dent",
        mirrored([S(1), R(30, 4.0), L(60, 4.0), R(30, 4.0), S(1)], 3.5),
    ),
}

GENERATED = {"random_7": 7, "random_42": 42}
"""Generated tracks that ship (by seed), so tests and docs can name them."""


def build_all() -> dict[str, Track]:
    tracks: dict[str, Track] = {}
    for name, (what, pieces) in LAYOUTS.items():
        pts = turtle(pieces)
        pts = pts - (pts.min(axis=0) + pts.max(axis=0)) / 2
        if overlaps(pts, 1.2):
            raise ValueError(f"{name}: the road overlaps itself")
        tracks[name] = Track(name=name, width_m=1.2, centerline=pts[::2], description=what)
    for name, seed in GENERATED.items():
        tracks[name] = generate_track(seed, name=name)
        tracks[name].description = f"generated: edgepilot sim tracks --generate {seed}"
    return tracks


def main() -> int:
    for name, t in build_all().items():
        save_track(t, TRACKS_DIR / f"{name}.json")
        print(f"{name}: {t.length:.1f} m, min radius {t.min_radius():.2f} m", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
