"""``edgepilot replay`` and ``bench loop``: recorded frames through the car's own loop.

Replay is a car whose camera is a driving log and whose motors are none
(``edgepilot.drive.replay``); it is wired like every other car (``edgepilot.drive.car``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import load_profile
from edgepilot.drive.car import CarParts, drive_car
from edgepilot.drive.loop import LoopOptions
from edgepilot.drive.parts import NullActuator
from edgepilot.drive.replay import ReplaySource
from edgepilot.drivelog import LogWriter
from vehicle.car import model_slot, offload_client


def replay(args: Any) -> dict[str, Any]:
    profile = load_profile(args.profile, "sim")
    slot = model_slot(profile, args.model)
    period = profile.sim.dt_s
    parts = CarParts(ReplaySource(args.log, rate=args.rate), NullActuator(), slot)
    if args.edge:
        parts.offload = offload_client(profile, args.broker, period)
    opts = LoopOptions(mode="local" if slot.current else "user", deadline_s=period, car_id=profile.car_id)
    run = drive_car(parts, opts)
    print(run.loop.timer.table(), file=sys.stderr)
    return run.result


def bench_loop(args: Any) -> dict[str, Any]:
    """The whole onboard loop in replay at full speed, with the recorder on.

    One pass warms the page cache and the model; the second is measured."""
    profile = load_profile(args.profile, "sim")
    slot = model_slot(profile, args.model)
    if slot.current is None:
        raise EdgepilotError("bench loop needs --model")
    drive_car(CarParts(ReplaySource(args.data), NullActuator(), slot), LoopOptions(mode="local"))
    with tempfile.TemporaryDirectory() as tmp:
        rec = LogWriter(Path(tmp) / "bench")
        parts = CarParts(ReplaySource(args.data), NullActuator(), slot, recorder=rec)
        t0 = time.perf_counter()
        run = drive_car(parts, LoopOptions(mode="local", record=True))
        res = run.result
        res["record_dropped"] = rec.dropped
        res["wall_with_flush_s"] = round(time.perf_counter() - t0, 3)
    print(run.loop.timer.table(), file=sys.stderr)
    return res
