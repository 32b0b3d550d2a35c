"""A car from its profile: which camera, actuator, user input, model, edge link and log.

Every function here builds one kind of part from the profile; ``edgepilot.drive.car``
puts them into the one loop (``drive_car``). ``drive``/``collect`` (the real car),
``sim drive`` (``vehicle.simcar``) and ``replay`` share these builders.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepilot import EdgepilotError
from edgepilot.config import REPO_ROOT, Profile
from edgepilot.drive.car import CarParts, IdleWatch, car_options, drive_car
from edgepilot.drive.slot import ModelSlot, load_autopilot
from edgepilot.drivelog import LogWriter, new_session_dir
from edgepilot.mqtt import broker_config
from edgepilot.offload.client import OffloadClient
from edgepilot.schema.log import SessionMeta
from vehicle.display import dummy_video, has_display
from vehicle.fleetlink import FleetLink, follow_fleet

if TYPE_CHECKING:  # the window pulls pygame, the uploader the upload protocol: only when used
    from vehicle.idle_upload import IdleUploader
    from vehicle.ui import DriveWindow

log = logging.getLogger(__name__)


def _keys(names: list[str]) -> list[str] | None:
    """Public keys named in the profile, relative paths taken from the repo root; None
    (the default: ``keys/<role>.pub``) when the profile names none."""
    if not names:
        return None
    return [str(p if p.is_absolute() or p.exists() else REPO_ROOT / p) for p in map(Path, names)]


def trusted_keys(profile: Profile) -> list[str] | None:
    """The keys that may sign model packages."""
    return _keys(profile.model.trusted_keys)


def announce_keys(profile: Profile) -> list[str] | None:
    """The keys that may sign model announcements (a separate pair: edgepilot.keys)."""
    return _keys(profile.model.announce_keys)


def model_slot(profile: Profile, package: str | None) -> ModelSlot:
    """The car's model slot, holding ``package`` (or the profile's) loaded and warmed."""
    slot = ModelSlot(
        None, trusted_keys(profile), partial(load_autopilot, threads=max(1, profile.model.threads))
    )
    pkg = package or profile.model.package
    if pkg:
        slot.current = slot.load(pkg)
    return slot


def offload_client(profile: Profile, broker_url: str | None, deadline_s: float) -> OffloadClient:
    """The car's link to the edge nodes, started (it reconnects on its own)."""
    client = OffloadClient(broker_config(profile.broker, broker_url), profile.car_id, deadline_s=deadline_s)
    client.start()
    return client


def car_recorder(profile: Profile, record_root: str | None, camera: dict[str, Any]) -> LogWriter:
    """A driving log for a real-car session, in the profile's record directory; ``camera``
    (what the camera says of itself: kind, size, flips) goes into the log's meta."""
    root = Path(record_root or profile.drive.record_dir)
    meta = SessionMeta(
        session=uuid.uuid4().hex,
        created=time.time(),
        source="car",
        car_id=profile.car_id,
        camera=camera,
    )
    return LogWriter(new_session_dir(root, prefix=f"{profile.car_id}-"), meta)


def car_window(profile: Profile, mode: str, *, collect: bool, headless: bool) -> DriveWindow | None:
    """The pygame window when there is a display (for ``collect`` also SDL's offscreen
    driver: tests), else None: a car without a screen is driven by a gamepad plugged into
    it, a phone (``--web``) or its RC transmitter."""
    if headless or not (has_display() or (collect and dummy_video())):
        return None
    from vehicle.ui import DriveWindow

    window = DriveWindow(
        None, gamepad=profile.gamepad, title=f"edgepilot {profile.car_id}", fps_hint=profile.camera.fps
    )
    window.mode = mode
    return window


def car_fleet(profile: Profile, slot: ModelSlot, mode: str) -> FleetLink | None:
    """Model pushes and uploads while parked; a fresh car waits for the fleet's model.
    None (with a warning) when the fleet cannot be reached: the car drives without it."""
    try:
        return follow_fleet(
            profile,
            None,
            slot,
            Path(profile.drive.record_dir).parent / "models",
            trusted_keys(profile),
            wait_s=60,
            wait_for_model=mode != "user" and slot.current is None,
            announce_keys=announce_keys(profile),
        )
    except EdgepilotError as e:
        log.warning("not linked to the fleet (no model pushes, no uploads): %s", e)
        return None


def idle_uploader(profile: Profile, link: FleetLink, recorder: LogWriter, watch: IdleWatch) -> IdleUploader:
    """Uploads finished logs while the car is parked (not the one being recorded)."""
    from vehicle.idle_upload import IdleUploader
    from vehicle.upload import Uploader

    current = Path(recorder.path).resolve()
    return IdleUploader(
        Uploader(link.conn, profile.car_id),
        Path(recorder.path).parent,
        watch.idle,
        interval_s=1.0,
        settle_s=2.0,
        exclude=lambda p: p.resolve() == current,
    ).start()


@dataclass
class Closer:
    close: Callable[[], None]


def car_user(profile: Profile, args: argparse.Namespace, parts: CarParts, window: DriveWindow | None, *, collect: bool, mode: str) -> None:
    """Who drives besides the autopilot: the page (``--web``), the window's keyboard and
    gamepad, a gamepad plugged into a car without a screen (``collect``), and over any of
    them the RC transmitter when the profile has one (it wins while its sticks move)."""
    from vehicle.rc_input import RcUser
    from vehicle.userinput import WindowUser

    if getattr(args, "web", False):
        from vehicle.web import start_web

        web = start_web(profile, mode=mode, port=getattr(args, "port", None))
        parts.user = web.user
        parts.observers.append(web.on_frame)
        parts.extras.append(Closer(web.stop))
    elif window is not None:
        parts.user = WindowUser(window)
        parts.observers.append(lambda frame, info: window.draw(frame.image, None, info))
    elif collect and not profile.rc.enabled:
        from vehicle.gamepad import GamepadUser

        log.warning("no screen: drive with a gamepad plugged into the car (or --web for a phone)")
        parts.user = GamepadUser(profile.gamepad, mode=mode)
    if profile.rc.enabled:  # the transmitter drives (RC mode); the others keep their requests
        parts.user = RcUser(parts.actuator, profile.rc, profile.actuator, other=parts.user)


def real_car_parts(profile: Profile, args: argparse.Namespace, *, collect: bool, mode: str, slot: ModelSlot) -> CarParts:
    """Camera, actuator, user input, edge, recorder and fleet of the real car."""
    from vehicle.cameras import make_camera
    from vehicle.drivetrain import make_actuator
    from vehicle.rc_input import validate_rc

    validate_rc(profile.rc, profile.actuator)  # before anything is opened
    headless = getattr(args, "headless", False) or getattr(args, "web", False)
    window = car_window(profile, mode, collect=collect, headless=headless)
    link = car_fleet(profile, slot, mode)
    extras = [x for x in (window, link) if x is not None]
    if mode != "user" and slot.current is None:
        for x in extras:
            x.close()
        raise EdgepilotError(
            f"mode {mode} needs a model: --model PKG, model.package, or a fleet that pushes one"
        )
    camera = make_camera(profile.camera)
    recorder = car_recorder(profile, getattr(args, "record", None), camera.describe())
    parts = CarParts(camera, make_actuator(profile.actuator), slot, recorder=recorder)
    car_user(profile, args, parts, window, collect=collect, mode=mode)
    if getattr(args, "edge", False):
        parts.offload = offload_client(profile, args.broker, 1.0 / profile.camera.fps)
    if link is not None and profile.drive.upload_when_idle:
        watch = IdleWatch(profile.drive.idle_after_s)
        parts.observers.append(watch)
        uploader = idle_uploader(profile, link, recorder, watch)
        extras.insert(0, uploader)
        link.telemetry.last_upload = lambda: (uploader.done[-1].log, uploader.done_at) if uploader.done else None
    if link is not None:
        parts.observers.append(link.telemetry)
    parts.extras = parts.extras + extras
    return parts


def run_real_car(profile: Profile, args: argparse.Namespace, *, collect: bool) -> dict[str, Any]:
    """``drive`` and ``collect``: camera -> loop -> motor controller, recorded."""
    slot = model_slot(profile, getattr(args, "model", None))
    mode = "user" if collect else (getattr(args, "mode", None) or profile.drive.mode)
    parts = real_car_parts(profile, args, collect=collect, mode=mode, slot=slot)
    run = drive_car(parts, car_options(profile, mode))
    res = run.result
    res["log"] = str(parts.recorder.path) if parts.recorder is not None else None
    for x in parts.extras:
        if hasattr(x, "done"):
            res["uploaded"] = [r.log for r in x.done]
    res["actuator"] = getattr(parts.actuator, "stats", {})
    print(run.loop.timer.table(), file=sys.stderr)
    return res


def drive(args: argparse.Namespace) -> dict[str, Any]:
    """``edgepilot drive``: the real car on the autopilot (or as its profile's mode says)."""
    from edgepilot.config import load_profile

    return run_real_car(_car_profile(args, load_profile), args, collect=False)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """``edgepilot collect``: the real car driven by a human, recorded."""
    from edgepilot.config import load_profile

    return run_real_car(_car_profile(args, load_profile), args, collect=True)


def _car_profile(args: argparse.Namespace, load: Callable[[str | None, str], Profile]) -> Profile:
    profile = load(args.profile, "car")
    if getattr(args, "broker", None):
        profile.broker.url = args.broker
    return profile
