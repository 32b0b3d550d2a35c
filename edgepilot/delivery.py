"""Receiving what the cloud pushes: check the signed announcement, then get the bytes.

Shared by the car (``vehicle.updates``: car model packages) and the edge node
(``edge_node.tailpush``: split-mode tails), so both check a push the same way:

1. the announcement's Ed25519 signature (over target, version, sha256 and size) against
   the receiver's trusted keys — a forged announcement is refused before a byte is read;
2. the bytes: from ``path`` when the receiver shares the cloud's disk and the file there
   has the announced sha256, else from the retained chunks on the broker, each chunk
   checked against its hash, then the whole file's size and sha256.

A package additionally carries its own signature (checked again on load); a tails file
does not, and is trusted through the signed hash alone.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError


def verify_announcement(ann: fleet.PushAnnouncement, trusted_keys: list[str] | None) -> None:
    """EdgepilotError unless one trusted key signed this announcement."""
    from cryptography.exceptions import InvalidSignature

    from edgepilot.model.package import default_trusted_keys, parse_public_key

    keys = [parse_public_key(k) for k in (default_trusted_keys() if trusted_keys is None else trusted_keys)]
    sig = base64.b64decode(ann.signature)
    for k in keys:
        try:
            k.verify(sig, ann.signed_bytes())
            return
        except InvalidSignature:
            continue
    raise EdgepilotError(
        f"announcement of {ann.target} {ann.version} is not signed by a trusted key (key {ann.key_id or '?'})"
    )


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
    trusted_keys: list[str] | None,
    cfg: BrokerConfig,
    client_id: str,
    timeout_s: float = 20.0,
) -> bytes:
    """Verify ``ann`` and return its file's bytes (the shared path first, then the
    chunks); EdgepilotError naming every reason when neither gives the announced bytes."""
    verify_announcement(ann, trusted_keys)
    try:
        return read_path(ann)
    except EdgepilotError as e:
        why_path = str(e)
    try:
        return fetch_chunks(cfg, client_id, ann, timeout_s)
    except EdgepilotError as e:
        raise EdgepilotError(f"{e} (path: {why_path})") from None
