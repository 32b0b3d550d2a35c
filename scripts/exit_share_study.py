"""What an early-exit package's exit share rests on: its validation frames and its seed.

Two studies of fp32 packages from ``edgepilot train`` (docs/benchmarks.md#model, twelfth
round), on the training logs (the package's manifest names its validation sessions) and
on held-out logs:

``power PKG --logs L,L,...``
    the share calibration would certify with 1x, 2x, 4x and 8x the validation blocks,
    each point's block means keeping their mean and spread (a projection, not a
    measurement: it asks whether more held-out driving or a better exit is what is missing)

``pick K --logs L,... --held H,... PKG...``
    every package calibrated at delta and at delta / K (testing K candidates at delta / K
    each keeps the chosen one's guarantee at 1 - delta), and what its thresholds do on the
    held-out logs: would keeping the seed with the highest certified share pay?

    python scripts/exit_share_study.py power P.eppkg --logs W/data/car0-chicane-l2,...
    python scripts/exit_share_study.py pick 3 --logs ... --held W/data/heldout-... P0 P1 P2

``--trust PUB`` adds public keys to the repository's (packages another checkout signed).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from edgepilot.model.calibrate import (
    CalibrationTarget,
    answering_exit,
    block_means,
    calibrate,
    pareto_path,
    t_critical,
)
from edgepilot.model.data import FrameDataset, Sample, load_samples, split_by_ids
from edgepilot.model.nets import ArchSpec, StagedNet, build_net
from edgepilot.model.package import default_trusted_keys, load_package
from edgepilot.model.preprocess import InputSpec
from edgepilot.model.train import path_frames, predict_exits

Predicted = tuple[list[np.ndarray], list[np.ndarray], np.ndarray]


def load(path: str, trust: list[str]) -> tuple[StagedNet, InputSpec, dict]:
    pkg = load_package(path, default_trusted_keys() + trust)
    spec = InputSpec.from_dict(pkg.manifest.get("input", {}))
    net = build_net(ArchSpec.from_dict(pkg.manifest["arch"]), spec)
    net.load_state_dict(pkg.state)
    net.eval()
    return net, spec, pkg.manifest


def predict(net: StagedNet, spec: InputSpec, samples: list[Sample]) -> Predicted:
    s, c, labels = predict_exits(net, DataLoader(FrameDataset(samples, spec, None), batch_size=256))
    return [np.asarray(x) for x in s], [np.asarray(x) for x in c], labels


def split(manifest: dict, logs: list[str]) -> tuple[list[Sample], list[Sample]]:
    """(training, validation) frames as the package's training split them."""
    val_ids = set((manifest.get("training") or {}).get("val_sessions") or [])
    if not val_ids:
        raise SystemExit("the package's manifest names no validation sessions (train it with edgepilot train)")
    return split_by_ids(load_samples(logs).samples, val_ids)


def power(args: argparse.Namespace) -> None:
    net, spec, m = load(args.package, args.trust)
    train_s, val = split(m, args.logs.split(","))
    steer, conf, labels = predict(net, spec, val)
    path = pareto_path(*path_frames(net, train_s, spec), (0,))
    target = CalibrationTarget()
    blocks = np.arange(len(labels)) // target.block
    err = [np.abs(s - labels) for s in steer]
    for k in (1, 2, 4, 8):
        best = 0.0
        for th in path:  # fixed-sequence, as calibrate.choose_exits walks it
            taken = answering_exit(conf, th)
            means = block_means(np.choose(taken, err) - target.budget * err[-1], blocks)
            n = len(means) * k
            if not means.mean() + t_critical(target.delta, n - 1) * means.std(ddof=1) / math.sqrt(n) < 0:
                break
            best = max(best, float((taken < len(steer) - 1).mean()))
        print(f"{len(means) * k:5d} blocks: certified share {best:.3f}")


def pick(args: argparse.Namespace) -> None:
    held = load_samples(args.held.split(",")).samples
    for path in args.packages:
        net, spec, m = load(path, args.trust)
        train_s, val = split(m, args.logs.split(","))
        steer, conf, labels = predict(net, spec, val)
        frames = path_frames(net, train_s, spec)
        hs, hc, hl = predict(net, spec, held)
        cells = [Path(path).name]
        for delta in (CalibrationTarget.delta, CalibrationTarget.delta / args.k):
            cal = calibrate(steer, conf, labels, CalibrationTarget(delta=delta), frames, (0,))
            th = [math.inf if t is None else t for t in cal["exits"]] + [-math.inf]
            taken = answering_exit(hc, th)
            pkg_err = np.abs(np.choose(taken, hs) - hl).mean()
            cells.append(
                f"delta {delta:.4f}: validation share {sum(cal['val_exit_rate'][str(e)] for e in range(len(th) - 1)):.3f}"
                f" | held-out share {(taken < len(th) - 1).mean():.3f}, package MAE {pkg_err:.5f},"
                f" / full network {pkg_err / np.abs(hs[-1] - hl).mean():.4f}"
            )
        print(" || ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trust", action="append", default=[], metavar="PUB", help="another public key to trust")
    sub = p.add_subparsers(dest="study", required=True)
    pw = sub.add_parser("power", help="certified share with more validation blocks (projection)")
    pw.add_argument("package")
    pw.add_argument("--logs", required=True, help="the training logs, comma-separated")
    pw.set_defaults(run=power)
    pk = sub.add_parser("pick", help="each package at delta and delta / K, on held-out logs")
    pk.add_argument("k", type=int)
    pk.add_argument("packages", nargs="+")
    pk.add_argument("--logs", required=True, help="the training logs, comma-separated")
    pk.add_argument("--held", required=True, help="held-out logs, comma-separated")
    pk.set_defaults(run=pick)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
