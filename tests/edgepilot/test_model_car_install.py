"""The car's path without torch, OpenCV or pygame: an ONNX package is verified, loaded
and driven through the onboard loop (replay source, model slot with a hot-swap,
split-mode features) in a process where none of them can be imported, with the same
answers as this process gives (which has all three); a torch package there is a clear
error.

Fast: a subprocess of this venv with an import hook that makes ``import torch``, ``cv2``
and ``pygame`` fail (the stand-in for the car's install). Slow: a real venv with only
``pip install .[car]`` (needs PyPI; minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgepilot.model.package import read_manifest

REPO = Path(__file__).resolve().parents[2]

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (this process stands in for the car's install)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)
NO_TORCH = 'BLOCKED = ("torch",)\n' + BLOCK
NO_TORCH_NO_OPENCV = 'BLOCKED = ("torch", "cv2", "pygame")\n' + BLOCK

CAR_PATH = textwrap.dedent(
    """
    import json, sys

    import numpy as np

    from edgepilot import EdgepilotError
    from edgepilot.model.runtime import Autopilot
    from edgepilot.schema import wire
    from edgepilot.drive.loop import DriveLoop, LoopOptions
    from edgepilot.drive.replay import ReplaySource
    from edgepilot.drive.slot import ModelSlot
    import vehicle.car, vehicle.web.server  # the car's wiring and the phone's controller import too

    pkg, torch_pkg, log, key = sys.argv[1:5]
    out = {}
    ap = Autopilot.load(pkg, [key])
    out["runtime"] = ap.runtime
    src = ReplaySource(log)
    frames = []
    while (f := src.read()) is not None:
        frames.append(f.image)
    decisions = [ap.infer(f) for f in frames]
    out["steering"] = [d.steering for d in decisions]
    out["batch_steering"] = [d.steering for d in ap.infer_batch(frames)]
    d = ap.infer(frames[0], force_final=True)
    first = ap.segments[0][-1]
    body, meta = wire.pack_features(d.outputs[first], first)  # what split mode sends
    if len(ap.segments) > 1:
        cont = ap.continue_from(wire.unpack_features(body, meta)[None], first)
        out["split_diff"] = abs(cont.steering - d.steering)
    out["features_bytes"] = len(body)

    class Motors:  # the actuator stands in for a serial link to the car's ESC and servo
        commands = 0
        def run(self, steering, throttle):
            Motors.commands += 1
        def neutral(self):
            pass
        def close(self):
            pass

    slot = ModelSlot(ap, [key])
    slot.load_async(pkg)  # a hot-swap of the same package, between two frames
    slot.wait()
    loop = DriveLoop(ReplaySource(log), Motors(), model=slot, options=LoopOptions(mode="local"))
    loop.run()
    out["loop"] = loop.result()
    out["commands"] = Motors.commands
    try:
        Autopilot.load(torch_pkg, [key])
        out["torch_pkg"] = "loaded"
    except EdgepilotError as e:
        out["torch_pkg"] = str(e)
    out["torch_imported"] = any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    out["cv2_imported"] = any(m == "cv2" or m.startswith("cv2.") for m in sys.modules)
    from edgepilot import imaging
    out["imaging"] = imaging.backend()
    print(json.dumps(out))
    """
)


def run_car_path(python: str, tiny_int8: str, tiny_model: str, log: str, hook: bool) -> dict:
    key = str(REPO / "keys" / "signing.pub")
    code = (NO_TORCH_NO_OPENCV if hook else "") + CAR_PATH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [python, "-c", code, tiny_int8, tiny_model, log, key],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_python(code: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter of this venv, at the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


def check_car_path(out: dict, tiny_int8: str, log: str) -> None:
    from edgepilot.model.evaluate import load_frames
    from edgepilot.model.runtime import Autopilot

    assert out["runtime"] == "onnx" and not out["torch_imported"]
    assert not out["cv2_imported"] and out["imaging"] == "numpy"
    # the same numbers as this process (torch and OpenCV at hand) gets from the same package
    frames, _ = load_frames([log])
    ap = Autopilot.load(tiny_int8)
    here = [ap.infer(f).steering for f in frames]
    assert out["steering"] == pytest.approx(here, abs=1e-6)
    assert out["batch_steering"] == pytest.approx(here, abs=1e-5)
    assert out.get("split_diff", 0.0) < 0.02 and out["features_bytes"] > 0
    loop = out["loop"]
    assert loop["frames"] == len(frames) == out["commands"]
    assert sum(loop["exit_rate"].values()) == pytest.approx(1.0, abs=1e-3)
    assert loop["swaps"] == 1 and loop["steering_mae"] is not None
    assert "torch" in out["torch_pkg"] and "compress" in out["torch_pkg"]  # the fix, in one line


def test_car_path_runs_with_torch_absent(tiny_int8, tiny_model, sample_logs):
    assert read_manifest(tiny_int8)["runtime"] == "onnx"  # compress's default: the car's runtime
    out = run_car_path(sys.executable, tiny_int8, tiny_model, sample_logs[0], hook=True)
    check_car_path(out, tiny_int8, sample_logs[0])


def test_the_car_commands_run_with_torch_absent(tiny_int8, sample_logs, tmp_path):
    """``edgepilot replay`` as a car runs it (no torch, no OpenCV) and ``sim drive --pilot
    model`` (no torch; the simulator draws with OpenCV): the CLI, the car's wiring and the
    loop import neither for an ONNX package."""
    run = textwrap.dedent(
        """
        import json
        from edgepilot.cli import main
        rc = main(sys.argv[1:])
        mods = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({"rc": rc, "blocked": mods}))
        """
    )
    runs = [
        (NO_TORCH_NO_OPENCV, ["replay", sample_logs[0], "--model", tiny_int8, "--json"]),
        (
            NO_TORCH,
            [
                "sim",
                "drive",
                "--pilot",
                "model",
                "--model",
                tiny_int8,
                "--max-seconds",
                "2",
                "--headless",
                "--json",
            ],
        ),
    ]
    for hook, argv in runs:
        r = run_python(hook + run, argv)
        lines = r.stdout.strip().splitlines()
        assert r.returncode == 0 and lines, r.stderr[-3000:]
        assert json.loads(lines[-1]) == {"rc": 0, "blocked": []}, r.stderr[-3000:]
        assert json.loads(lines[-2])["frames"] > 0  # the command's own JSON result


def test_a_command_the_car_install_cannot_run_names_the_extra(sample_logs):
    """The simulator draws with OpenCV: on the car's install ``sim drive`` says which extra
    brings it, in one line, instead of a traceback."""
    run = "from edgepilot.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    r = run_python(
        NO_TORCH_NO_OPENCV + run, ["sim", "drive", "--pilot", "expert", "--max-seconds", "1", "--headless"]
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert 'needs cv2, which this install leaves out: pip install "edgepilot[opencv]"' in r.stderr


@pytest.mark.slow
def test_car_extra_installs_and_drives_without_torch(tmp_path, tiny_int8, tiny_model, sample_logs):
    """A real venv with ``pip install .[car]`` only: torch, OpenCV and pygame are not there at all."""
    venv = tmp_path / "car"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", f"{REPO}[car]"], capture_output=True, text=True, timeout=1800
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    for absent in ("torch", "cv2", "pygame"):
        r = subprocess.run([py, "-c", f"import {absent}"], capture_output=True, text=True)
        assert r.returncode != 0 and absent in r.stderr
    out = run_car_path(py, tiny_int8, tiny_model, sample_logs[0], hook=False)
    check_car_path(out, tiny_int8, sample_logs[0])
