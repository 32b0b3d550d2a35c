"""The trajectory plot written after every drive: the track, the driven path coloured by
cross-track error, interventions marked. People look at this before the numbers, so it
must show at a glance *where* a pilot struggles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepilot.sim.tracks import Track


def plot_trajectory(
    track: Track,
    xs: np.ndarray,
    ys: np.ndarray,
    cte: np.ndarray,
    interventions: list[tuple[float, float]],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Write the PNG and return its path (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6), dpi=110)
    ax = fig.add_subplot()
    pts = np.vstack([track.pts, track.pts[:1]])
    normal = np.stack([-track.tangent[:, 1], track.tangent[:, 0]], axis=1)
    normal = np.vstack([normal, normal[:1]])
    for side in (1, -1):
        e = pts + side * track.width_m / 2 * normal
        ax.plot(e[:, 0], e[:, 1], color="0.55", lw=0.8)
    ax.plot(pts[:, 0], pts[:, 1], color="0.75", lw=0.6, ls="--")
    ax.plot(*track.pts[0], marker="s", color="k", ms=5, label="start")
    if len(xs) > 1:
        seg = np.stack([np.stack([xs[:-1], ys[:-1]], 1), np.stack([xs[1:], ys[1:]], 1)], 1)
        # do not draw the jump of a reset as a path segment
        jump = np.hypot(np.diff(xs), np.diff(ys)) > track.width_m / 2
        lc = LineCollection(seg[~jump], cmap="viridis", linewidths=1.6)
        lc.set_array(np.abs(cte[1:][~jump]))
        lc.set_clim(0, track.width_m / 2)
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, label="|CTE| (m); road edge at the top", shrink=0.8)
    if interventions:
        ix, iy = np.array(interventions).T
        ax.plot(ix, iy, "x", color="red", ms=9, mew=2, label=f"intervention ({len(interventions)})")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or track.name, fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
