"""The federated client's command-line arguments, shared by ``fl client`` (the car) and
``fl proxy`` (an edge node acting for a car). Light on purpose: the command line imports
this for ``--help``, before torch or Flower."""

from __future__ import annotations

import argparse

FAULTS = ("nan", "huge", "shape", "drop", "slow")


def client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:9092", metavar="HOST:PORT", help="the federated server")
    p.add_argument("--max-frames", type=int, help="cap on local training frames (evenly subsampled)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
    # testing aids for `bench fl` and the tests: a car that misbehaves in one round
    p.add_argument("--fault", choices=FAULTS, help=argparse.SUPPRESS)
    p.add_argument("--fault-round", type=int, default=1, help=argparse.SUPPRESS)  # 0: every round


def client_options(args: argparse.Namespace, car: str, logs: list[str], role: str) -> object:
    """The library's ``ClientOptions`` from parsed ``fl client``/``fl proxy`` arguments."""
    from edgepilot.fl.client import ClientOptions

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
