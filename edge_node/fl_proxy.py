"""``edgepilot fl proxy``: an edge node trains for a car that cannot.

A car without torch (``edgepilot[car]``) cannot fine-tune. Its logs reach the edge node
over the venue's own network (the node sits next to the track), the node runs the
car's Flower client on them, and only compressed updates cross the uplink to the cloud:
the frames never leave the venue. One process per car; a node can run several.

The node signs as itself, never as the car: ``node:<node_id>`` with the node's own key
(``keys/nodes/<node_id>.key``), over the car it trains for, the round, the server's nonce,
the update's hash and its sample count. A server with client keys takes it only when that
node is listed for that car (``nodes/<node_id>.cars``), so the car's key never has to
leave the car (a car without torch needs none at all), and a node that leaks its key can
send updates for its own listed cars only (docs/federated.md, "The link").
"""

from __future__ import annotations

from typing import Any


def cli(args: Any) -> dict[str, Any]:
    from edgepilot.config import load_profile
    from edgepilot.fl.client import run_client
    from edgepilot.fl.options import client_options

    prof = load_profile(getattr(args, "profile", None), default="edge")
    node = args.node_id or prof.edge.node_id
    return run_client(client_options(args, args.car, list(args.logs), "edge", prof.fl, node=node))
