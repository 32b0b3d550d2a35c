"""The federated client's options and command-line arguments, shared by ``fl client`` (the car) and
``fl proxy`` (an edge node acting for a car). Light on purpose: the command line imports
this for ``--help``, before torch or Flower."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

FAULTS = ("nan", "huge", "shape", "drop", "slow")


@dataclass
class ClientOptions:
    car: str
    logs: list[str]
    server: str = "127.0.0.1:9092"
    role: str = "car"  # "car": on the car itself; "edge": an edge node acting for the car
    max_frames: int | None = None
    threads: int = 1
    connect_timeout_s: float = 60.0
    fault: str | None = None
    fault_round: int = 1


def client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:9092", metavar="HOST:PORT", help="the federated server")
    p.add_argument("--max-frames", type=int, help="cap on local training frames (evenly subsampled)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
    # testing aids for `bench fl` and the tests: a car that misbehaves in one round
    p.add_argument("--fault", choices=FAULTS, help=argparse.SUPPRESS)
    p.add_argument("--fault-round", type=int, default=1, help=argparse.SUPPRESS)  # 0: every round


def client_options(args: argparse.Namespace, car: str, logs: list[str], role: str) -> ClientOptions:
    """The client's options from parsed ``fl client``/``fl proxy`` arguments."""
    return ClientOptions(
        car=car,
        logs=logs,
        server=args.server,
        role=role,
        max_frames=args.max_frames,
        threads=args.threads,
        connect_timeout_s=args.connect_timeout,
        fault=args.fault,
        fault_round=args.fault_round,
    )
