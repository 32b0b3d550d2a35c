"""Handlers of the model commands (listed in ``edgepilot/commands.py``): train, eval,
calibrate, compress, keys, bench model. Each takes the argparse namespace and returns
the result dict."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgepilot import EdgepilotError

DEFAULT_EPOCHS = {"early-exit": 25, "pilotnet": 25, "edge": 20}
EVAL_FRAMES = 20000
BENCH_FRAMES = 2000


def _trusted(args: argparse.Namespace) -> list[str] | None:
    """The profile's trusted keys when a profile names some; else keys/*.pub."""
    if getattr(args, "profile", None):
        from edgepilot.config import load_profile

        keys = load_profile(args.profile).model.trusted_keys
        return keys or None
    return None


def _ints(args: argparse.Namespace, name: str, what: str, count: int | None = None) -> list[int]:
    """``--name 1,2,3`` -> [1, 2, 3] (empty when not given); positive integers only."""
    text = getattr(args, name, None)
    if not text:
        return []
    flag = "--" + name.replace("_", "-")
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        raise EdgepilotError(
            f"{flag} must be positive integers separated by commas ({what}), got {text!r}"
        ) from None
    if min(vals) < 1 or (count is not None and len(vals) != count):
        n = f"{count} " if count else ""
        raise EdgepilotError(
            f"{flag} must be {n}positive integers separated by commas ({what}), got {text!r}"
        )
    return vals


def _labels(args: argparse.Namespace) -> tuple[str, ...]:
    from edgepilot.schema.log import LABEL_SOURCES, TRAINING_LABELS

    text = getattr(args, "labels", None)
    if not text:
        return TRAINING_LABELS
    got = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in got if x not in LABEL_SOURCES or x == "none"]
    if bad or not got:
        raise EdgepilotError(f"--labels takes human, expert, edge (comma-separated), got {text!r}")
    return got


def train(args: argparse.Namespace) -> dict:
    from edgepilot.model.train import TrainConfig
    from edgepilot.model.train import train as run

    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.arch]
    if epochs < 1:
        raise EdgepilotError("--epochs must be at least 1")
    widths = _ints(args, "widths", "channel widths")
    head0 = _ints(args, "head0", "ROWS,COLS,HIDDEN", count=3)
    cfg = TrainConfig(
        arch=args.arch, epochs=epochs, seed=args.seed, widths=widths, head0=head0, labels=_labels(args)
    )
    return run(args.logs, args.out, cfg, teacher=args.teacher, key=args.key)


def evaluate(args: argparse.Namespace) -> dict:
    from edgepilot.model.evaluate import evaluate as run
    from edgepilot.model.evaluate import load_frames
    from edgepilot.model.runtime import Autopilot

    ap = Autopilot.load(args.package, _trusted(args))
    frames, labels = load_frames(args.logs, EVAL_FRAMES)
    return run(ap, frames, labels)


def compress(args: argparse.Namespace) -> dict:
    from edgepilot.model.compress import compress_package

    if not args.calib:
        raise EdgepilotError("compress needs --calib LOG... (frames to calibrate the int8 ranges)")
    return compress_package(
        args.package,
        args.out,
        args.calib,
        key=args.key,
        trusted=_trusted(args),
        float_logits=not getattr(args, "int8_logits", False),
    )


def calibrate(args: argparse.Namespace) -> dict:
    from edgepilot.model.calibrate import CalibrationTarget
    from edgepilot.model.recalibrate import recalibrate

    d = CalibrationTarget()
    target = CalibrationTarget(
        agree_tol=d.agree_tol if args.agree_tol is None else args.agree_tol,
        ok_tol=d.ok_tol if args.ok_tol is None else args.ok_tol,
        max_offload=d.max_offload if args.max_offload is None else args.max_offload,
    )
    if min(target.agree_tol, target.ok_tol) <= 0 or not 0 <= target.max_offload <= 1:
        raise EdgepilotError("--agree-tol and --ok-tol must be positive, --max-offload within [0, 1]")
    return recalibrate(args.package, args.out, args.logs, target, key=args.key, trusted=_trusted(args))


def bench(args: argparse.Namespace) -> dict:
    from edgepilot.model.evaluate import bench as run
    from edgepilot.model.evaluate import load_frames
    from edgepilot.model.runtime import Autopilot

    trusted = _trusted(args)
    model = Autopilot.load(args.model, trusted)
    baseline = Autopilot.load(args.baseline, trusted)
    frames, labels = load_frames(args.data, BENCH_FRAMES)
    out = run(model, baseline, frames, labels)
    out["model"], out["baseline"] = str(Path(args.model)), str(Path(args.baseline))
    return out
