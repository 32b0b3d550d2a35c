"""The demo's second car model again, offline, at a given learning rate.

Trains the car model as the demo's second cloud run does (3 epochs warm from the first
run's fp32 package, the expert logs and the car's first drive, at most 8000 frames,
validated on the held-out random_7) from a finished demo's store, and prints its
calibrated exit share on validation and its validation MAEs (final head, package)::

    python scripts/warm_car_lr.py /tmp/demo16 2e-3      # the default: the demo's own model
    python scripts/warm_car_lr.py /tmp/demo16 5e-4

Run from anywhere; it works in the demo's clone (its keys verify the packages).
docs/benchmarks.md#demo (ninth round) has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from edgepilot.model.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, help="a finished demo's clone")
    p.add_argument("lr", type=float)
    p.add_argument("--epochs", type=int, default=3, help="the demo's warm run: 3")
    p.add_argument("--first", help="the first car model's version (default: the oldest in the store)")
    a = p.parse_args()
    demo = a.demo.resolve()
    os.chdir(demo)
    logs_dir = demo / "var/demo/store/logs/sim-1"
    # in the cloud's order (its store keys, sorted): the order moves the shuffle, and the
    # share with it (car-drive-1 last instead of first: 6% instead of 13% on demo16's store)
    logs = sorted([str(x) for x in logs_dir.glob("expert-*")] + [str(logs_dir / "car-drive-1")])
    held = [x for x in logs if x.endswith("random_7")]
    models = sorted((demo / "var/demo/store/models/car").glob(f"*{a.first or ''}*/fp32.eppkg"))
    out = Path(f"/tmp/warm-{demo.name}-{a.lr}-{a.epochs}.eppkg")
    cfg = TrainConfig(epochs=a.epochs, max_frames=8000, lr=a.lr)
    r = train([x for x in logs if x not in held], out, cfg, init=str(models[0]), val_logs=held)
    keep = ("exit_rate", "val_steering_mae", "val_steering_mae_exits", "elapsed_s")
    print(json.dumps({"demo": str(demo), "lr": a.lr, "epochs": a.epochs, "init": models[0].parent.name, **{k: r[k] for k in keep}}))


if __name__ == "__main__":
    main()
