"""The edge node's command: ``edgepilot edge``."""

from __future__ import annotations

import argparse

from edgepilot.cli import Command, add_broker


def _edge(p: argparse.ArgumentParser) -> None:
    add_broker(p)
    p.add_argument("--model", metavar="PKG", help="the edge model package (builtin:pilotnet for transport tests)")
    p.add_argument("--node-id", help="this node's id (default: the profile's edge.node_id)")
    p.add_argument("--tails", metavar="FILE|DIR", help="split-mode tails: a file, or a directory of them (one per car model)")


COMMANDS = [
    Command(("edge",), "run an edge node: answer hard frames for the fleet", "edge_node.service:cli", _edge),
]
