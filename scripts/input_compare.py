"""Train the car's net on another input than its default, for comparing inputs.

``edgepilot train`` gives an early-exit net ``CAR_SPEC`` (the crop at the camera's size);
this trains one with the CLI's defaults on ``--input WIDTHxHEIGHT-COLOUR`` instead
(``200x66-yuv``: PilotNet's, the input before the seventh round), so the two can be
compressed and evaluated side by side::

    python scripts/input_compare.py datasets/recordings/train --input 200x66-yuv --seed 1 --out m.eppkg
    edgepilot compress m.eppkg --out m-onnx.eppkg --calib datasets/recordings/train
    edgepilot eval m-onnx.eppkg datasets/recordings/test/*

docs/benchmarks.md#model has the runs that chose ``CAR_SPEC``.
"""

from __future__ import annotations

import argparse
import json

from edgepilot.model.cli import DEFAULT_EPOCHS
from edgepilot.model.preprocess import CAR_SPEC, InputSpec
from edgepilot.model.train import TrainConfig, train


def spec_of(text: str) -> InputSpec:
    size, colour = text.split("-")
    w, h = (int(v) for v in size.split("x"))
    return InputSpec(height=h, width=w, crop_top=CAR_SPEC.crop_top, colour=colour)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+")
    p.add_argument("--input", default="160x84-yuv", help="WIDTHxHEIGHT-COLOUR (yuv or bgr); default: CAR_SPEC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = TrainConfig(arch="early-exit", epochs=DEFAULT_EPOCHS["early-exit"], seed=a.seed)
    r = train(a.logs, a.out, cfg, spec=spec_of(a.input))
    keys = ("package", "val_steering_mae", "val_steering_mae_exits", "exit_rate", "elapsed_s")
    print(json.dumps({k: r[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
