"""The demo's second car model again, offline: a warm recipe on a finished demo's store.

Trains the car model as the demo's second cloud run does (``warm_epochs`` warm from the first
run's fp32 package, the expert logs and the car's first drive, at most 8000 frames,
validated on the held-out random_7) from a finished demo's store, and prints its
calibrated exit share on validation, its validation MAEs (final head, package) and each
epoch's validation MAE per exit. The learning rate is given; the other knobs default to
the cloud's (``--mutual``: ``RetrainConfig.warm_mutual``, with ``--first-run`` ``mutual``)::

    python scripts/warm_car_lr.py /tmp/demo16 2e-3                  # the demo's own recipe
    python scripts/warm_car_lr.py /tmp/demo16 2e-3 --mutual 0       # as before the tenth round
    python scripts/warm_car_lr.py /tmp/demo16 2e-3 --self-distill 0.2 --mutual 0
    python scripts/warm_car_lr.py /tmp/demo16 2e-3 --first-run --epochs 6  # the first model

Run from anywhere; it works in the demo's clone (its keys verify the packages).
docs/benchmarks.md#demo (ninth and tenth rounds) has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from edgepilot.config import RetrainConfig
from edgepilot.model.package import verify_package
from edgepilot.model.train import EXIT_WEIGHTS, TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, help="a finished demo's clone")
    p.add_argument("lr", type=float)
    p.add_argument(
        "--epochs", type=int, default=RetrainConfig.warm_epochs, help="the demo's warm run: the cloud's warm_epochs"
    )
    p.add_argument("--self-distill", type=float, default=TrainConfig().self_distill, help="beta (TrainConfig.self_distill)")
    p.add_argument("--mutual", type=float, help="gamma (default: the cloud's warm_mutual, or mutual with --first-run)")
    p.add_argument("--exit-weights", default=",".join(f"{w:g}" for w in EXIT_WEIGHTS), help="TrainConfig.exit_weights, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="the training seed (the cloud's: 0)")
    p.add_argument("--first", help="the first car model's version (default: the oldest in the store)")
    p.add_argument(
        "--first-run",
        action="store_true",
        help="train as the demo's first run does instead: from scratch, on the expert logs alone "
        "(give --epochs 6)",
    )
    a = p.parse_args()
    if a.mutual is None:
        a.mutual = RetrainConfig.mutual if a.first_run else RetrainConfig.warm_mutual
    demo = a.demo.resolve()
    os.chdir(demo)
    logs_dir = demo / "var/demo/store/logs/sim-1"
    # in the cloud's order (its store keys, sorted): the order moves the shuffle, and the
    # share with it (car-drive-1 last instead of first: 6% instead of 13% on demo16's store)
    logs = sorted([str(x) for x in logs_dir.glob("expert-*")] + ([] if a.first_run else [str(logs_dir / "car-drive-1")]))
    held = [x for x in logs if x.endswith("random_7")]
    models = sorted((demo / "var/demo/store/models/car").glob(f"*{a.first or ''}*/fp32.eppkg"))
    tag = f"{a.lr}-{a.epochs}-{a.self_distill}-{a.exit_weights.replace(',', '_')}-m{a.mutual}-s{a.seed}"
    out = Path(f"/tmp/{'cold' if a.first_run else 'warm'}-{demo.name}-{tag}.eppkg")
    init = None if a.first_run else str(models[0])
    weights = [float(w) for w in a.exit_weights.split(",")]
    cfg = TrainConfig(epochs=a.epochs, max_frames=8000, lr=a.lr, seed=a.seed, self_distill=a.self_distill, mutual=a.mutual, exit_weights=weights)
    r = train([x for x in logs if x not in held], out, cfg, init=init, val_logs=held)
    hist = verify_package(r["package"]).manifest["training"]["history"]
    curve = [[round(m, 4) for m in h["val_mae"]] for h in hist]  # per epoch: each exit's val MAE
    keep = ("exit_rate", "val_steering_mae", "val_steering_mae_exits", "elapsed_s")
    print(json.dumps({"demo": str(demo), "lr": a.lr, "epochs": a.epochs, "self_distill": a.self_distill, "mutual": a.mutual, "seed": a.seed, "exit_weights": weights, "init": init and models[0].parent.name, **{k: r[k] for k in keep}, "val_mae_per_epoch": curve}))


if __name__ == "__main__":
    main()
