"""The car's commands: drive and collect (the real car), sim drive (the simulated car),
replay, upload, and the loop's benchmark. Registered in pyproject.toml's
``edgepilot.commands`` entry points; handlers import their modules only when run."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker
from edgepilot.fl.options import client_arguments


def _sim_look(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", choices=["max", "realtime"], help="simulated time as fast as possible, or paced")
    p.add_argument("--scene-seed", type=int, help="draw the world's look from this seed (0: plain look)")
    p.add_argument("--latency-ms", type=float, help="delay every actuator command by this many ms")


def _web(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--web", action="store_true", help="drive from a phone or laptop browser: serve the controller page (profile [web])"
    )
    p.add_argument("--port", type=int, help="the web controller's port (default: web.port, 8887)")


def _sim_drive(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", help="track name in datasets/tracks/ or a track JSON file")
    p.add_argument("--pilot", choices=["expert", "model", "keyboard"], default="expert")
    p.add_argument("--model", help="model package (.eppkg) for --pilot model")
    p.add_argument("--laps", type=int, help="laps to drive (default 1)")
    p.add_argument("--record", metavar="DIR", help="record the drive as a driving log in DIR")
    p.add_argument("--edge", action="store_true", help="offload hard frames to the edge node")
    add_broker(p)
    _sim_look(p)
    p.add_argument("--headless", action="store_true", help="no window even when a display exists")
    p.add_argument("--perturb", type=float, default=0.0, help="expert: steering perturbation strength (0..1)")
    p.add_argument("--randomize", action="store_true", help="domain randomisation per frame (training data)")
    p.add_argument("--seed", type=int, default=0, help="seed of perturbations and randomisation")
    p.add_argument("--max-seconds", type=float, help="stop after this much simulated time")
    p.add_argument("--plot", metavar="PNG", help="trajectory plot path (default: next to the log, or none)")
    p.add_argument(
        "--follow-fleet",
        action="store_true",
        help="--pilot model: take models the cloud pushes (hot-swapped mid-drive); "
        "without --model, wait for the fleet's current one",
    )
    _web(p)


def _replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", metavar="LOG", help="driving log directory")
    p.add_argument("--model", help="model package (default: the profile's)")
    p.add_argument("--rate", choices=["max", "realtime"], default="max")
    p.add_argument("--edge", action="store_true", help="offload hard frames to the edge node")
    add_broker(p)


def _drive(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--model", metavar="PKG")
    p.add_argument("--mode", choices=["user", "local_angle", "local"])
    p.add_argument("--edge", action="store_true", help="offload hard frames to the edge node")
    p.add_argument("--headless", action="store_true", help="no window even when a display exists")
    p.add_argument("--record", metavar="DIR", help="record into DIR (default: the profile's record_dir)")
    _web(p)


def _collect(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--record", metavar="DIR", help="record into DIR (default: the profile's record_dir)")
    _web(p)


def _bench_web(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presses", type=int, default=100, help="key presses timed (default 100)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each rate phase (default 10)")
    p.add_argument("--fps", type=float, default=20.0, help="the camera's rate (default 20)")
    p.add_argument("--screenshot", help="also save a screenshot of the page here (PNG)")


def _upload(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", metavar="LOG")
    add_broker(p)


def _bench_loop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PKG")
    p.add_argument("--data", required=True, metavar="LOG")


def from_donkey_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="MYCONFIG.py", help="DonkeyCar myconfig.py or config.py (read, never run)")
    p.add_argument("--out", required=True, metavar="PROFILE.toml", help="the profile to write")
    p.add_argument("--base", metavar="CONFIG.py", help="read this first (default: config.py next to myconfig.py)")
    p.add_argument("--name", help="the profile's name (default: the file name)")
    p.add_argument("--force", action="store_true", help="replace an existing PROFILE.toml")


def _fl_client(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="*", metavar="LOG", help="this car's logs (default: the profile's record_dir)")
    p.add_argument("--car", help="car id (default: the profile's car_id)")
    client_arguments(p)


COMMANDS = [
    Command(
        ("sim", "drive"),
        "closed-loop drive in the simulator, scored per the contract",
        "vehicle.simcar:sim_drive",
        _sim_drive,
    ),
    Command(
        ("replay",), "recorded frames through the onboard loop (simulator replay mode)", "vehicle.replay:replay", _replay
    ),
    Command(("drive",), "drive the real car on the autopilot (headless works, e.g. over SSH)", "vehicle.car:drive", _drive),
    Command(
        ("collect",),
        "drive the real car and record: keyboard, gamepad, RC transmitter, or a phone's browser (--web)",
        "vehicle.car:collect",
        _collect,
    ),
    Command(("upload",), "send a driving log to the cloud trainer (resumable, idempotent)", "vehicle.upload:cli", _upload),
    Command(
        ("fl", "client"),
        "federated fine-tuning on this car (needs torch): train on its own logs, send updates, never frames",
        "vehicle.fl_client:cli",
        _fl_client,
    ),
    Command(("bench", "loop"), "the whole onboard loop in replay: fps and latency", "vehicle.replay:bench_loop", _bench_loop),
    Command(
        ("bench", "web"),
        "the web controller in headless Chromium: key press to motor command, view rate, loop rate",
        "vehicle.web.bench:run",
        _bench_web,
    ),
    Command(
        ("profile", "from-donkey"),
        "a DonkeyCar myconfig.py/config.py as a TOML profile (read, never run)",
        "vehicle.donkey_profile:from_donkey",
        from_donkey_arguments,
    ),
]
