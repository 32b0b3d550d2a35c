"""The demo's car recipe off line, then a closed-loop drive: does a training change drive?

The demo trains its car model in the cloud and drives it once per run; this repeats that
training with one setting changed (stage widths, seed, held-out track), compresses to the
ONNX Runtime int8 package as the cloud does, and drives the demo's evaluation (the unseen
rounded_square, scene 3, 50 ms actuator latency, 2 laps) on local answers only::

    python scripts/demo_recipe_closed_loop.py collect      # the demo's 7 tracks x 2 expert laps
    python scripts/demo_recipe_closed_loop.py train w64s1 seed=1 widths=12,24,64,64,64,64
    python scripts/demo_recipe_closed_loop.py train d48s0 seed=0 skip=s_bends  # the demo's split
    python scripts/demo_recipe_closed_loop.py train l48s2 seed=2 confidence=learned
    python scripts/demo_recipe_closed_loop.py drive w64s1  # autonomy, CTE, exit share

Work goes to var/exp/. docs/benchmarks.md ("The closed-loop check") has the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "exp"
EDGEPILOT = [sys.executable, "-m", "edgepilot"]
TRACKS = ("oval", "chicane", "kidney", "s_bends", "triangle", "switchback", "random_7")  # testbed/demo.py


def collect() -> None:
    for i, track in enumerate(TRACKS):
        out = WORK / "logs" / f"expert-{track}"
        if out.exists():
            continue
        args = ["sim", "drive", "--track", track, "--pilot", "expert", "--record", str(out), "--randomize"]
        args += ["--perturb", "0.3", "--seed", str(i + 1), "--laps", "2", "--rate", "max", "--headless", "--json"]
        subprocess.run(EDGEPILOT + args, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


def train(name: str, settings: dict[str, str]) -> None:
    from edgepilot.model.compress import compress_package
    from edgepilot.model.train import TrainConfig
    from edgepilot.model.train import train as train_package

    skip = settings.pop("skip", "")  # skip=s_bends: the session the demo's cloud holds out
    logs = [str(WORK / "logs" / f"expert-{t}") for t in TRACKS if t != skip]
    cfg: dict = {"arch": "early-exit", "epochs": 6, "max_frames": 8000, "threads": 1, "seed": 0}  # the demo's cloud
    for k, v in settings.items():
        cfg[k] = [_value(x) for x in v.split(",")] if k in ("widths", "exit_weights") else _value(v)
    t0 = time.time()
    res = train_package(logs, WORK / f"{name}-fp32.eppkg", TrainConfig(**cfg))
    compress_package(res["package"], str(WORK / f"{name}.eppkg"), logs, runtime="onnx")
    out = {"name": name, "settings": settings, "train_s": round(time.time() - t0), "val_mae": res["val_steering_mae"]}
    print(json.dumps(out))


def _value(text: str) -> int | float | str:
    """seed=1 -> 1, label_sigma_bins=0.5 -> 0.5, confidence=learned -> "learned"."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def drive(name: str) -> None:
    args = ["sim", "drive", "--track", "rounded_square", "--pilot", "model", "--model", str(WORK / f"{name}.eppkg")]
    args += ["--laps", "2", "--max-seconds", "120", "--scene-seed", "3", "--latency-ms", "50", "--headless", "--json"]
    r = subprocess.run(EDGEPILOT + args, capture_output=True, text=True, check=True, cwd=ROOT)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    keep = ("autonomy", "interventions", "mean_abs_cte_m", "exit_rate", "laps", "frames")
    print(name, json.dumps({k: res.get(k) for k in keep}))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("collect", "train", "drive"):
        sys.exit(__doc__)
    if sys.argv[1] == "collect":
        collect()
    elif sys.argv[1] == "train":
        train(sys.argv[2], dict(a.split("=", 1) for a in sys.argv[3:]))
    else:
        drive(sys.argv[2])
