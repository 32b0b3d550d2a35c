"""An edge node follows the cloud's tails pushes: verify, fetch, load, serve — no restart.

The cloud trains split-mode tails for every car model it pushes and announces them,
signed, on ``wire.TAILS_TOPIC`` (retained, so a node that starts later gets the current
one at once). For each announcement of a car model version the node does not serve yet,
a short-lived thread (never the network thread, never the batch worker) checks the
signature against the node's trusted announcement keys, reads the file from the shared ``path`` or the
retained chunks (``edgepilot.delivery``: every byte checked against the signed sha256),
loads it, checks it is bound to the announced car model, writes it into the shelf's
directory when there is one (a restarted node serves it again), and adds it to the
shelf. Anything that fails is logged as one ``tails for car model X refused: why`` line
and remembered in ``refused``; the node keeps serving what it had.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from edge_node.tails import TailShelf
from edgepilot import EdgepilotError
from edgepilot.delivery import receive
from edgepilot.model.tail import TailSet
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)


class TailsFollower:
    def __init__(
        self,
        shelf: TailShelf,
        conn: Any,  # edgepilot.mqtt.Connection: its broker settings are used for the chunks
        node_id: str,
        announce_keys: list[str] | None,
        *,
        fetch_timeout_s: float = 20.0,
        on_added: Callable[[], None] | None = None,
    ) -> None:
        self.shelf = shelf
        self.conn = conn
        self.node_id = node_id
        self.announce_keys = announce_keys
        self.fetch_timeout_s = fetch_timeout_s
        self.on_added = on_added  # the node publishes its health at once: cars re-plan sooner
        self.refused: dict[str, str] = {}  # car model version -> why
        self.added: dict[str, str] = {}  # car model version -> sha256 of its pushed tails
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def on_announcement(self, msg: paho.MQTTMessage) -> None:
        """Network thread: decide, then hand the work to a thread of its own."""
        if not msg.payload:
            return  # a cleared retained announcement
        try:
            ann = fleet.decode_announcement(msg.payload)
        except WireError as e:
            log.error("edge %s: tails announcement refused: %s", self.node_id, e)
            return
        if ann.target != "tails":
            return
        with self._lock:
            have = ann.version in self.shelf.sets and self.added.get(ann.version) in (None, ann.sha256)
            if have or ann.version in self._busy:
                return
            self._busy.add(ann.version)
        threading.Thread(target=self.receive, args=(ann,), daemon=True, name="edge-tails").start()

    def receive(self, ann: fleet.PushAnnouncement) -> bool:
        """Verify, fetch and serve the announced tails; False (logged) when refused."""
        try:
            client_id = f"{self.node_id}-tails-{time.monotonic_ns() % 10**9}"
            data = receive(ann, self.announce_keys, self.conn.cfg, client_id, self.fetch_timeout_s)
            ts = TailSet.load(data)
            if ts.car_version != ann.version:
                raise EdgepilotError(
                    f"the file holds tails for car model {ts.car_version}, announced as {ann.version}"
                )
            path = None
            if self.shelf.dir is not None:
                path = self.shelf.dir / f"{ann.version}.pt"
                tmp = path.with_name(path.name + ".part")  # not *.pt: a rescan never sees half a file
                tmp.write_bytes(data)
                tmp.replace(path)
            self.shelf.add(ts, path)
        except (EdgepilotError, OSError) as e:
            self.refused[ann.version] = str(e)
            log.error("edge %s: tails for car model %s refused: %s", self.node_id, ann.version, e)
            return False
        finally:
            with self._lock:
                self._busy.discard(ann.version)
        self.added[ann.version] = ann.sha256
        self.refused.pop(ann.version, None)
        log.warning(
            "edge %s: now serving split mode for car model %s (split points %s, pushed)",
            self.node_id,
            ann.version,
            sorted(ts.tails),
        )
        if self.on_added is not None:
            self.on_added()
        return True
