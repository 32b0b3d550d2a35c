"""Push a model to the fleet: retained chunks, then a signed retained announcement.

Why retained messages: a car that is off (or out of coverage) when a model is promoted
gets the announcement the moment it connects, and the chunks the moment it subscribes —
no per-car request handling in the cloud, no second transport, and a clustered broker
replicates retained messages across its nodes. The chunks go out *before* the
announcement, so whoever reads the announcement can fetch at once.

Only the current version's chunks stay retained on the broker (the previous current's
are cleared with an empty retained message): the broker holds one package per target,
and a rollback simply pushes the older version again.

A car model with split-mode tails in the registry (``cloud_trainer.tails``) has them
pushed right after it, the same way, on ``wire.TAILS_TOPIC`` (target ``tails``, version =
the car model's), for the edge nodes. A tails push that fails is logged and leaves the
car model's push standing: cars offload JPEG frames until an edge has tails.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import model_topic

log = logging.getLogger(__name__)

PUSH_CHUNK = 64 * 1024
ANNOUNCE_TTL_S = 7 * 24 * 3600.0  # the cloud re-announces well before (CloudService.refresh)


def _publish_wait(conn: Connection, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
    if not conn.connected.is_set():
        raise EdgepilotError(f"not connected to the broker at {conn.cfg.url}")
    info = conn.client.publish(topic, payload, qos=1, retain=True)
    info.wait_for_publish(timeout_s)
    if not info.is_published():
        raise EdgepilotError(f"broker at {conn.cfg.url} did not acknowledge {topic}")


def announce_key() -> Any:
    """The cloud's announcement key: $EDGEPILOT_ANNOUNCE_KEY, else keys/announce.key (made on
    first use, like the package key)."""
    from edgepilot.keys import ANNOUNCEMENTS, load_private_key

    path = os.environ.get("EDGEPILOT_ANNOUNCE_KEY") or None
    return load_private_key(path, create=path is None, role=ANNOUNCEMENTS)


def announce(
    conn: Connection,
    target: str,
    package: str | Path,
    *,
    key: Any = None,
    version: str | None = None,
    parent: str | None = None,
    rollback: bool = False,
    chunk_size: int = PUSH_CHUNK,
    counter: int | None = None,
    ttl_s: float = ANNOUNCE_TTL_S,
) -> fleet.PushAnnouncement:
    """Publish ``package`` for ``target`` (car|edge|tails), announced with ``key`` (the
    cloud's announcement key, an Ed25519 private key: ``announce_key()`` by default), a
    ``counter`` newer than any before (default: the time in ms) and an expiry ``ttl_s`` ahead."""
    from edgepilot.keys import key_id
    from edgepilot.model.package import read_manifest

    if key is None:
        key = announce_key()
    data = Path(package).read_bytes()
    version = version or str(read_manifest(package).get("version"))
    sha = hashlib.sha256(data).hexdigest()
    hashes = [hashlib.sha256(data[i : i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size)]
    for i in range(len(hashes)):
        _publish_wait(
            conn, fleet.chunk_topic(target, version, i), data[i * chunk_size : (i + 1) * chunk_size]
        )
    ann = fleet.PushAnnouncement(
        target=target,
        version=version,
        sha256=sha,
        size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=hashes,
        signature="",
        key_id=key_id(key.public_key()),
        parent=parent,
        path=str(Path(package).resolve()),
        rollback=rollback,
        at=time.time(),
        counter=counter if counter is not None else int(time.time() * 1000),
        expires=int(time.time() + ttl_s),
    )
    ann.signature = base64.b64encode(key.sign(ann.signed_bytes())).decode()
    _publish_wait(conn, model_topic(target), fleet.encode_announcement(ann))
    log.info("announced %s model %s (%d bytes, %d chunks)", target, version, len(data), len(hashes))
    return ann


def clear_chunks(conn: Connection, target: str, version: str, chunks: int) -> None:
    """Remove a version's retained chunks (an empty retained payload deletes one)."""
    for i in range(chunks):
        conn.publish(fleet.chunk_topic(target, version, i), b"", qos=1, retain=True)


def push_tails(
    conn: Connection, registry: Any, version: str, *, key: Any = None
) -> fleet.PushAnnouncement | None:
    """Announce the split-mode tails of car model ``version`` to the edge nodes (None when
    it has none); clears the previously pushed tails' chunks."""
    import json

    path = registry.tails_path(version)
    if path is None:
        log.warning("car model %s has no split-mode tails: edge nodes answer its frames only", version)
        return None
    state_key = "models/tails/pushed.json"
    prev = json.loads(registry.store.get(state_key)) if registry.store.exists(state_key) else {}
    ann = announce(conn, "tails", path, key=key, version=version, counter=registry.next_counter("tails"))
    if prev.get("version") and prev["version"] != version:
        clear_chunks(
            conn,
            "tails",
            prev["version"],
            -(-int(prev.get("size", 0)) // int(prev.get("chunk_size", PUSH_CHUNK))),
        )
    registry.store.put(
        state_key,
        json.dumps(
            {"version": version, "size": ann.size, "chunk_size": ann.chunk_size, "at": ann.at}
        ).encode(),
    )
    return ann


def push_current(
    conn: Connection,
    registry: Any,
    target: str,
    *,
    key: Any = None,
    rollback: bool = False,
    ttl_s: float = ANNOUNCE_TTL_S,
) -> fleet.PushAnnouncement:
    """Announce the registry's current version for ``target`` (with the next counter) and
    record what was pushed. Also how the cloud refreshes an announcement before it expires."""
    import json

    version = registry.current(target)
    if version is None:
        raise EdgepilotError(f"no current {target} model to push (promote one first)")
    entry = registry.get(target, version)
    state_key = f"models/{target}/pushed.json"
    prev = json.loads(registry.store.get(state_key)) if registry.store.exists(state_key) else {}
    ann = announce(
        conn,
        target,
        registry.package_path(target, version),
        key=key,
        version=version,
        parent=entry.get("parent"),
        rollback=rollback,
        counter=registry.next_counter(target),
        ttl_s=ttl_s,
    )
    if prev.get("version") and prev["version"] != version:
        chunks = -(-int(prev.get("size", 0)) // int(prev.get("chunk_size", PUSH_CHUNK)))
        clear_chunks(conn, target, prev["version"], chunks)
    registry.store.put(
        state_key,
        json.dumps(
            {"version": version, "size": ann.size, "chunk_size": ann.chunk_size, "at": ann.at}
        ).encode(),
    )
    if target == "car":
        try:
            push_tails(conn, registry, version, key=key)
        except (EdgepilotError, OSError) as e:  # the car model is out: frame mode until fixed
            log.error("car model %s pushed, its split-mode tails not: %s", version, e)
    return ann
