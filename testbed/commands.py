"""Commands that play several parts: ``edgepilot demo``, ``bench offload`` and ``bench dashboard``."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker
from edgepilot.config import RetrainConfig
from edgepilot.fl.options import EXIT_TOPK, TOPK


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headless", action="store_true", help="no pygame window even when a display exists")
    add_broker(p)
    p.add_argument("--workdir", default="var/demo", help="where the demo keeps its logs, store and models")
    p.add_argument("--laps", type=int, default=4, help="expert laps per training track")
    p.add_argument("--eval-laps", type=int, default=2, help="laps of the evaluation drives")
    p.add_argument("--epochs", type=int, default=6, help="training epochs per cloud run")
    p.add_argument(
        "--edge-epochs",
        type=int,
        default=3,
        help="the edge model's epochs per cloud run (it trains side by side with the car model "
        "and is the larger of the two: more epochs make it the run's long pole)",
    )
    p.add_argument(
        "--gate-open",
        action="store_true",
        help="push the retrained car model whatever its quality checks say (latency is "
        "still checked): for tiny smoke runs, whose models drive at random",
    )
    p.add_argument(
        "--max-frames", type=int, default=8000, help="cap on training frames per run (validation frames are all kept)"
    )
    p.add_argument(
        "--edge-max-frames",
        type=int,
        default=4500,
        help="cap on the edge model's training frames per run, evenly spaced "
        "(the edge model is the first run's long pole; the cloud's held-out session validates it, "
        "so all six other tracks train it: docs/benchmarks.md#demo)",
    )
    p.add_argument(
        "--cold-retrain",
        action="store_true",
        help="the retraining phase trains both models from scratch (--epochs, --edge-epochs) instead of "
        f"starting from the first run's models for {RetrainConfig.warm_epochs} car epochs (at most --epochs) "
        "and 1 edge epoch (docs/cloud.md, warm start)",
    )
    p.add_argument("--scene-seed", type=int, default=3, help="the evaluation drives' scene (0: plain)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="actuator latency of the evaluation drives")
    p.add_argument("--train-timeout", type=float, default=900.0, help="seconds to wait for a training run")
    p.add_argument(
        "--dashboard-port", type=int, default=8080, help="the fleet dashboard's port (taken: any free one; 0: any)"
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the fleet dashboard")
    p.add_argument(
        "--federated",
        action="store_true",
        help="retraining phase federated: the car fine-tunes on its own log (fl client), the cloud's fl server "
        "gates and pushes; the car's log is never uploaded",
    )


def _bench_offload(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--vehicles", type=int, default=8)
    p.add_argument("--rate", type=float, default=30.0, help="frames per second per vehicle")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument(
        "--saturate",
        action="store_true",
        help="instead: start edge nodes here (1 node batch 1, 1 node batched, 2 nodes) and "
        "measure each one's saturated requests/s in alternating rounds (--duration s each)",
    )
    p.add_argument("--rounds", type=int, default=3, help="--saturate: rounds per set-up")
    p.add_argument("--window", type=int, default=64, help="--saturate: requests kept in flight")
    p.add_argument("--model", help="--saturate: the edge nodes' model (default builtin:pilotnet)")


def _bench_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cars", type=int, default=32, help="simulated cars publishing telemetry")
    p.add_argument("--rate", type=float, default=10.0, help="telemetry messages per second per car")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (page closed / open)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the two phases, alternating")
    p.add_argument(
        "--in-cloud",
        action="store_true",
        help="serve the page from the cloud trainer (`cloud --dashboard`) instead of its own process",
    )


def _bench_fl(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cars", type=int, default=4, help="simulated cars, each on its own track (non-IID)")
    p.add_argument("--laps", type=int, default=2, help="expert laps each car records")
    p.add_argument("--rounds", type=int, default=12, help="federated rounds")
    p.add_argument("--local-epochs", type=int, default=2, help="local epochs per round")
    p.add_argument(
        "--epochs", type=int, default=RetrainConfig.epochs, help="central retraining epochs (the cloud's)"
    )
    p.add_argument("--strategies", default="fedavg,fedprox", help="federated strategies to compare")
    p.add_argument("--lr", type=float, default=2e-3, help="local learning rate (cosine over the rounds)")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal strength")
    p.add_argument("--compress", choices=["none", "int8", "topk", "topk-int8"], default="topk-int8")
    p.add_argument("--topk", type=float, default=TOPK, help="share of each tensor's values a car sends")
    p.add_argument("--exit-topk", type=float, default=EXIT_TOPK, help="... of the early exits' heads")
    p.add_argument("--eval-seconds", type=float, default=30.0, help="simulated seconds per held-out track")
    p.add_argument("--workdir", default="var/bench-fl", help="logs, stores and packages (logs are reused)")
    p.add_argument("--fresh", action="store_true", help="re-record the logs")


COMMANDS = [
    Command(
        ("demo",),
        "the whole loop on one machine: collect, train, drive, offload, retrain, push",
        "testbed.demo:run",
        _demo,
    ),
    Command(
        ("bench", "fl"),
        "federated fine-tuning vs central retraining: N cars on loopback, MAE, autonomy, bytes, time",
        "testbed.fl_bench:run",
        _bench_fl,
    ),
    Command(
        ("bench", "offload"), "offload round trips through a running edge node", "testbed.offload_bench:run", _bench_offload
    ),
    Command(
        ("bench", "dashboard"),
        "the fleet dashboard in headless Chromium under N cars' telemetry: publish-to-page latency, "
        "responsiveness, broker and trainer CPU with the page open vs closed",
        "testbed.dashboard_bench:run",
        _bench_dashboard,
    ),
]
