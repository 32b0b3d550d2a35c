"""Why the demo's exit share swings: its car recipe, offline, on a demo's own logs.

``train`` trains the car's net as the demo's first cloud run does (6 epochs, at most 8000
frames; the cloud holds out random_7) on the expert logs of a finished demo (or any
directory of ``expert-*`` logs), then reports exit 1's validation share and, on held-out
logs, the package's share and MAE against its full network. ``--val-tracks`` validates on
the named tracks instead of the seeded pick of whole sessions (which tracks validate
depends on the sessions' random ids, so on every demo run)::

    python scripts/demo_recipe_sweep.py train /tmp/demo10/var/demo/logs --seed 0 \\
        --test datasets/recordings/test/* [--epochs 12] [--val-tracks s_bends triangle]

``cloud`` trains both of the demo's car models as its cloud does now: the first on every
expert log but the held-out track's, validated and calibrated on that one (``--epochs``,
the demo's 6; the 8000-frame cap on the training frames only, offload tolerance 0.03),
then the second warm from it (``--warm-epochs``, the cloud's ``warm_epochs``) with
``--drive`` (the car's log; an expert drive of the evaluation track stands in) added to
training; each package's validation share and, per ``--test`` log, its share early, its
MAE over its full network's and its MAE::

    python scripts/demo_recipe_sweep.py cloud LOGS --seed S --drive DRIVE --test T... --out DIR

``ends PKG... --test T...`` calibrates each package again on its own training and
validation frames with the threshold path ending at 100%, 96% (``calibrate.MAX_SHARE``)
and 90% of the training frames, and prints the validation share and, on the ``--test``
logs, the share early and the package's MAE over its full network's (each log weighted
alike, and omega's alone when given): what the path's end does on unseen tracks.

``curve PKG`` walks calibration's threshold path on that package's validation frames and
prints, per point, the share sent early, the mean of z (package error - 1.03 x final
head error, in units of the final head's MAE) and its 95% upper bound: what the test
accepts and how much room its bound leaves; then the largest share the same test accepts
(walking up in 2% steps) when exit 1 answers its most confident frames first, and when it
answers first the frames where it agrees with the final head (an oracle: the car cannot
know the final head's answer); and how far exit 1 and the final head disagree (mean
|difference|, mean error gap, and the spread of the gap over the test's one-second blocks,
which sets how far calibration's bound sits above the mean). docs/benchmarks.md#model
and #demo (tenth round) have the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

import edgepilot.model.train as T
from edgepilot.config import RetrainConfig
from edgepilot.model import calibrate as C
from edgepilot.model.data import FrameDataset, evenly, load_samples, split_by_ids
from edgepilot.model.evaluate import evaluate, load_frames
from edgepilot.model.package import read_manifest
from edgepilot.model.runtime import Autopilot


def expert_logs(root: str, held: list[str]) -> list[str]:
    return sorted(str(p) for p in Path(root).glob("expert-*") if not p.name.endswith(tuple(held)))


def track_of(log: str) -> dict[str, str]:
    meta = json.loads((Path(log) / "meta.json").read_text())
    return {meta["session"]: Path(log).name.removeprefix("expert-")}


def force_val(logs: list[str], tracks: list[str]) -> None:
    """Make training validate on ``tracks`` (this experiment only: the library picks
    validation sessions by seed)."""
    names = {k: v for log in logs for k, v in track_of(log).items()}

    def split(samples, frac, seed, seen=()):  # noqa: ANN001, ANN202 - split_by_session's signature
        val = [s for s in samples if names[s.session] in tracks]
        return [s for s in samples if names[s.session] not in tracks], val

    T.split_by_session = split  # type: ignore[assignment]


def train(a: argparse.Namespace) -> None:
    logs = expert_logs(a.logs, a.held)
    if a.val_tracks:
        force_val(logs, a.val_tracks)
    cfg = T.TrainConfig(epochs=a.epochs, max_frames=a.max_frames, seed=a.seed)
    T.train(logs, a.out, cfg)
    m = read_manifest(a.out)
    tracks = {k: v for log in logs for k, v in track_of(log).items()}
    res = {
        "val_tracks": sorted(tracks[s] for s in m["training"]["val_sessions"]),
        "val_mae_per_exit": [round(x, 4) for x in m["training"]["history"][-1]["val_mae"]],
        "val_exit_rate": {k: round(v, 3) for k, v in m["calibration"]["val_exit_rate"].items()},
        "test": m["calibration"]["test"],
    }
    if a.test:
        ev = evaluate(Autopilot.load(a.out), *load_frames(a.test))
        res["held_out"] = {k: round(ev[k], 4) for k in ("early_exit_rate", "mae_vs_final_head", "steering_mae")}
    print(json.dumps(res, indent=1))


def cloud(a: argparse.Namespace) -> None:
    from edgepilot.model.calibrate import CalibrationTarget

    logs = expert_logs(a.logs, a.held)
    val = sorted(str(p) for t in a.held for p in Path(a.logs).glob(f"expert-{t}"))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    first, second = Path(a.out) / f"first-s{a.seed}.eppkg", Path(a.out) / f"second-s{a.seed}.eppkg"
    runs = (
        (first, [], None, {"epochs": a.epochs, "mutual": a.mutual}),
        (second, a.drive, first, {"epochs": a.warm_epochs, "mutual": a.warm_mutual, "lr": a.warm_lr}),
    )
    for out, extra, init, options in runs:
        given = {k: v for k, v in {**options, "head1": a.head1}.items() if v is not None}  # else the library's
        cfg = T.TrainConfig(max_frames=8000, target=CalibrationTarget(ok_tol=0.03), seed=a.seed, **given)
        r = T.train(logs + list(extra), out, cfg, init=init, val_logs=val)
        res = {"model": out.stem, "val_frames": r["val_frames"], "val_exit1": r["exit_rate"]["1"]}
        ap = Autopilot.load(out)
        for log in a.test:
            ev = evaluate(ap, *load_frames([log]))
            res[Path(log).name] = [round(ev[k], 4) for k in ("early_exit_rate", "mae_vs_final_head", "steering_mae")]
        print(json.dumps(res), flush=True)


def ends(a: argparse.Namespace) -> None:
    default_end = C.MAX_SHARE
    for pkg in a.packages:
        m = read_manifest(pkg)
        net = T.load_teacher(pkg, m["arch"]["bins"])
        train_s, val = _split(m, a.max_frames)
        path = T.path_frames(net, train_s, net.input_spec)
        v = _exits(net, val)
        tests = {Path(log).name: _exits(net, load_samples([log]).samples) for log in a.test}
        res: dict = {"package": Path(pkg).name}
        for end in (1.0, 0.96, 0.90):
            C.MAX_SHARE = end  # read by pareto_path at each call; put back below
            th, _ = C.choose_exits(*v, C.CalibrationTarget(), path, off=tuple(m["calibration"]["test"]["off"]))
            held = {k: _share_ratio(th, *x) for k, x in tests.items()}
            res[str(end)] = {
                "val_share": round(_share_ratio(th, *v)[0], 3),
                "held_share": round(float(np.mean([h[0] for h in held.values()])), 3),
                "held_ratio": round(sum(h[1] for h in held.values()) / sum(h[2] for h in held.values()), 3),
                **{k: [round(h[0], 3), round(h[1] / h[2], 3)] for k, h in held.items() if "omega" in k},
            }
        C.MAX_SHARE = default_end
        print(json.dumps(res), flush=True)


def _split(m: dict, cap: int) -> tuple[list, list]:
    """A package's training frames (capped as its run capped them) and validation frames."""
    t = m["training"]
    train_s, val = split_by_ids(load_samples(t["logs"] + t.get("val_logs", [])).samples, t["val_sessions"])
    return evenly(train_s, cap), val


def _exits(net, samples: list) -> tuple:  # noqa: ANN001
    return T.predict_exits(net, DataLoader(FrameDataset(samples, net.input_spec, None), batch_size=256))


def _share_ratio(th: list[float], steer: list, conf: list, labels: np.ndarray) -> tuple[float, float, float]:
    """(share early, package MAE, full network's MAE) under thresholds ``th``."""
    taken = C.answering_exit(conf, th)
    pkg = np.choose(taken, steer)
    return float(np.mean(taken < len(steer) - 1)), float(np.abs(pkg - labels).mean()), float(np.abs(steer[-1] - labels).mean())


def curve(a: argparse.Namespace) -> None:
    m = read_manifest(a.package)
    net = T.load_teacher(a.package, m["arch"]["bins"])
    train_s, val = _split(m, 8000)  # the demo's cap
    steer, conf, lab = _exits(net, val)
    path = C.pareto_path(*T.path_frames(net, train_s, net.input_spec), off=tuple(m["calibration"]["test"]["off"]))
    err = [np.abs(x - lab) for x in steer]
    blocks, target, unit = np.arange(len(lab)) // 20, C.CalibrationTarget(), float(err[-1].mean())
    print("share early, mean z, 95% bound of z (units of the final head's MAE)")
    for th in path[:: a.every]:
        taken = C.answering_exit(conf, th)
        z = np.choose(taken, err) - target.budget * err[-1]
        ucb, _ = C.block_ucb(z, blocks, target.delta)
        print(f"{np.mean(taken < len(steer) - 1):.3f} {z.mean() / unit:+.4f} {ucb / unit:+.4f}")
    gap = C.block_means(err[1] - err[-1], blocks)
    print(
        f"exit 1 against the final head (units of its MAE): mean |difference| "
        f"{np.abs(steer[1] - steer[-1]).mean() / unit:.3f}, mean error gap {(err[1] - err[-1]).mean() / unit:+.3f}, "
        f"spread of the gap over {len(gap)} blocks {gap.std(ddof=1) / unit:.3f}"
    )
    for name, rank in (("exit 1's confidence", -conf[1]), ("oracle: agrees with the final head", np.abs(steer[1] - steer[-1]))):
        print(f"{name}: the test accepts up to {walk(np.argsort(rank), err, blocks, target):.0%}")


def walk(order: np.ndarray, err: list[np.ndarray], blocks: np.ndarray, target: C.CalibrationTarget) -> float:
    """The largest share of frames exit 1 may answer, ``order`` first, before the first
    2% step whose test fails (fixed-sequence, as calibration walks)."""
    n, accepted = len(order), 0.0
    for share in np.arange(C.GRID_STEP, 1.0 + 1e-9, C.GRID_STEP):
        taken = np.full(n, len(err) - 1)
        taken[order[: int(round(share * n))]] = 1
        z = np.choose(taken, err) - target.budget * err[-1]
        if not C.block_ucb(z, blocks, target.delta)[0] < 0:
            break
        accepted = float(share)
    return accepted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the demo's car recipe on a demo's logs")
    tr.add_argument("logs", help="a directory of expert-* logs (a demo's var/demo/logs)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--epochs", type=int, default=6, help="the demo's first run: 6")
    tr.add_argument("--max-frames", type=int, default=8000, help="the demo's cap on a run's frames")
    tr.add_argument("--held", nargs="+", default=["random_7"], help="the track(s) the cloud holds out")
    tr.add_argument("--val-tracks", nargs="*", help="validate on these tracks (default: the seeded pick)")
    tr.add_argument("--test", nargs="*", help="held-out logs to evaluate the package on")
    tr.add_argument("--out", default="var/sweep.eppkg")
    cl = sub.add_parser("cloud", help="the demo's first and second car models as its cloud trains them")
    cl.add_argument("logs", help="a directory of expert-* logs")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument(
        "--held", nargs="+", default=["random_7"], help="the track(s) the cloud holds out and calibrates on"
    )
    cl.add_argument("--drive", nargs="*", default=[], help="the car's drive log(s), trained on by the second model")
    cl.add_argument("--test", nargs="+", required=True, help="held-out logs, each evaluated apart")
    cl.add_argument("--epochs", type=int, default=6, help="the first model's epochs (the demo's --epochs)")
    cl.add_argument(
        "--warm-epochs", type=int, default=RetrainConfig.warm_epochs, help="the second model's (the cloud's warm_epochs)"
    )
    cl.add_argument("--head1", type=int, nargs=3, metavar=("ROWS", "COLS", "HIDDEN"), help="exit 1's head")
    cl.add_argument(
        "--mutual", type=float, default=RetrainConfig.mutual, help="the first model's mutual share (the cloud's cold runs')"
    )
    cl.add_argument(
        "--warm-mutual", type=float, default=RetrainConfig.warm_mutual, help="the second model's (the cloud's warm_mutual)"
    )
    cl.add_argument("--warm-lr", type=float, help="the second model's learning rate (default: the library's)")
    cl.add_argument("--out", default="var/sweep")
    en = sub.add_parser("ends", help="exit shares and held-out ratios with the path ending at 100/96/90%%")
    en.add_argument("packages", nargs="+")
    en.add_argument("--test", nargs="+", required=True, help="held-out logs, each weighted alike")
    en.add_argument("--max-frames", type=int, default=8000, help="the training frames' cap, as the run's")
    cu = sub.add_parser("curve", help="calibration's test along the threshold path of a package")
    cu.add_argument("package")
    cu.add_argument("--every", type=int, default=2, help="print every Nth point")
    a = p.parse_args()
    {"train": train, "cloud": cloud, "ends": ends, "curve": curve}[a.cmd](a)


if __name__ == "__main__":
    main()
