"""The dashboard's side of the broker: the fleet's topics into the view, changes out.

Subscribes to exactly the rows of the table of topics where ``dashboard`` reads, and
publishes only ``cloud/models`` (a ``fleet.ModelChange`` signed with the operator's
token), waiting for the cloud trainer's ``fleet.ModelChangeResult``. A message that does
not decode is counted and shown on the page (``bus`` section), never dropped silently.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as paho

from cloud_trainer.dashboard.view import FleetView
from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet, wire
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)


def _level(topic: str, index: int) -> str:
    return topic.split("/")[index]


class DashboardBus:
    def __init__(self, cfg: BrokerConfig, view: FleetView, client_id: str | None = None) -> None:
        self.view = view
        self.cfg = cfg
        self.conn = Connection(
            cfg,
            client_id or f"dashboard-{socket.gethostname()}-{secrets.token_hex(3)}",
            on_connect=self._connected,
        )
        self.bad = 0
        self._waiting: dict[str, Future[fleet.ModelChangeResult]] = {}
        self._lock = threading.Lock()
        subs: list[tuple[str, int, Callable[[paho.MQTTMessage], None]]] = [
            (
                wire.HEALTH_FILTER,
                1,
                self._on(wire.decode_health, lambda m, h: view.edge_health(_level(m.topic, 3), h)),
            ),
            (
                fleet.CAR_MODEL_FILTER,
                1,
                self._on(fleet.decode_car_status, lambda m, s: view.car_status(_level(m.topic, 3), s)),
            ),
            # telemetry is QoS 0 on the car's side: asking for 1 would only add acknowledgements
            (
                fleet.CAR_TELEMETRY_FILTER,
                0,
                self._on(fleet.decode_car_telemetry, lambda m, t: view.car_telemetry(_level(m.topic, 3), t)),
            ),
            (fleet.CLOUD_RUNS_TOPIC, 1, self._on(fleet.decode_run_summary, lambda m, r: view.run_summary(r))),
            (fleet.CLOUD_MODELS_RESULT_TOPIC, 1, self._on(fleet.decode_model_change_result, self._result)),
        ]
        for target in ("car", "edge"):
            subs.append(
                (wire.model_topic(target), 1, self._on(fleet.decode_announcement, self._announcement))
            )
        for flt, qos, handler in subs:
            self.conn.subscribe(flt, handler, qos=qos)

    def start(self, wait_s: float = 3.0) -> bool:
        """Connect (in the background when the broker is not there yet: the page says so)."""
        ok = self.conn.start(wait_s=wait_s, required=False)
        if not ok:
            log.warning(
                "dashboard: no broker at %s yet (%s); retrying",
                self.cfg.url,
                self.conn.last_error or "no answer",
            )
        self._status()
        return ok

    def close(self) -> None:
        self.conn.close()

    # -- incoming ---------------------------------------------------------------------------------
    def _on(
        self, decode: Callable[[bytes], Any], keep: Callable[[paho.MQTTMessage, Any], None]
    ) -> Callable[[paho.MQTTMessage], None]:
        def handle(msg: paho.MQTTMessage) -> None:
            if not msg.payload:  # a retained message cleared: the entity is gone
                keep(msg, None)
                return
            try:
                item = decode(msg.payload)
            except WireError as e:
                self.bad += 1
                self.view.put(
                    "bus",
                    "bad",
                    {"count": self.bad, "topic": msg.topic, "error": str(e)[:300], "at": time.time()},
                )
                log.warning("dashboard: bad message on %s: %s", msg.topic, e)
                return
            keep(msg, item)

        return handle

    def _announcement(self, msg: paho.MQTTMessage, a: fleet.PushAnnouncement | None) -> None:
        self.view.announcement(_level(msg.topic, 3), a)

    def _result(self, msg: paho.MQTTMessage, r: fleet.ModelChangeResult | None) -> None:
        if r is None:
            return
        with self._lock:
            fut = self._waiting.pop(r.id, None)
        if fut is not None and not fut.done():
            fut.set_result(r)

    def _connected(self) -> None:
        self._status()

    def _status(self) -> None:
        self.view.put(
            "bus",
            "broker",
            {
                "url": self.cfg.url,
                "connected": self.conn.connected.is_set(),
                "user": self.cfg.username,
                "error": self.conn.last_error,
            },
        )

    def watch_connection(self) -> None:
        """Refresh the page's broker line when the connection went up or down (called
        every second by the server)."""
        shown = self.view.get("bus", "broker") or {}
        if shown.get("connected") != self.conn.connected.is_set():
            self._status()

    # -- outgoing -----------------------------------------------------------------------------------
    def ask(
        self, action: str, target: str, version: str | None, token: str, by: str
    ) -> Future[fleet.ModelChangeResult]:
        """Send a ``ModelChange``; a future of the cloud's result (the caller times out)."""
        if not self.conn.connected.is_set():
            raise EdgepilotError(f"the dashboard is not connected to the broker at {self.cfg.url}")
        change = fleet.ModelChange(
            secrets.token_urlsafe(12), action, target, version, by=by[:200], at=time.time()
        )
        change.mac = fleet.change_mac(change, token)
        payload = fleet.encode_model_change(change)  # WireError for a bad target/version
        fut: Future[fleet.ModelChangeResult] = Future()
        with self._lock:
            self._waiting[change.id] = fut
        if not self.conn.publish(fleet.CLOUD_MODELS_TOPIC, payload, qos=1):
            with self._lock:
                self._waiting.pop(change.id, None)
            raise EdgepilotError(f"could not publish the change to the broker at {self.cfg.url}")
        return fut

    def forget(self, fut: Future[fleet.ModelChangeResult]) -> None:
        """Stop waiting for ``fut`` (it timed out)."""
        with self._lock:
            for k, v in list(self._waiting.items()):
                if v is fut:
                    del self._waiting[k]
