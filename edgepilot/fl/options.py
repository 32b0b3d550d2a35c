"""The federated client's options and command-line arguments, shared by ``fl client`` (the car) and
``fl proxy`` (an edge node acting for a car). Light on purpose: the command line imports
this for ``--help``, before torch or Flower."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from edgepilot import EdgepilotError
from edgepilot.config import FlLinkConfig

# testing aids: "unsigned" sends without a signature, "replay" sends the previous round's
# signed answer again (both refused by a server with client keys)
FAULTS = ("nan", "huge", "shape", "drop", "slow", "unsigned", "replay")

# the update compression a server asks its cars for, as `edgepilot bench fl` measured it
# (docs/benchmarks.md#federated-fine-tuning-issue-17): top-k share of each tensor, and of
# the early exits' heads (at TOPK exit 1 fell behind the final head; fl.local.tensor_ratios)
TOPK = 0.04
EXIT_TOPK = 0.12


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
    tls_ca: str | None = None  # the CA that signed the server's certificate: TLS on
    insecure: bool = False  # plaintext to a server that is not on this machine
    key: str | None = None  # the signing key (default keys/cars/<car>.key, keys/nodes/<node>.key)
    node: str | None = None  # role "edge": the node that trains for the car, and signs

    @property
    def signer(self) -> tuple[str, str]:
        """(kind, id) this client signs as: the car itself, or the node acting for it."""
        if self.role != "edge":
            return "car", self.car
        if not self.node:
            raise EdgepilotError("an edge node training for a car signs as itself: give its id (--node-id)")
        return "node", self.node


def client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the federated server (default: the profile's [fl] server, 127.0.0.1:9092)",
    )
    p.add_argument("--max-frames", type=int, help="cap on local training frames (evenly subsampled)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="the CA that signed the server's certificate: TLS on (default: the profile's [fl] tls_ca); "
        "a server off this machine needs one, or --insecure",
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        help="Ed25519 key the updates are signed with (default: the profile's [fl] key, else "
        "keys/cars/<car>.key, for `fl proxy` keys/nodes/<node>.key; made by `edgepilot keys --car/--node`)",
    )
    p.add_argument("--insecure", action="store_true", help="allow plaintext to a server off this machine")
    # testing aids for `bench fl` and the tests: a car that misbehaves in one round
    p.add_argument("--fault", choices=FAULTS, help=argparse.SUPPRESS)
    p.add_argument("--fault-round", type=int, default=1, help=argparse.SUPPRESS)  # 0: every round


def client_options(
    args: argparse.Namespace,
    car: str,
    logs: list[str],
    role: str,
    link: FlLinkConfig,
    node: str | None = None,
) -> ClientOptions:
    """The client's options from parsed ``fl client``/``fl proxy`` arguments over the
    profile's ``[fl]``."""
    return ClientOptions(
        car=car,
        logs=logs,
        server=args.server or link.server,
        role=role,
        max_frames=args.max_frames,
        threads=args.threads,
        connect_timeout_s=args.connect_timeout,
        fault=args.fault,
        fault_round=args.fault_round,
        tls_ca=args.tls_ca or link.tls_ca,
        insecure=bool(args.insecure or link.insecure),
        key=args.key or link.key,
        node=node,
    )
