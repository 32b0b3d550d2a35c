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


def trusted_keys(profile: Profile) -> list[str]:
    """The profile's public keys, relative paths taken from the repo root."""
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
