"""Tracks: the contract's track JSON, loaded into arrays the simulator can query fast.

A track is a closed centerline in metres plus a road width. Everything the simulator
asks of it — nearest point, cross-track error, progress along the loop, curvature for
the expert's speed profile — comes from one resampled polyline with a fixed spacing,
so a query is a local window search instead of a scan of the whole loop.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.config import REPO_ROOT

TRACKS_DIR = REPO_ROOT / "datasets" / "tracks"
SPACING_M = 0.05
"""Resampling step of the centerline: fine enough that CTE from the polyline is exact to
a millimetre on the tightest (1.5 m) hairpin."""


@dataclass
class Track:
    """A closed road: ``centerline`` is (N, 2) metres, the last point joins the first."""

    name: str
    width_m: float
    centerline: np.ndarray
    description: str = ""  # optional key of the file: what the track is for
    # derived (filled in __post_init__): the resampled loop
    pts: np.ndarray = field(init=False, repr=False)  # (M, 2), uniform spacing
    s: np.ndarray = field(init=False, repr=False)  # arc length at each point
    tangent: np.ndarray = field(init=False, repr=False)  # unit tangent per point
    length: float = field(init=False)

    def __post_init__(self) -> None:
        c = np.asarray(self.centerline, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != 2 or len(c) < 3:
            raise EdgepilotError(f"track {self.name!r}: centerline must be >= 3 points [[x, y], ...]")
        if not np.all(np.isfinite(c)):
            raise EdgepilotError(f"track {self.name!r}: centerline holds a non-finite number")
        if not (math.isfinite(self.width_m) and 0.2 <= self.width_m <= 20):
            raise EdgepilotError(f"track {self.name!r}: width_m must be 0.2..20 m, got {self.width_m}")
        if np.linalg.norm(c[0] - c[-1]) < 1e-9:
            c = c[:-1]  # a file that repeats the first point at the end
        self.centerline = c
        self.pts = resample_closed(c, SPACING_M)
        if len(self.pts) < 8:
            raise EdgepilotError(f"track {self.name!r}: the loop is too short")
        nxt = np.roll(self.pts, -1, axis=0)
        seg = nxt - self.pts
        seglen = np.hypot(seg[:, 0], seg[:, 1])
        self.length = float(seglen.sum())
        self.s = np.concatenate([[0.0], np.cumsum(seglen)[:-1]])
        prv = np.roll(self.pts, 1, axis=0)
        t = nxt - prv
        self.tangent = t / np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-12)[:, None]

    # -- geometry --------------------------------------------------------------------
    def curvature(self) -> np.ndarray:
        """Signed curvature (1/m, left turns positive) per resampled point."""
        return signed_curvature(self.pts, step=max(1, int(round(0.4 / SPACING_M))))

    def min_radius(self) -> float:
        k = np.abs(self.curvature())
        return float(1.0 / max(k.max(), 1e-9))

    def nearest(self, x: float, y: float, hint: int | None = None, window: int = 40) -> tuple[int, float]:
        """(index of the nearest resampled point, signed CTE in metres; left of travel > 0).

        With ``hint`` (last step's index) only a window around it is searched; when the
        answer is not clearly inside that window it falls back to the whole loop."""
        p = self.pts
        n = len(p)
        if hint is not None:
            idx = np.arange(hint - window, hint + window + 1) % n
            d2 = (p[idx, 0] - x) ** 2 + (p[idx, 1] - y) ** 2
            k = int(np.argmin(d2))
            if 2 <= k <= 2 * window - 2 and d2[k] < (self.width_m * 1.5) ** 2:
                i = int(idx[k])
                return i, self._signed(i, x, y)
        d2 = (p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2
        i = int(np.argmin(d2))
        return i, self._signed(i, x, y)

    def _signed(self, i: int, x: float, y: float) -> float:
        """Distance to the polyline around point i (the two adjacent segments), signed."""
        n = len(self.pts)
        best = math.inf
        sign = 1.0
        for a, b in ((i - 1) % n, i), (i, (i + 1) % n):
            ax, ay = self.pts[a]
            bx, by = self.pts[b]
            dx, dy = bx - ax, by - ay
            L2 = dx * dx + dy * dy
            u = 0.0 if L2 == 0 else min(1.0, max(0.0, ((x - ax) * dx + (y - ay) * dy) / L2))
            px, py = ax + u * dx, ay + u * dy
            d = math.hypot(x - px, y - py)
            if d < best:
                best = d
                sign = 1.0 if dx * (y - ay) - dy * (x - ax) >= 0 else -1.0
        return sign * best

    def heading(self, i: int) -> float:
        tx, ty = self.tangent[i % len(self.pts)]
        return math.atan2(ty, tx)

    def bounds(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        lo = self.pts.min(axis=0) - margin
        hi = self.pts.max(axis=0) + margin
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def to_json(self, decimals: int = 4) -> str:
        pts = [[round(float(x), decimals), round(float(y), decimals)] for x, y in self.centerline]
        d: dict[str, object] = {"name": self.name, "width_m": self.width_m}
        if self.description:
            d["description"] = self.description
        d["centerline"] = pts
        return json.dumps(d, indent=None)


def resample_closed(c: np.ndarray, spacing: float) -> np.ndarray:
    """Points at uniform arc-length spacing along the closed polyline ``c``."""
    loop = np.vstack([c, c[:1]])
    seg = np.hypot(*np.diff(loop, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    if total <= 0:
        raise EdgepilotError("track centerline has zero length")
    n = max(3, int(round(total / spacing)))
    q = np.linspace(0.0, total, n, endpoint=False)
    return np.stack([np.interp(q, s, loop[:, 0]), np.interp(q, s, loop[:, 1])], axis=1)


def signed_curvature(pts: np.ndarray, step: int = 1) -> np.ndarray:
    """Curvature of a closed polyline from the circle through points i-step, i, i+step.

    Menger curvature: 4 * area / (|ab| |bc| |ca|), signed by the turn direction. Using a
    stride > 1 keeps millimetre rounding in the files from reading as sharp kinks."""
    a = np.roll(pts, step, axis=0)
    c = np.roll(pts, -step, axis=0)
    b = pts
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ab = np.hypot(*(b - a).T)
    bc = np.hypot(*(c - b).T)
    ca = np.hypot(*(a - c).T)
    return 2.0 * cross / np.maximum(ab * bc * ca, 1e-12)


def track_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return p
    return TRACKS_DIR / f"{name_or_path}.json"


def parse_track(data: object, where: str) -> Track:
    """A Track from decoded JSON; every flaw is an EdgepilotError naming ``where``."""
    if not isinstance(data, dict):
        raise EdgepilotError(f"{where}: a track file holds a JSON object")
    name = data.get("name", Path(where).stem)
    width = data.get("width_m")
    cl = data.get("centerline")
    if not isinstance(name, str):
        raise EdgepilotError(f"{where}: 'name' must be a string")
    if not isinstance(width, (int, float)) or isinstance(width, bool):
        raise EdgepilotError(f"{where}: 'width_m' must be a number, got {width!r}")
    if not isinstance(cl, list) or not all(
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        for p in cl
    ):
        raise EdgepilotError(f"{where}: 'centerline' must be a list of [x_m, y_m] pairs")
    try:
        desc = data.get("description", "")
        return Track(
            name=name,
            width_m=float(width),
            centerline=np.array(cl, dtype=np.float64),
            description=desc if isinstance(desc, str) else "",
        )
    except EdgepilotError as e:
        raise EdgepilotError(f"{where}: {e}") from None


def load_track(name_or_path: str) -> Track:
    """A shipped track by name (``datasets/tracks/<name>.json``) or any track JSON file."""
    path = track_path(name_or_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        known = ", ".join(list_tracks()) or "none"
        raise EdgepilotError(f"no track {name_or_path!r} ({path} missing; shipped: {known})") from None
    except OSError as e:
        raise EdgepilotError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise EdgepilotError(f"{path}: not a text (UTF-8) file") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:  # deep nesting: RecursionError
        raise EdgepilotError(f"{path}: not valid JSON: {str(e)[:200]}") from None
    return parse_track(data, str(path))


def list_tracks() -> list[str]:
    """Names of the shipped tracks, sorted."""
    return sorted(p.stem for p in TRACKS_DIR.glob("*.json"))


def save_track(track: Track, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(track.to_json() + "\n")
    return p
