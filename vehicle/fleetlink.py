"""The car's link to its fleet: follow the cloud's model pushes, publish its telemetry.

``follow_fleet`` opens the car's MQTT connection, attaches the model updater to the
loop's hot-swap slot, and — when the car has no model yet — waits for the fleet's
current one (the retained announcement), so a fresh car can start with nothing but a
broker address and the fleet's public key.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import Profile
from edgepilot.drive.slot import ModelSlot
from edgepilot.mqtt import Connection, broker_config
from edgepilot.schema import fleet
from vehicle.telemetry import TelemetryPublisher, offline
from vehicle.updates import ModelUpdater, attach

log = logging.getLogger(__name__)


@dataclass
class FleetLink:
    conn: Connection
    updater: ModelUpdater
    telemetry: TelemetryPublisher

    def close(self) -> None:
        self.telemetry.close()
        self.conn.close()

    def summary(self) -> dict[str, Any]:
        st = self.updater.status
        return {
            "status": None if st is None else {"version": st.version, "state": st.state, "error": st.error},
            "swapped": sorted(self.updater.swapped_at),
        }


def follow_fleet(
    profile: Profile,
    broker_url: str | None,
    slot: ModelSlot,
    cache_dir: str | Path,
    trusted_keys: list[str] | None,
    wait_s: float = 120.0,
    wait_for_model: bool = True,
    announce_keys: list[str] | None = None,
) -> FleetLink:
    will = (fleet.car_telemetry_topic(profile.car_id), offline(profile.car_id), True)
    conn = Connection(broker_config(profile.broker, broker_url), f"{profile.car_id}-fleet", will=will)
    conn.start(wait_s=2.0, required=False)  # a car drives without its fleet; this reconnects
    updater = attach(conn, slot, profile.car_id, cache_dir, trusted_keys, announce_keys)
    if slot.current is None and wait_for_model:
        log.warning(
            "%s: no model yet; waiting up to %.0f s for the fleet's current one", profile.car_id, wait_s
        )
        deadline = time.monotonic() + wait_s
        while not slot.maybe_swap():
            if time.monotonic() > deadline:
                conn.close()
                raise EdgepilotError(
                    f"no model was pushed to {profile.car_id} within {wait_s:.0f} s "
                    f"(is the cloud trainer running and has it promoted a car model?)"
                )
            time.sleep(0.05)
        log.warning("%s: running the fleet's model %s", profile.car_id, slot.version)
    return FleetLink(conn, updater, TelemetryPublisher(conn, profile.car_id))
