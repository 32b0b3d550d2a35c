"""``edgepilot sim drive``: the simulated car is a car.

It is built by the same wiring as the real one (``edgepilot.drive.car``): the simulator's
camera and car (``edgepilot.sim.drive.sim_parts``) with the expert as labeller, plus what
a real car adds from its profile: a window for keyboard/gamepad, a model that follows the
fleet's pushes, the edge link, the driving log. The result is scored per the contract.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepilot import EdgepilotError
from edgepilot.config import Profile, load_profile
from edgepilot.drive.car import CarParts, CarRun, drive_car
from edgepilot.sim.drive import open_log, sim_options, sim_parts
from edgepilot.sim.expert import Expert
from edgepilot.sim.tracks import Track, load_track
from edgepilot.sim.world import SimWorld
from vehicle.car import announce_keys, model_slot, offload_client, trusted_keys
from vehicle.display import dummy_video, has_display
from vehicle.fleetlink import FleetLink, follow_fleet

if TYPE_CHECKING:
    from vehicle.ui import DriveWindow

log = logging.getLogger(__name__)

LOOP_KEYS = ("latency_ms", "edge_used_rate", "edge_late", "model_version", "swaps")
LOOP_KEYS += ("offload", "fleet", "stages_ms", "unlabelled", "takeovers")


@dataclass
class SimDrive:
    """What one ``sim drive`` was asked for, checked and with the profile's defaults."""

    track: Track
    pilot: str
    laps: int
    scene_seed: int
    latency_ms: float
    windowed: bool
    realtime: bool
    max_seconds: float | None


def settings(args: argparse.Namespace, prof: Profile) -> SimDrive:
    sim = prof.sim
    if args.pilot == "model" and not (args.model or prof.model.package or args.follow_fleet):
        raise EdgepilotError("--pilot model needs --model PKG, --follow-fleet, or model.package in the profile")
    track = load_track(args.track or sim.track)
    laps = args.laps if args.laps is not None else sim.laps
    if laps < 1:
        raise EdgepilotError("--laps must be at least 1")
    latency = args.latency_ms if args.latency_ms is not None else sim.latency_ms
    if not (0 <= latency <= 5000):
        raise EdgepilotError(f"--latency-ms must be 0..5000, got {latency}")
    if not (0 <= args.perturb <= 1):
        raise EdgepilotError(f"--perturb must be 0..1, got {args.perturb}")
    if args.edge and args.pilot != "model":
        log.warning("--edge offloads the model pilot's hard frames; the %s pilot ignores it", args.pilot)
    # an unseen dummy window only for the keyboard pilot (scripted input in tests): an
    # expert drive under the dummy driver stays headless and at full speed
    web = getattr(args, "web", False)
    windowed = not (args.headless or web) and (has_display() or (args.pilot == "keyboard" and dummy_video()))
    if args.pilot == "keyboard" and not (windowed or web):
        raise EdgepilotError("--pilot keyboard needs a window (no display, or --headless given) or --web")
    rate = args.rate or ("realtime" if windowed or web or args.edge else sim.rate)
    max_seconds = args.max_seconds
    if max_seconds is None and args.pilot in ("expert", "model"):
        max_seconds = max(120.0, laps * track.length / 0.25)  # a stuck drive ends, scored
    scene = args.scene_seed if args.scene_seed is not None else sim.scene_seed
    return SimDrive(track, args.pilot, laps, scene, latency, windowed, rate == "realtime", max_seconds)


def _window(prof: Profile, sd: SimDrive, recording: bool) -> DriveWindow:
    from vehicle.ui import DriveWindow

    window = DriveWindow(
        sd.track,
        gamepad=prof.gamepad,
        title=f"edgepilot sim: {sd.track.name} ({sd.pilot})",
        autopilot=True,  # M hands the car to the expert (keyboard) or takes it back (expert)
    )
    window.recording = recording
    window.mode = "user" if sd.pilot == "keyboard" else "local"
    return window


def _add_model(parts: CarParts, prof: Profile, args: argparse.Namespace, world: SimWorld) -> FleetLink | None:
    """The model pilot: a package or the fleet's pushes; hard frames to the edge."""
    parts.slot = model_slot(prof, args.model)
    link = None
    if args.follow_fleet:
        cache = Path(args.record or "var/models").parent / f"models-{prof.car_id}"
        link = follow_fleet(
            prof, args.broker, parts.slot, cache, trusted_keys(prof), announce_keys=announce_keys(prof)
        )
        link.telemetry.interventions = lambda: world.score.interventions
        parts.observers.append(link.telemetry)
        parts.extras.append(link)
    if args.edge:
        parts.offload = offload_client(prof, args.broker, world.dt)
    return link


def build(
    args: argparse.Namespace, prof: Profile, sd: SimDrive, world: SimWorld
) -> tuple[CarParts, FleetLink | None]:
    """The simulated car's parts, from the simulator and the profile (and its fleet link)."""
    from edgepilot.progress import bar

    expert = Expert(sd.track, perturb=args.perturb if sd.pilot == "expert" else 0.0, seed=args.seed)
    parts = sim_parts(world, laps=sd.laps, max_seconds=sd.max_seconds, expert=expert)
    if args.record:
        parts.recorder = open_log(args.record, world, _notes(args, sd, world), car_id=prof.car_id)
    if getattr(args, "web", False):
        _add_web(parts, prof, args, sd)
    elif sd.windowed:
        from vehicle.userinput import WindowUser

        window = _window(prof, sd, args.record is not None)
        parts.user = WindowUser(window, parts.user)
        parts.observers.append(lambda frame, info: window.draw(frame.image, world, info))
        parts.extras.append(window)
    progress = bar(desc=f"sim {sd.track.name}", unit="frame")
    parts.observers.append(lambda frame, info: progress.update())
    parts.extras.append(progress)
    link = None
    if sd.pilot == "model":  # the expert still rides along: it labels every record
        link = _add_model(parts, prof, args, world)
    return parts, link


def _add_web(parts: CarParts, prof: Profile, args: argparse.Namespace, sd: SimDrive) -> None:
    """The phone's page as the user, the expert labelling what the page does not drive."""
    from vehicle.car import Closer
    from vehicle.web import start_web

    mode = "user" if sd.pilot == "keyboard" else "local"
    web = start_web(prof, mode=mode, port=getattr(args, "port", None), labels=parts.user)
    parts.user = web.user
    parts.observers.append(web.on_frame)
    parts.extras.append(Closer(web.stop))


def _notes(args: argparse.Namespace, sd: SimDrive, world: SimWorld) -> dict[str, Any]:
    return {
        "pilot": sd.pilot,
        "scene_seed": sd.scene_seed,
        "latency_ms": sd.latency_ms,
        "randomize": args.randomize,
        "perturb": args.perturb,
        "seed": args.seed,
        "dt_s": world.dt,
    }


def _plot(args: argparse.Namespace, sd: SimDrive, world: SimWorld) -> str | None:
    from edgepilot.sim.plot import plot_trajectory

    plot = args.plot or (str(Path(args.record) / "trajectory.png") if args.record else None)
    if not plot or world.trail is None:
        return None
    s = world.score
    title = (
        f"{sd.track.name}: {sd.pilot}, {s.laps} laps, autonomy {s.autonomy:.3f}, "
        f"{s.interventions} interventions, mean |CTE| {s.mean_abs_cte_m:.3f} m"
    )
    xs, ys, cte = world.trail.arrays()
    try:
        plot_trajectory(sd.track, xs, ys, cte, world.trail.interventions, plot, title=title)
    except OSError as e:  # the drive and its score still count
        log.warning("could not write the trajectory plot %s: %s", plot, e)
        return None
    return plot


def _result(
    args: argparse.Namespace, sd: SimDrive, world: SimWorld, run: CarRun, link: FleetLink | None
) -> dict[str, Any]:
    score = world.score
    out: dict[str, Any] = {
        **score.as_dict(),
        "exit_rate": run.result.get("exit_rate", {}),
        "offload_rate": run.result.get("offload_rate", 0.0),
        "track": sd.track.name,
        "pilot": sd.pilot,
        "scene_seed": sd.scene_seed,
        "actuator_latency_ms": sd.latency_ms,  # --latency-ms (latency_ms is the loop's, with a model)
        "records": run.loop.stats.recorded,
        "record": str(args.record) if args.record else None,
        "plot": _plot(args, sd, world),
        "wall_s": round(run.wall_s, 3),
        "x_realtime": round(score.elapsed_s / run.wall_s, 1) if run.wall_s > 0 else None,
    }
    if link is not None:
        run.result["fleet"] = link.summary()
    out.update({k: run.result[k] for k in LOOP_KEYS if k in run.result})
    return out


def sim_drive(args: argparse.Namespace) -> dict[str, Any]:
    prof = load_profile(args.profile, "sim")
    sd = settings(args, prof)
    world = SimWorld(
        sd.track,
        scene_seed=sd.scene_seed,
        latency_ms=sd.latency_ms,
        dt=prof.sim.dt_s,
        randomize=args.randomize,
        seed=args.seed,
    )
    parts, link = build(args, prof, sd, world)
    mode = "user" if sd.pilot == "keyboard" else "local"
    opts = sim_options(
        world,
        mode,
        realtime=sd.realtime,
        car_id=prof.car_id,
        record=parts.recorder is not None,
        delete_seconds=prof.drive.delete_seconds,
    )
    run = drive_car(parts, opts)
    log.info("per-stage timing:\n%s", run.loop.timer.table())
    return _result(args, sd, world, run, link)
