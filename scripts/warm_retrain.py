"""The cloud's second retraining run from scratch and warm, on a copy of a demo's store.

Takes the logs of a finished ``./launch/demo`` (its store and keys), runs the first
retraining run from scratch on the expert logs, then adds the car's drive log and runs
the second run twice from the same state, warm and from scratch::

    python scripts/warm_retrain.py /tmp/demo6 run1
    python scripts/warm_retrain.py /tmp/demo6 warm
    python scripts/warm_retrain.py /tmp/demo6 scratch

Work goes to var/warm/. docs/benchmarks.md#demo ("warm retraining") has the figures.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from cloud_trainer.registry import Registry
from cloud_trainer.retrain import retrain
from cloud_trainer.store import open_store
from edgepilot.config import RetrainConfig

WORK = Path(__file__).resolve().parents[1] / "var" / "warm"
# the demo's cloud profile (testbed/demo.py: CLOUD_PROFILE)
CFG = RetrainConfig(
    epochs=6,
    edge_epochs=3,
    max_frames=8000,
    tails=False,
    eval_tracks=["long_straights"],
    eval_seconds=20.0,
    margin_mae=0.02,
    margin_autonomy=0.0,
    margin_cte_m=0.03,
)


def run(demo: Path, name: str, warm: bool) -> None:
    reg = Registry(open_store(str(WORK / "store")), [str(demo / "keys" / "signing.pub")])
    r = retrain(reg, WORK / "work", replace(CFG, warm_start=warm), key=str(demo / "keys" / "signing.key"))
    t = r["targets"]
    keep = {
        "elapsed_s": r["elapsed_s"],
        "warm_start": r.get("warm_start"),
        "heldout": r["heldout"],
        "car_train": r["car_train"],
        "edge_train": r.get("edge_train"),
        "car_heldout_exit_rate": t["car"]["candidate"]["exit_rate"],
        "gate": {k: [(c["check"], c["passed"], c["value"], c["limit"]) for c in v["gate"]["checks"]] for k, v in t.items()},
    }
    print(name, json.dumps(keep))


def main(demo: Path, step: str) -> None:
    logs = demo / "var" / "demo" / "store" / "logs" / "sim-1"
    if step == "run1":
        shutil.rmtree(WORK, ignore_errors=True)
        for d in logs.glob("expert-*"):
            shutil.copytree(d, WORK / "store" / "logs" / "sim-1" / d.name)
        run(demo, "run1", False)
        shutil.copytree(WORK / "store", WORK / "after-run1")
        return
    shutil.rmtree(WORK / "store", ignore_errors=True)
    shutil.copytree(WORK / "after-run1", WORK / "store")
    shutil.copytree(logs / "car-drive-1", WORK / "store" / "logs" / "sim-1" / "car-drive-1")
    run(demo, f"run2-{step}", step == "warm")


if __name__ == "__main__":  # the edge model trains in a spawned process that imports this module
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if len(sys.argv) != 3 or sys.argv[2] not in ("run1", "warm", "scratch"):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
