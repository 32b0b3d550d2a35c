"""The edge node's command: ``edgepilot edge``."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker
from edgepilot.fl.options import client_arguments


def _edge(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--model", metavar="PKG", help="the edge model package (builtin:pilotnet for transport tests)")
    p.add_argument("--node-id", help="this node's id (default: the profile's edge.node_id)")
    p.add_argument("--tails", metavar="FILE|DIR", help="split-mode tails: a file, or a directory of them (one per car model)")


def _fl_proxy(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="the car's logs, as they reached this node on the venue's network")
    p.add_argument("--car", required=True, help="the car this node trains for")
    p.add_argument(
        "--node-id",
        help="this node's id, which it signs the updates as (default: the profile's edge.node_id; "
        "its key: keys/nodes/<id>.key, or --key)",
    )
    client_arguments(p)


COMMANDS = [
    Command(("edge",), "run an edge node: answer hard frames for the fleet", "edge_node.service:cli", _edge),
    Command(
        ("fl", "proxy"),
        "federated fine-tuning for a car that cannot train: this node trains on its logs, sends updates",
        "edge_node.fl_proxy:cli",
        _fl_proxy,
    ),
]
