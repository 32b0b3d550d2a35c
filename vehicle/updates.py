"""The car's side of model push: follow the retained announcement, fetch, verify, hot-swap.

On every announcement of ``models/car`` (retained, so also right after connecting):

1. check the announcement's Ed25519 signature against the car's trusted announcement
   keys, its expiry, and that its counter is newer than the last one the car accepted
   (kept on disk): a forged, frozen or replayed one (a downgrade) is refused before a byte
   is fetched; a newer announcement of the version it runs (a refresh) is only noted;
2. fetch the retained chunks (``models/car/chunks/<version>/<i>``) on a short-lived
   second connection (subscribing there and closing it is the whole "unsubscribe"),
   each chunk checked against its sha256 in the announcement, then the whole file's
   sha256 and size;
3. hand the file to the loop's ``ModelSlot.load_async`` — it verifies the package's own
   signature and weights hash, warms the model up off the loop, and the loop swaps
   between two frames (so no frame is missed);
4. publish (retained) ``car/<car>/model``: the version now running, or ``refused`` with
   the reason. A failed verification never touches the running model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from edgepilot import EdgepilotError
from edgepilot.delivery import AnnouncementGuard, fetch_chunks, verify_announcement
from edgepilot.drive.slot import ModelSlot
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError, model_topic

log = logging.getLogger(__name__)


class ModelUpdater:
    """Keeps ``slot`` on the fleet's current model. Attach to the car's MQTT connection."""

    def __init__(
        self,
        conn: Connection,
        slot: ModelSlot,
        car_id: str,
        cache_dir: str | Path,
        *,
        trusted_keys: list[str] | None = None,
        announce_keys: list[str] | None = None,
        target: str = "car",
        fetch_timeout_s: float = 20.0,
    ) -> None:
        self.conn = conn
        self.slot = slot
        self.car = fleet.check_id(car_id, "car id")
        self.cache = Path(cache_dir)
        self.trusted_keys = trusted_keys
        self.announce_keys = announce_keys
        self.guard = AnnouncementGuard(self.cache / "accepted.json")
        self.target = target
        self.fetch_timeout_s = fetch_timeout_s
        self.status: fleet.CarModelStatus | None = None
        self.announced_at: dict[str, float] = {}  # version -> monotonic time the announcement came
        self.swapped_at: dict[str, float] = {}  # version -> monotonic time the loop ran it
        self._lock = threading.Lock()
        self._fetching: str | None = None
        self._done = threading.Condition()

    def start(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        # report first: the retained announcement can arrive (and its update thread report
        # "fetching") before subscribe() returns; a later "running" would hide the fetch
        self.report("running", None)
        self.conn.subscribe(model_topic(self.target), self._on_announcement, qos=1)

    # -- reporting -----------------------------------------------------------------------
    def report(self, state: str, offered: str | None, error: str | None = None) -> None:
        self.status = fleet.CarModelStatus(self.car, self.slot.version, state, offered, error, time.time())
        self.conn.publish(
            fleet.car_model_topic(self.car), fleet.encode_car_status(self.status), qos=1, retain=True
        )
        with self._done:
            self._done.notify_all()

    def wait_for(self, version: str, timeout: float) -> fleet.CarModelStatus | None:
        """Block until a status about ``version`` (running it, or refused) — for tests/tools."""
        deadline = time.monotonic() + timeout
        with self._done:
            while time.monotonic() < deadline:
                st = self.status
                if st is not None and (
                    st.version == version or (st.offered == version and st.state == "refused")
                ):
                    return st
                self._done.wait(deadline - time.monotonic())
        return self.status

    # -- announcement (network thread: decide, then hand off) ------------------------------
    def _on_announcement(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        now = time.monotonic()
        try:
            ann = fleet.decode_announcement(msg.payload)
        except WireError as e:
            log.warning("ignoring model announcement: %s", e)
            self.report("refused", None, f"bad announcement: {e}")
            return
        if ann.target != self.target or not self._fresh(ann):
            return
        with self._lock:
            if self._fetching == ann.version:
                return
            self._fetching = ann.version
        self.announced_at[ann.version] = now
        threading.Thread(target=self._update, args=(ann,), name="model-update", daemon=True).start()

    def _fresh(self, ann: fleet.PushAnnouncement) -> bool:
        """True when ``ann`` asks for a swap: signed, unexpired, newer than what this car
        accepted, and of another version than it runs (refused ones are reported)."""
        try:
            verify_announcement(ann, self.announce_keys)
            self.guard.check(ann)
        except EdgepilotError as e:
            self._refused(ann.version, str(e))
            return False
        if ann.version == self.slot.version:
            self.guard.accept(ann)  # what the car runs (a refresh, or a re-delivery)
            return False
        return True

    def _update(self, ann: fleet.PushAnnouncement) -> None:
        try:
            self.report("fetching", ann.version)
            path = self.fetch(ann)
        except EdgepilotError as e:
            self._refused(ann.version, str(e))
            return

        def done(ok: bool, what: str) -> None:
            if not ok:
                self._refused(ann.version, what)
                return
            deadline = time.monotonic() + 10.0  # the loop swaps at its next frame
            while self.slot.version != ann.version and time.monotonic() < deadline:
                time.sleep(0.002)
            if self.slot.version == ann.version:
                self.swapped_at[ann.version] = time.monotonic()
                self.guard.accept(ann)
            with self._lock:
                self._fetching = None
            self.report("running", ann.version)

        self.slot.load_async(path, done)

    def _refused(self, version: str, why: str) -> None:
        log.error("model %s refused, keeping %s: %s", version, self.slot.version, why)
        with self._lock:
            self._fetching = None
        self.report("refused", version, why)

    # -- fetching --------------------------------------------------------------------------
    def fetch(self, ann: fleet.PushAnnouncement) -> Path:
        """Collect the retained chunks of ``ann``, verified; returns the package file."""
        out = self.cache / f"{ann.version}.eppkg"
        if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == ann.sha256:
            return out  # e.g. a rollback to a version this car ran before
        client_id = f"{self.car}-fetch-{ann.version[-20:]}-{time.monotonic_ns() % 10**6}"
        data = fetch_chunks(self.conn.cfg, client_id, ann, self.fetch_timeout_s)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
        return out


def attach(
    conn: Connection,
    slot: ModelSlot,
    car_id: str,
    cache_dir: str | Path,
    trusted_keys: list[str] | None,
    announce_keys: list[str] | None = None,
) -> ModelUpdater:
    """Build and start an updater (the drive commands call this when a broker is set)."""
    up = ModelUpdater(conn, slot, car_id, cache_dir, trusted_keys=trusted_keys, announce_keys=announce_keys)
    up.start()
    return up
