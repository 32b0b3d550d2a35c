"""``edgepilot fl client``: this car joins a federated fine-tuning run.

The car trains on its own logs and sends compressed weight updates, signed with its own
key (``keys/cars/<car>.key``, ``[fl] key``); its frames stay on the car. That needs torch,
which a car install without it (``edgepilot[car]``) lacks: such a car's logs go to an edge
node on the venue's network, which trains for it (``edgepilot fl proxy``, docs/federated.md).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from edgepilot import EdgepilotError


def cli(args: Any) -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        raise EdgepilotError(
            "this car's install has no torch, so it cannot train: let an edge node train for it "
            "(`edgepilot fl proxy --car ID LOG...` on the edge node, docs/federated.md)"
        )
    from edgepilot.config import load_profile
    from edgepilot.fl.client import run_client
    from edgepilot.fl.options import client_options

    prof = load_profile(getattr(args, "profile", None))
    logs = list(args.logs) or [prof.drive.record_dir]
    return run_client(client_options(args, args.car or prof.car_id, logs, "car", prof.fl))
