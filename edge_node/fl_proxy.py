"""``edgepilot fl proxy``: an edge node trains for a car that cannot.

A car without torch (``edgepilot[car]``) cannot fine-tune. Its logs reach the edge node
over the venue's own network (the node sits next to the track), the node runs the
car's Flower client on them, and only compressed updates cross the uplink to the cloud:
the frames never leave the venue. One process per car; a node can run several.
"""

from __future__ import annotations

from typing import Any


def cli(args: Any) -> dict[str, Any]:
    from edgepilot.fl.client import run_client
    from edgepilot.fl.options import client_options

    return run_client(client_options(args, args.car, list(args.logs), "edge"))
