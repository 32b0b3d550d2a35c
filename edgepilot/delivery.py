"""Receiving what the cloud pushes: check the signed announcement, then get the bytes.

Shared by the car (``vehicle.updates``: car model packages) and the edge node (its model,
and ``edge_node.tailpush``: split-mode tails), so both check a push the same way:

1. the announcement's Ed25519 signature (over target, version, sha256, size, counter,
   expiry, rollback) against the receiver's trusted *announcement* keys, and its expiry:
   a forged or frozen announcement is refused before a byte is read;
2. its counter against the highest the receiver has accepted for that target
   (``AnnouncementGuard``): a replayed older announcement (a downgrade) is refused; a
   rollback is an announcement of an older version with a newer counter, signed as such;
3. the bytes: from ``path`` when the receiver shares the cloud's disk and the file there
   has the announced sha256, else from the retained chunks on the broker, each chunk
   checked against its hash, then the whole file's size and sha256.

A package additionally carries its own signature (checked again on load); a tails file
does not, and is trusted through the signed hash alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.exceptions import InvalidSignature

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.keys import ANNOUNCEMENTS, default_trusted_keys, parse_public_key
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)


def verify_announcement(
    ann: fleet.PushAnnouncement, announce_keys: list[str] | None, now: float | None = None
) -> None:
    """EdgepilotError unless one trusted announcement key signed ``ann`` and it has not
    expired. ``announce_keys``: ``.pub`` paths or base64 keys; None: ``keys/announce.pub``."""
    keys = [parse_public_key(k) for k in (default_trusted_keys(ANNOUNCEMENTS) if announce_keys is None else announce_keys)]
    sig = base64.b64decode(ann.signature)
    for k in keys:
        try:
            k.verify(sig, ann.signed_bytes())
            break
        except InvalidSignature:
            continue
    else:
        raise EdgepilotError(
            f"announcement of {ann.target} {ann.version} is not signed by a trusted announcement key "
            f"(key {ann.key_id or '?'})"
        )
    now = time.time() if now is None else now
    if ann.expires < now:
        raise EdgepilotError(
            f"announcement of {ann.target} {ann.version} expired {now - ann.expires:.0f} s ago "
            "(a stale or frozen push: the cloud re-announces its current models before they expire)"
        )


class AnnouncementGuard:
    """The highest announcement counter accepted per target, kept in ``path`` (JSON) so that
    it survives restarts: a car that ran v3 never goes back to v1 because v1's old, validly
    signed announcement is published again."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.accepted: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            try:
                self.accepted = json.loads(self.path.read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable; no announcement accepted yet", self.path)

    def check(self, ann: fleet.PushAnnouncement) -> None:
        """Nothing when ``ann`` is newer than anything accepted, or the one accepted last (a
        retained re-delivery); EdgepilotError when it is older (a replay, a downgrade)."""
        last = self.accepted.get(ann.target)
        if last is None or ann.counter > last["counter"]:
            return
        if ann.counter == last["counter"] and ann.version == last["version"]:
            return
        raise EdgepilotError(
            f"announcement of {ann.target} {ann.version} (counter {ann.counter}) is not newer than the "
            f"accepted {last['version']} (counter {last['counter']}): a replay or a downgrade, refused"
        )

    def accept(self, ann: fleet.PushAnnouncement) -> None:
        self.accepted[ann.target] = {"counter": ann.counter, "version": ann.version, "expires": ann.expires}
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.accepted))
            os.replace(tmp, self.path)


def fetch_chunks(cfg: BrokerConfig, client_id: str, ann: fleet.PushAnnouncement, timeout_s: float) -> bytes:
    """Collect the retained chunks of ``ann`` on a short-lived connection of its own
    (subscribing there and closing it is the whole "unsubscribe"); verified."""
    parts: dict[int, bytes] = {}
    bad: list[str] = []
    got = threading.Condition()

    def on_chunk(msg: paho.MQTTMessage) -> None:
        try:
            i = fleet.index_of_chunk_topic(msg.topic)
        except WireError:
            return
        if i >= ann.chunks or not msg.payload:
            return
        if hashlib.sha256(msg.payload).hexdigest() != ann.chunk_sha256[i]:
            bad.append(f"chunk {i} sha256 mismatch")
        with got:
            parts[i] = bytes(msg.payload)
            got.notify_all()

    fc = Connection(cfg, client_id)
    fc.subscribe(fleet.chunk_filter(ann.target, ann.version), on_chunk, qos=1)
    try:
        fc.start(wait_s=min(5.0, timeout_s))
        deadline = time.monotonic() + timeout_s
        with got:
            while len(parts) < ann.chunks and not bad and time.monotonic() < deadline:
                got.wait(deadline - time.monotonic())
    finally:
        fc.close()
    what = f"{ann.target} {ann.version}"
    if bad:
        raise EdgepilotError(f"{what}: {bad[0]}")
    if len(parts) < ann.chunks:
        raise EdgepilotError(f"{what}: only {len(parts)}/{ann.chunks} chunks within {timeout_s:.0f} s")
    data = b"".join(parts[i] for i in range(ann.chunks))
    if len(data) != ann.size or hashlib.sha256(data).hexdigest() != ann.sha256:
        raise EdgepilotError(f"{what}: sha256/size do not match the announcement")
    return data


def read_path(ann: fleet.PushAnnouncement) -> bytes:
    """The announced ``path``'s bytes if they are exactly the announced ones."""
    if not ann.path:
        raise EdgepilotError("no path in the announcement")
    try:
        data = Path(ann.path).read_bytes()
    except OSError as e:
        raise EdgepilotError(f"{ann.path}: {e.strerror}") from None
    if len(data) != ann.size or hashlib.sha256(data).hexdigest() != ann.sha256:
        raise EdgepilotError(f"{ann.path}: sha256/size do not match the announcement")
    return data


def receive(
    ann: fleet.PushAnnouncement,
    announce_keys: list[str] | None,
    cfg: BrokerConfig,
    client_id: str,
    timeout_s: float = 20.0,
) -> bytes:
    """Verify ``ann`` and return its file's bytes (the shared path first, then the
    chunks); EdgepilotError naming every reason when neither gives the announced bytes."""
    verify_announcement(ann, announce_keys)
    try:
        return read_path(ann)
    except EdgepilotError as e:
        why_path = str(e)
    try:
        return fetch_chunks(cfg, client_id, ann, timeout_s)
    except EdgepilotError as e:
        raise EdgepilotError(f"{e} (path: {why_path})") from None
