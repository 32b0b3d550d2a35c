"""Handlers of ``edgepilot sim tracks`` and ``bench sim`` (``sim drive`` is a car: ``vehicle.simcar``)."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.progress import table
from edgepilot.sim.tracks import Track

log = logging.getLogger(__name__)


def tracks(args: argparse.Namespace) -> dict[str, Any]:
    from edgepilot.sim.generator import generate_track
    from edgepilot.sim.tracks import list_tracks, load_track, save_track

    def info(t: Track) -> dict[str, Any]:
        return {
            "name": t.name,
            "length_m": round(t.length, 2),
            "width_m": t.width_m,
            "min_radius_m": round(t.min_radius(), 2),
            "description": t.description,
        }

    if args.generate is not None:
        t = generate_track(args.generate)
        result = info(t)
        if args.out:
            result["out"] = str(save_track(t, args.out))
        return result
    if args.out:
        raise EdgepilotError("--out goes with --generate SEED")
    rows = [info(load_track(n)) for n in list_tracks()]
    if not args.json:
        print(table([list(r.values()) for r in rows], header=list(rows[0]) if rows else None))
    return {"count": len(rows), "tracks": rows}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Steps per second on one core: physics + expert + 160x120 render, side by side with
    physics alone, render alone, a scoring scene and training randomisation.

    ``fps`` divides steps by the CPU time of this (single) thread, which is what "one
    core" means on a machine shared with other work: time-slicing by the OS does not
    count against the simulator. ``fps_wall`` is the same run by the wall clock (equal
    on an idle machine). Everything runs in one thread with OpenCV limited to one."""
    import cv2

    from edgepilot.sim.expert import Expert
    from edgepilot.sim.tracks import load_track
    from edgepilot.sim.world import SimWorld

    cv2.setNumThreads(1)
    track = load_track(args.track)
    steps = max(100, args.steps)

    def run(render: bool, physics: bool = True, **kw: int) -> tuple[float, float, float]:
        """(steps per CPU second, per wall second, floor painting s); ``kw``: SimWorld's
        look (scene_seed, randomize, seed)."""
        t_init = time.perf_counter()
        w = SimWorld(track, keep_trail=False, **kw)
        e = Expert(track)
        w.render()  # paint the floor outside the timing (one-off per drive)
        init = time.perf_counter() - t_init
        c0, t0 = time.thread_time(), time.perf_counter()
        for _ in range(steps):
            if physics:
                _, _, s, thr = e.act(w)
                w.step(s, thr)
            else:
                w._frame = None  # noqa: SLF001 - force a fresh render of the same pose
            if render:
                w.render()
        cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
        return steps / max(cpu, 1e-9), steps / wall, init

    full, full_wall, init = run(True)
    phys, _, _ = run(False)
    rend, _, _ = run(True, physics=False)
    scene, _, _ = run(True, scene_seed=1)
    rnd, _, _ = run(True, randomize=True, seed=1)
    return {
        "fps": round(full, 1),
        "fps_wall": round(full_wall, 1),
        "fps_physics_only": round(phys, 1),
        "fps_render_only": round(rend, 1),
        "fps_scene_seed_1": round(scene, 1),
        "fps_randomize": round(rnd, 1),
        "render_share": round((1 / rend) / (1 / full), 3),
        "target_fps": 3000,
        "steps": steps,
        "track": track.name,
        "floor_paint_s": round(init, 3),
        "threads": 1,
        "clock": "thread CPU time (fps_wall: wall clock)",
    }
