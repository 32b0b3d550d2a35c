"""A simulated car: the simulator's parts in the one car wiring, and a scored drive.

``sim_parts`` puts the simulator's camera and car (``edgepilot.sim.parts``) where a real
car has its camera and motor controller, with the expert riding along as the labeller;
``drive_car`` (``edgepilot.drive.car``) runs them through the very loop that drives the
real car. ``edgepilot sim drive`` adds a window, the fleet and the edge to these parts;
the cloud's closed-loop gate uses ``scored_drives`` as they are.

The frame a record stores is the one the pilot saw; its ``sim`` truth is the state that
frame shows; its label is the expert's (or the user's) answer even while a perturbation
bends what the car gets.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from edgepilot.drive.car import CarParts, CarRun, drive_car
from edgepilot.drive.loop import LoopOptions
from edgepilot.drive.parts import Pilot, UserInput
from edgepilot.drive.slot import ModelSlot
from edgepilot.drivelog import LogWriter
from edgepilot.schema.log import SessionMeta
from edgepilot.sim.expert import Expert
from edgepilot.sim.parts import ExpertUser, SimActuator, SimSource
from edgepilot.sim.tracks import load_track
from edgepilot.sim.world import SimWorld
from edgepilot.stats import mean


def open_log(path: str | Path, world: SimWorld, notes: dict[str, Any], car_id: str = "sim-1") -> LogWriter:
    """A driving log for a sim drive: source "sim", the track, the camera spec in meta."""
    meta = SessionMeta(
        session=uuid.uuid4().hex,
        created=time.time(),
        source="sim",
        car_id=car_id,
        track=world.track.name,
        camera=world.camera.to_meta(),
        notes=notes,
    )
    # blocking: simulated time waits for the disk instead of dropping training frames
    return LogWriter(path, meta, block=True)


def sim_parts(
    world: SimWorld,
    *,
    laps: int | None,
    max_seconds: float | None,
    slot: ModelSlot[Pilot] | None = None,
    expert: Expert | None = None,
    user: UserInput | None = None,
    labels: bool = True,
) -> CarParts:
    """The simulator as a car: renders until ``laps`` or ``max_seconds``; the expert is the
    user (its labels ride along) unless ``user`` wraps it (a window over the expert).
    ``labels=False``: no user at all (a scored drive needs no labels; saves the expert)."""
    if user is None and labels:
        user = ExpertUser(expert or Expert(world.track), world)
    return CarParts(
        source=SimSource(world).until(laps, max_seconds),
        actuator=SimActuator(world),
        slot=slot or ModelSlot(),
        user=user,
    )


def sim_options(
    world: SimWorld,
    mode: str,
    *,
    realtime: bool,
    car_id: str = "sim-1",
    record: bool = False,
    delete_seconds: float = LoopOptions.delete_seconds,
) -> LoopOptions:
    """Loop options of a simulated car: one frame per simulated step; the offload deadline
    is one step; ``realtime`` paces simulated time to the wall clock."""
    return LoopOptions(
        mode=mode,
        rate_hz=1.0 / world.dt if realtime else None,
        deadline_s=world.dt,
        car_id=car_id,
        record=record,
        delete_seconds=delete_seconds,
    )


def scored_drives(
    pilot: Pilot,
    tracks: list[str],
    seconds: float,
    scene_seed: int = 0,
    latency_ms: float = 0.0,
    plot_prefix: str | Path | None = None,
    edge: Pilot | None = None,
) -> dict[str, Any]:
    """``pilot`` drives each track for ``seconds`` of simulated time (time-bound, not
    lap-bound) through the car wiring; the contract's scores per track and their means.
    With ``plot_prefix``, each drive's trajectory plot is written to
    ``<plot_prefix>-<track>.png`` and listed under ``plots`` (track -> path). With
    ``edge``, that model answers the frames the pilot offloads (``LocalEdge``), and each
    track's score adds the share of frames it answered (``edge_used``)."""
    from edgepilot.offload.local import LocalEdge
    from edgepilot.sim.plot import plot_trajectory

    per, plots = {}, {}
    for name in tracks:
        world = SimWorld(load_track(name), scene_seed=scene_seed, latency_ms=latency_ms, keep_trail=plot_prefix is not None)
        parts = sim_parts(world, laps=10**6, max_seconds=seconds, slot=ModelSlot(pilot), labels=False)
        parts.offload = LocalEdge(edge) if edge is not None else None
        run = drive_car(parts, sim_options(world, "local", realtime=False))
        per[name] = world.score.as_dict()
        if edge is not None:
            per[name]["edge_used"] = run.result.get("edge_used_rate")
        if plot_prefix is not None and world.trail is not None:
            xs, ys, cte = world.trail.arrays()
            title = f"{getattr(pilot, 'version', '')} on {name}: autonomy {per[name]['autonomy']}"
            out = Path(f"{plot_prefix}-{name}.png")
            plots[name] = str(plot_trajectory(world.track, xs, ys, cte, world.trail.interventions, out, title=title))
    scores = list(per.values())
    result: dict[str, Any] = {
        "autonomy": round(mean(s["autonomy"] for s in scores), 4),
        "mean_abs_cte_m": round(mean(s["mean_abs_cte_m"] for s in scores), 4),
        "interventions": int(sum(s["interventions"] for s in scores)),
        "tracks": per,
    }
    if plot_prefix is not None:
        result["plots"] = plots
    return result


def expert_drive(
    world: SimWorld,
    expert: Expert | None = None,
    *,
    laps: int | None = None,
    max_seconds: float | None = None,
    writer: LogWriter | None = None,
    realtime: bool = False,
) -> CarRun:
    """The expert drives ``world`` (recording into ``writer`` when given): training data."""
    parts = sim_parts(world, laps=laps, max_seconds=max_seconds, expert=expert)
    parts.recorder = writer
    return drive_car(parts, sim_options(world, "local", realtime=realtime, record=writer is not None))
