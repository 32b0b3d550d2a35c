"""The expert sweep behind the simulator's acceptance (docs/simulator.md): every shipped track and a set of
generated ones, 3 laps, at 0 and 100 ms actuator latency.

    .venv/bin/python -m edgepilot.sim.sweep [--generated 20] [--laps 3] [--json]

The expert reads the simulator's truth, not the camera, so the sweep skips rendering
(the score is identical with or without it); it takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgepilot.progress import table
from edgepilot.sim.expert import Expert
from edgepilot.sim.generator import generate_track
from edgepilot.sim.tracks import Track, list_tracks, load_track
from edgepilot.sim.world import SimWorld


def drive_expert(track: Track, *, laps: int, latency_ms: float) -> dict[str, Any]:
    w = SimWorld(track, latency_ms=latency_ms, keep_trail=False)
    e = Expert(track)
    while not w.done(laps, max(120.0, laps * track.length / 0.25)):
        _, _, s, thr = e.act(w)
        w.step(s, thr)
    return {"track": track.name, "latency_ms": latency_ms, **w.score.as_dict()}


def sweep(
    generated: int = 20, laps: int = 3, latencies: tuple[float, ...] = (0.0, 100.0)
) -> list[dict[str, Any]]:
    tracks = [load_track(n) for n in list_tracks()]
    tracks += [generate_track(1000 + k) for k in range(generated)]
    return [drive_expert(t, laps=laps, latency_ms=lat) for lat in latencies for t in tracks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generated", type=int, default=20, help="generated tracks (seeds 1000..)")
    ap.add_argument("--laps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = sweep(a.generated, a.laps)
    failed = [r for r in rows if r["laps"] < a.laps or r["autonomy"] < 1.0]
    summary = {
        "drives": len(rows),
        "failed": len(failed),
        "min_autonomy": min(r["autonomy"] for r in rows),
        "max_mean_abs_cte_m": max(r["mean_abs_cte_m"] for r in rows),
        "failures": failed,
    }
    if a.json:
        print(json.dumps(summary))
    else:
        keys = ["track", "latency_ms", "laps", "autonomy", "interventions", "mean_abs_cte_m", "elapsed_s"]
        print(table([[r[k] for k in keys] for r in rows], header=keys))
        print(f"{len(rows)} drives, {len(failed)} short of {a.laps} laps at autonomy 1.0")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
