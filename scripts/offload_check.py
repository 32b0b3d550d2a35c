"""The cloud's open-loop edge check (``retrain.offload_check``) on a demo clone's store.

Every car model against every edge model of a finished ``./launch/demo`` run, on one
held-out session: how many frames the car would offload, the car's own MAE there and the
edge's, and the ratio the edge gate limits (``edge_offload_ratio``)::

    python scripts/offload_check.py /tmp/demo4 switchback

docs/cloud.md (gate) and docs/benchmarks.md#demo have the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloud_trainer.retrain import offload_check
from edgepilot.config import RetrainConfig
from edgepilot.model.evaluate import load_frames
from edgepilot.model.runtime import Autopilot


def main(demo: str, held: str, frames: int = 2000) -> None:
    store = Path(demo) / "var" / "demo" / "store"
    trusted = [str(Path(demo) / "keys" / "signing.pub")]
    held_frames = load_frames([str(store / "logs" / "sim-1" / f"expert-{held}")], frames)
    cfg = RetrainConfig()
    for car_path in sorted((store / "models" / "car").glob("*/package.eppkg")):
        car = Autopilot.load(car_path, trusted)
        for edge_path in sorted((store / "models" / "edge").glob("*/package.eppkg")):
            check, info = offload_check(car, Autopilot.load(edge_path, trusted), *held_frames, cfg)
            verdict = "not judged" if check is None else f"{check['value']}x, {'pass' if check['passed'] else 'FAIL'}"
            print(f"car {car.version}  edge {edge_path.parent.name}: {info} -> {verdict}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
