"""``edgepilot calibrate``: choose another speed/accuracy point for a trained package.

The exit and offload thresholds are not weights: they are chosen on validation frames to
meet a stated target (``calibrate.CalibrationTarget``). A looser agreement tolerance lets
the early exits answer more frames (faster, less accurate); a tighter ``ok_tol`` makes more
frames hard (more offloading). This command re-runs that choice on an fp32 package without
retraining and writes a new signed package whose parent is the old one; compress it
afterwards (an int8 package's graphs are cut at the exits that are on, so its thresholds
cannot change after compression).

Validation frames: the by-session validation split of the given logs, with the rule and
the seed training used (the same sessions when the training logs are given and training
used every frame); the threshold path is built on the other sessions' frames.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import DataLoader

from edgepilot import EdgepilotError
from edgepilot.model.calibrate import CalibrationTarget, calibrate
from edgepilot.model.data import FrameDataset, Sample, load_samples, split_by_ids, split_by_session
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.package import load_package, load_private_key, save_package
from edgepilot.model.preprocess import InputSpec
from edgepilot.model.train import TrainConfig, path_frames, predict_exits, untrained_exits


def recalibrate(
    src: str | Path,
    out: str | Path,
    logs: list[str],
    target: CalibrationTarget,
    *,
    key: str | None = None,
    trusted: list[str] | None = None,
) -> dict:
    signing_key = load_private_key(key, create=True)
    pkg = load_package(src, trusted)
    m = dict(pkg.manifest)
    if m.get("quant", "fp32") != "fp32":
        raise EdgepilotError(
            f"{src}: calibrate its fp32 parent, then compress (an int8 package is cut at its exits)"
        )
    spec = InputSpec.from_dict(m.get("input", {}))
    net = build_net(ArchSpec.from_dict(m["arch"]), spec)
    net.load_state_dict(pkg.state)
    if len(net.stages) < 2:
        raise EdgepilotError(f"{src}: a single-exit network has no exit thresholds to calibrate")
    seed = int((m.get("training") or {}).get("seed", 0))
    # packages from before exit weights were recorded trained every exit
    off = untrained_exits((m.get("training") or {}).get("exit_weights") or [1.0] * len(net.stages))
    train_s, val = _split(load_samples(logs).samples, m.get("training") or {}, seed)
    steer, conf, labels = predict_exits(net, DataLoader(FrameDataset(val, spec, None), batch_size=256))
    cal = calibrate(steer, conf, labels, target, path_frames(net, train_s, spec), off)
    m.update(
        parent=pkg.manifest.get("version"),
        version=f"{pkg.manifest.get('version', 'model')}-cal-{time.strftime('%Y%m%d-%H%M%S')}",
        created=time.time(),
        thresholds={"exits": cal["exits"], "offload": cal["offload"]},
        calibration=cal,
    )
    m["metrics"] = {
        **(m.get("metrics") or {}),
        "val_steering_mae_exits": cal["val_steering_mae_exits"],
        "val_exit_rate": cal["val_exit_rate"],
    }
    path = save_package(out, m, pkg.state, signing_key)
    return {
        "package": str(path),
        "version": m["version"],
        "parent": m["parent"],
        "target": target.to_dict(),
        "thresholds": m["thresholds"],
        "val_frames": len(labels),
        "val_exit_rate": cal["val_exit_rate"],
        "val_offload_rate": cal["val_offload_rate"],
        "val_steering_mae": cal["val_steering_mae_exits"],
        "val_steering_mae_before": (pkg.manifest.get("calibration") or {}).get("val_steering_mae_exits"),
    }


def _split(samples: list[Sample], training: dict, seed: int) -> tuple[list[Sample], list[Sample]]:
    """The sessions training validated on, when the logs hold them (they are still new to
    the model: a package whose validation logs were given apart, by the cloud, could not
    find them by seed); else training's seeded split."""
    recorded = set(training.get("val_sessions") or ())
    if recorded & {s.session for s in samples}:
        return split_by_ids(samples, recorded)
    seen = (training.get("init") or {}).get("seen_sessions") or ()
    return split_by_session(samples, TrainConfig().val_fraction, seed, seen=seen)
