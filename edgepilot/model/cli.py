"""Handlers of the model commands (listed in ``edgepilot/commands.py``): train, eval,
calibrate, compress, keys, bench model. Each takes the argparse namespace and returns
the result dict."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgepilot import EdgepilotError

DEFAULT_EPOCHS = {"early-exit": 12, "pilotnet": 25, "edge": 20}
RUNTIMES = ("onnx", "torch")
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


def _mutual(args: argparse.Namespace) -> float:
    from edgepilot.model.train import TrainConfig, check_share

    gamma = getattr(args, "mutual", None)
    return TrainConfig.mutual if gamma is None else check_share("--mutual", gamma)


def train(args: argparse.Namespace) -> dict:
    from edgepilot.model.train import TrainConfig
    from edgepilot.model.train import train as run

    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.arch]
    if epochs < 1:
        raise EdgepilotError("--epochs must be at least 1")
    widths = _ints(args, "widths", "channel widths")
    head0 = _ints(args, "head0", "ROWS,COLS,HIDDEN", count=3)
    head1 = _ints(args, "head1", "ROWS,COLS,HIDDEN", count=3) or TrainConfig().head1
    cfg = TrainConfig(
        arch=args.arch,
        epochs=epochs,
        seed=args.seed,
        widths=widths,
        head0=head0,
        head1=head1,
        labels=_labels(args),
        confidence=getattr(args, "confidence", "entropy"),
        mutual=_mutual(args),
    )
    return run(args.logs, args.out, cfg, teacher=args.teacher, init=args.init, key=args.key)


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
        runtime=getattr(args, "runtime", None) or "onnx",
    )


def compress_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", metavar="PKG")
    p.add_argument("--out", required=True, metavar="PKG")
    p.add_argument("--calib", nargs="+", metavar="LOG", help="logs to draw calibration frames from")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="onnx",
        help="onnx (default): the car's runtime, ONNX Runtime int8, needs no torch; "
        "torch: TorchScript int8 for installs with torch",
    )
    p.add_argument(
        "--int8-logits",
        action="store_true",
        help="quantise the exits' last linear too (default: float logits, ~3%% lower steering MAE)",
    )
    p.add_argument("--key", help="private key to sign with")


def calibrate(args: argparse.Namespace) -> dict:
    from edgepilot.model.calibrate import CalibrationTarget
    from edgepilot.model.recalibrate import recalibrate

    if getattr(args, "agree_tol", None) is not None:
        raise EdgepilotError(
            "--agree-tol is gone: exits are now chosen by their error against the label; "
            "use --budget (e.g. 1.05: the package may be 5%% less accurate than the full network)"
        )
    d = CalibrationTarget()

    def arg(name: str, default: float) -> float:
        v = getattr(args, name, None)
        return default if v is None else v

    target = CalibrationTarget(
        budget=arg("budget", d.budget),
        delta=arg("delta", d.delta),
        ok_tol=arg("ok_tol", d.ok_tol),
        max_offload=arg("max_offload", d.max_offload),
    )
    if target.budget < 1 or not 0 < target.delta < 1:
        raise EdgepilotError(
            "--budget must be >= 1 (a ratio to the full network's MAE), --delta within (0, 1)"
        )
    if target.ok_tol <= 0 or not 0 <= target.max_offload <= 1:
        raise EdgepilotError("--ok-tol must be positive, --max-offload within [0, 1]")
    return recalibrate(args.package, args.out, args.logs, target, key=args.key, trusted=_trusted(args))


def calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", metavar="PKG", help="an fp32 package (compress afterwards)")
    p.add_argument(
        "logs", nargs="+", metavar="LOG", help="logs whose validation sessions to use (the training logs)"
    )
    p.add_argument("--out", required=True, metavar="PKG")
    p.add_argument(
        "--budget",
        type=float,
        help="the package's steering MAE may be at most this times the full network's (default "
        "1.03; larger: exits answer more frames, faster, less accurate)",
    )
    p.add_argument(
        "--delta", type=float, help="the budget holds with probability >= 1 - delta (default 0.05)"
    )
    p.add_argument(
        "--ok-tol",
        type=float,
        help="a local answer is fine within this of the label (default 0.05; smaller: more offloading)",
    )
    p.add_argument(
        "--max-offload", type=float, help="cap on the share of hard frames per exit (default 0.15)"
    )
    p.add_argument("--key", help="private key to sign with")


def bench(args: argparse.Namespace) -> dict:
    from edgepilot.model.evaluate import bench as run
    from edgepilot.model.evaluate import load_frames
    from edgepilot.model.runtime import Autopilot

    trusted = _trusted(args)
    model = Autopilot.load(args.model, trusted)
    baseline = Autopilot.load(args.baseline, trusted)
    torch_pkg = getattr(args, "torch_model", None)
    torch_model = Autopilot.load(torch_pkg, trusted) if torch_pkg else None
    if torch_model is not None and torch_model.runtime != "torch":
        raise EdgepilotError(f"--torch-model {torch_pkg}: not a torch package (compress --runtime torch)")
    frames, labels = load_frames(args.data, BENCH_FRAMES)
    out = run(model, baseline, frames, labels, torch_model=torch_model)
    out["model"], out["baseline"] = str(Path(args.model)), str(Path(args.baseline))
    if torch_pkg:
        out["torch_model"] = str(Path(torch_pkg))
    return out


def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PKG", help="the car package (ONNX)")
    p.add_argument("--baseline", required=True, metavar="PKG", help="e.g. PilotNet fp32")
    p.add_argument(
        "--torch-model",
        metavar="PKG",
        help="the same car package for the torch runtime (compress --runtime torch), timed alongside",
    )
    p.add_argument("--data", required=True, nargs="+", metavar="LOG")
