"""Entry points of the onboard runtime: thin wiring of sources, pilot, actuator, recorder.

``replay`` and ``bench loop`` run recorded frames through the same ``DriveLoop`` the car
runs; ``drive`` and ``collect`` run it on the real car (camera + serial actuator).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from edgepilot import EdgepilotError
from edgepilot.config import REPO_ROOT, Profile, load_profile
from vehicle.hotswap import ModelSlot, load_autopilot
from vehicle.loop import DriveLoop, LoopOptions

log = logging.getLogger(__name__)


class NullActuator:
    """Replay drives no motors: commands are only timed and recorded."""

    def run(self, steering: float, throttle: float) -> None:
        pass

    def neutral(self) -> None:
        pass

    def close(self) -> None:
        pass


def trusted_keys(profile: Profile) -> list[str] | None:
    """The profile's public keys, relative paths taken from the repo root; None (the
    model package's default, ``keys/*.pub``) when the profile names none."""
    if not profile.model.trusted_keys:
        return None
    out = []
    for k in profile.model.trusted_keys:
        p = Path(k)
        out.append(str(p if p.is_absolute() or p.exists() else REPO_ROOT / p))
    return out


def model_slot(profile: Profile, package: str | None) -> ModelSlot:
    torch.set_num_threads(max(1, profile.model.threads))
    keys = trusted_keys(profile)
    pkg = package or profile.model.package
    if not pkg:
        return ModelSlot(None, keys)
    model = load_autopilot(pkg, trusted_keys=keys)
    model.warmup()
    return ModelSlot(model, keys)


def offload_client(profile: Profile, args: Any, deadline_s: float) -> Any:
    if not getattr(args, "edge", False):
        return None
    from vehicle.offload import OffloadClient

    broker = profile.broker
    if getattr(args, "broker", None):
        broker.url = args.broker
    client = OffloadClient(broker, profile.car_id, deadline_s=deadline_s)
    client.start()
    return client


def _finish(loop: DriveLoop, offload: Any) -> dict[str, Any]:
    res = loop.result()
    if offload is not None:
        res["offload"] = dict(offload.stats)
        offload.close()
    print(loop.timer.table(), file=sys.stderr)
    return res


def replay(args: Any) -> dict[str, Any]:
    from vehicle.sources import ReplaySource

    profile = load_profile(args.profile, "sim")
    slot = model_slot(profile, args.model)
    source = ReplaySource(args.log, rate=args.rate)
    period = profile.sim.dt_s
    offload = offload_client(profile, args, deadline_s=period)
    opts = LoopOptions(mode="local" if slot.current else "user", deadline_s=period, car_id=profile.car_id)
    loop = DriveLoop(source, NullActuator(), model=slot, offload=offload, options=opts)
    loop.run()
    return _finish(loop, offload)


def bench_loop(args: Any) -> dict[str, Any]:
    """The whole onboard loop in replay at full speed, with the recorder on.

    One pass warms the page cache and the model; the second is measured."""
    import tempfile

    from edgepilot.drivelog import LogWriter
    from vehicle.sources import ReplaySource

    profile = load_profile(args.profile, "sim")
    slot = model_slot(profile, args.model)
    if slot.current is None:
        raise EdgepilotError("bench loop needs --model")
    DriveLoop(ReplaySource(args.data), NullActuator(), model=slot, options=LoopOptions(mode="local")).run()
    with tempfile.TemporaryDirectory() as tmp:
        rec = LogWriter(Path(tmp) / "bench")
        loop = DriveLoop(
            ReplaySource(args.data),
            NullActuator(),
            model=slot,
            recorder=rec,
            options=LoopOptions(mode="local", record=True),
        )
        t0 = time.perf_counter()
        loop.run()
        rec.close()
        res = _finish(loop, None)
        res["record_dropped"] = rec.dropped
        res["wall_with_flush_s"] = round(time.perf_counter() - t0, 3)
    return res


def _car_session(profile: Profile, record_root: str | None) -> Any:
    """A recorder for a real-car session in the profile's record directory."""
    import uuid

    from edgepilot.drivelog import LogWriter, new_session_dir
    from edgepilot.schema.log import SessionMeta

    root = Path(record_root or profile.drive.record_dir)
    meta = SessionMeta(
        session=uuid.uuid4().hex,
        created=time.time(),
        source="car",
        car_id=profile.car_id,
        camera={
            "width": profile.camera.width,
            "height": profile.camera.height,
            "source": profile.camera.source,
        },
    )
    return LogWriter(new_session_dir(root, prefix=f"{profile.car_id}-"), meta)


def _run_car(args: Any, *, collect: bool) -> dict[str, Any]:
    """``drive`` and ``collect``: camera -> loop -> serial actuator on the real car."""
    from vehicle.actuators import make_actuator
    from vehicle.sources import CameraSource
    from vehicle.userinput import PilotUser

    profile = load_profile(args.profile, "car")
    if getattr(args, "broker", None):
        profile.broker.url = args.broker
    slot = model_slot(profile, getattr(args, "model", None))
    mode = "user" if collect else (getattr(args, "mode", None) or profile.drive.mode)
    window = None
    if collect or not getattr(args, "headless", False):
        from edgepilot.sim.cli import dummy_video, has_display

        if has_display() or (collect and dummy_video()):  # dummy: SDL offscreen (tests)
            from vehicle.ui import DriveWindow

            window = DriveWindow(
                None,
                gamepad=profile.gamepad,
                title=f"edgepilot {profile.car_id}",
                fps_hint=profile.camera.fps,
            )
            window.mode = mode
        elif collect:
            raise EdgepilotError("collect needs a window (a display) for the keyboard/gamepad")
    link = None
    try:  # the fleet: model pushes (drive), uploads while parked (both)
        from vehicle.fleetlink import follow_fleet

        link = follow_fleet(
            profile,
            None,
            slot,
            Path(profile.drive.record_dir).parent / "models",
            trusted_keys(profile),
            wait_s=60,
            wait_for_model=mode != "user" and slot.current is None,  # a fresh car takes the fleet's
        )
    except EdgepilotError as e:
        log.warning("not linked to the fleet (no model pushes, no uploads): %s", e)
    if mode != "user" and slot.current is None:
        for part in (window, link):
            if part is not None:
                part.close()
        raise EdgepilotError(
            f"mode {mode} needs a model: --model PKG, model.package, or a fleet that pushes one"
        )
    recorder = _car_session(profile, getattr(args, "record", None))
    source = CameraSource(profile.camera)
    actuator = make_actuator(profile.actuator)
    offload = offload_client(profile, args, deadline_s=1.0 / profile.camera.fps)
    opts = LoopOptions(
        mode=mode,
        throttle_cap=profile.drive.throttle_cap,
        record=not profile.drive.auto_record,
        auto_record=profile.drive.auto_record,
        delete_seconds=profile.drive.delete_seconds,
        deadline_s=1.0 / profile.camera.fps,
        rate_hz=profile.drive.rate_hz,  # a camera paces itself; a video file would not
        car_id=profile.car_id,
    )

    def on_frame(frame: Any, info: dict[str, Any]) -> None:
        if window is not None:
            window.draw(frame.image, None, info)

    loop = DriveLoop(
        source,
        actuator,
        model=slot,
        user=PilotUser(window) if window else None,
        offload=offload,
        recorder=recorder,
        options=opts,
        on_frame=on_frame,
    )
    idle_upload = None
    if link is not None and profile.drive.upload_when_idle:
        from vehicle.idle_upload import IdleUploader
        from vehicle.upload import Uploader

        idle_upload = IdleUploader(
            Uploader(link.conn, profile.car_id),
            Path(recorder.path).parent,
            lambda: time.monotonic() - loop.moved_at > profile.drive.idle_after_s,
            interval_s=1.0,
            settle_s=2.0,
            exclude=lambda p: p.resolve() == Path(recorder.path).resolve(),  # still being written
        )
        idle_upload.start()
    try:
        loop.run()
    finally:
        if idle_upload is not None:
            idle_upload.stop()
        source.close()
        recorder.close()
        if window is not None:
            window.close()
        if link is not None:
            link.close()
    res = _finish(loop, offload)
    res["log"] = str(recorder.path)
    if idle_upload is not None:
        res["uploaded"] = [r.log for r in idle_upload.done]
    res["actuator"] = getattr(actuator, "stats", {})
    return res


def drive(args: Any) -> dict[str, Any]:
    return _run_car(args, collect=False)


def collect(args: Any) -> dict[str, Any]:
    return _run_car(args, collect=True)
