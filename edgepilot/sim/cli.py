"""Handlers of ``edgepilot sim drive``, ``sim tracks`` and ``bench sim``."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import load_profile
from edgepilot.progress import table

log = logging.getLogger(__name__)


def has_display() -> bool:
    """A window can be seen: an X/Wayland display, or a real SDL video driver chosen."""
    sdl = os.environ.get("SDL_VIDEODRIVER", "")
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or (sdl and sdl != "dummy"))


def dummy_video() -> bool:
    """SDL's offscreen driver: the window works but nobody sees it (tests, CI)."""
    return os.environ.get("SDL_VIDEODRIVER") == "dummy"


def drive(args: argparse.Namespace) -> dict[str, Any]:
    from edgepilot.sim.drive import open_log, run_drive
    from edgepilot.sim.expert import Expert
    from edgepilot.sim.plot import plot_trajectory
    from edgepilot.sim.tracks import load_track
    from edgepilot.sim.world import SimWorld

    prof = load_profile(args.profile, "sim")
    sim = prof.sim
    if args.pilot == "model" and not (args.model or prof.model.package or args.follow_fleet):
        raise EdgepilotError(
            "--pilot model needs --model PKG, --follow-fleet, or model.package in the profile"
        )
    track = load_track(args.track or sim.track)
    laps = args.laps if args.laps is not None else sim.laps
    if laps < 1:
        raise EdgepilotError("--laps must be at least 1")
    scene_seed = args.scene_seed if args.scene_seed is not None else sim.scene_seed
    latency = args.latency_ms if args.latency_ms is not None else sim.latency_ms
    if not (0 <= latency <= 5000):
        raise EdgepilotError(f"--latency-ms must be 0..5000, got {latency}")
    if not (0 <= args.perturb <= 1):
        raise EdgepilotError(f"--perturb must be 0..1, got {args.perturb}")
    if args.edge and args.pilot != "model":
        log.warning("--edge offloads the model pilot's hard frames; the %s pilot ignores it", args.pilot)
    # an unseen dummy window only for the keyboard pilot (scripted input in tests):
    # an expert drive under the dummy driver stays headless and at full speed
    windowed = not args.headless and (has_display() or (args.pilot == "keyboard" and dummy_video()))
    if args.pilot == "keyboard" and not windowed:
        raise EdgepilotError("--pilot keyboard needs a window (no display, or --headless given)")
    rate = args.rate or ("realtime" if windowed or args.edge else sim.rate)
    max_seconds = args.max_seconds
    if max_seconds is None and args.pilot == "expert":
        max_seconds = max(120.0, laps * track.length / 0.25)  # a stuck drive ends, scored

    world = SimWorld(
        track,
        scene_seed=scene_seed,
        latency_ms=latency,
        dt=sim.dt_s,
        randomize=args.randomize,
        seed=args.seed,
    )
    expert = Expert(track, perturb=args.perturb if args.pilot == "expert" else 0.0, seed=args.seed)
    notes = {
        "pilot": args.pilot,
        "scene_seed": scene_seed,
        "latency_ms": latency,
        "randomize": args.randomize,
        "perturb": args.perturb,
        "seed": args.seed,
        "dt_s": sim.dt_s,
    }
    writer = open_log(args.record, world, notes) if args.record else None
    window = None
    if windowed:
        from vehicle.ui import DriveWindow

        window = DriveWindow(
            track,
            gamepad=prof.gamepad,
            title=f"edgepilot sim: {track.name} ({args.pilot})",
            autopilot=True,  # M hands the car to the expert (keyboard) or takes it back (expert)
        )
        window.recording = writer is not None
    from vehicle.cli import model_slot, offload_client, trusted_keys
    from vehicle.hotswap import ModelSlot

    slot, link, offload = ModelSlot(None), None, None
    if args.pilot == "model":  # the expert still rides along: it labels every record
        if max_seconds is None:
            max_seconds = max(120.0, laps * track.length / 0.25)
        slot = model_slot(prof, args.model)
        if args.follow_fleet:
            from vehicle.fleetlink import follow_fleet

            cache = Path(args.record or "var/models").parent / f"models-{prof.car_id}"
            link = follow_fleet(prof, args.broker, slot, cache, trusted_keys(prof))
        offload = offload_client(prof, args, deadline_s=sim.dt_s)
    try:
        run = run_drive(
            world,
            pilot=args.pilot,
            laps=laps,
            max_seconds=max_seconds,
            expert=expert,
            writer=writer,
            window=window,
            realtime=rate == "realtime",
            delete_seconds=prof.drive.delete_seconds,
            slot=slot,
            offload=offload,
            car_id=prof.car_id,
        )
    finally:
        if offload is not None:
            offload.close()
        if link is not None:
            link.close()
    loop = run.extra["loop"]
    loop_result = loop.result()
    if link is not None:
        loop_result["fleet"] = link.summary()
    if offload is not None:
        loop_result["offload"] = dict(offload.stats)
    log.info("per-stage timing:\n%s", loop.timer.table())
    score = world.score
    plot = args.plot or (str(Path(args.record) / "trajectory.png") if args.record else None)
    if plot and world.trail is not None:
        xs, ys, cte = world.trail.arrays()
        try:
            plot_trajectory(
                track,
                xs,
                ys,
                cte,
                world.trail.interventions,
                plot,
                title=(
                    f"{track.name}: {args.pilot}, {score.laps} laps, autonomy {score.autonomy:.3f}, "
                    f"{score.interventions} interventions, mean |CTE| {score.mean_abs_cte_m:.3f} m"
                ),
            )
        except OSError as e:  # the drive and its score still count
            log.warning("could not write the trajectory plot %s: %s", plot, e)
            plot = None
    out: dict[str, Any] = {
        **score.as_dict(),
        "exit_rate": loop_result.get("exit_rate", {}),
        "offload_rate": loop_result.get("offload_rate", 0.0),
        "track": track.name,
        "pilot": args.pilot,
        "scene_seed": scene_seed,
        "actuator_latency_ms": latency,  # --latency-ms (latency_ms is the loop's, with a model)
        "records": run.records,
        "record": str(args.record) if args.record else None,
        "plot": plot,
        "wall_s": round(run.wall_s, 3),
        "x_realtime": round(score.elapsed_s / run.wall_s, 1) if run.wall_s > 0 else None,
    }
    for k in (
        "latency_ms",
        "edge_used_rate",
        "edge_late",
        "model_version",
        "swaps",
        "offload",
        "fleet",
        "stages_ms",
    ):
        if k in loop_result:
            out[k] = loop_result[k]
    return out


def tracks(args: argparse.Namespace) -> dict[str, Any]:
    from edgepilot.sim.generator import generate_track
    from edgepilot.sim.tracks import list_tracks, load_track, save_track

    def info(t: Any) -> dict[str, Any]:
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

    def run(render: bool, physics: bool = True, **kw: Any) -> tuple[float, float, float]:
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
