"""Receive driving logs from the fleet: offers, verified chunks, assembly into the store.

The protocol (``edgepilot.schema.fleet``, docs/cloud.md) keeps no state in memory that
matters: every chunk is an object in the store (``incoming/<upload>/<index>``) before it
is acknowledged, so a trainer that crashes, or a second trainer that shares the store and
the MQTT shared subscription, answers the next offer correctly from the store alone.

- offer: "which chunks of upload U do you have?" -> ``UploadStatus`` (``complete`` at
  once when U was received before: a second upload of the same log sends nothing);
  when every chunk is there, the same offer assembles the log, checks the whole-file
  sha256, unpacks it to ``logs/<car>/<name>/`` and records ``uploads/<U>.json``.
- chunk: hash checked against the offer's list, stored, acknowledged.

Bad input (a wrong hash, an unknown upload, a tar that escapes its directory) is refused
with a reason in the ack/status and a counted warning, never a crash of the service.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import queue
import re
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from cloud_trainer.store import Store
from edgepilot import EdgepilotError
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)

_MEMBER = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass
class IngestStats:
    offers: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    refused: int = 0
    logs: int = 0
    frames: int = 0
    errors: list[str] = field(default_factory=list)


def incoming_prefix(upload: str) -> str:
    return f"incoming/{upload}/"


def chunk_key(upload: str, index: int) -> str:
    return f"incoming/{upload}/{index:06d}"


class Ingest:
    """The cloud side of uploads, usable without MQTT (``handle_*``) or attached to it."""

    def __init__(self, store: Store, on_log: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.on_log = on_log
        self.stats = IngestStats()
        self._offers: dict[str, fleet.UploadOffer] = {}
        self._lock = threading.Lock()
        self._q: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue()
        self._conn: Connection | None = None
        self._worker: threading.Thread | None = None

    # -- protocol logic (no MQTT) ---------------------------------------------------------
    def handle_offer(self, offer: fleet.UploadOffer) -> fleet.UploadStatus:
        self.stats.offers += 1
        done = self._done(offer.upload)
        if done is not None:
            return fleet.UploadStatus(offer.upload, "complete", log=done["log"])
        okey = incoming_prefix(offer.upload) + "offer.json"
        with self._lock:
            known = self._offers.get(offer.upload)
            if known is None and self.store.exists(okey):
                known = fleet.decode_offer(self.store.get(okey))
            if known is not None and (known.size, known.chunk_sha256) != (offer.size, offer.chunk_sha256):
                return self._refuse(offer.upload, "offer differs from the earlier offer of this upload")
            if known is None:
                self.store.put(okey, fleet.encode_offer(offer))
            self._offers[offer.upload] = offer
        have = self.have(offer.upload)
        if len(have) < offer.chunks:
            return fleet.UploadStatus(offer.upload, "partial", have=fleet.ranges(have))
        try:
            key, frames = self._assemble(offer)
        except EdgepilotError as e:
            self.store.delete_prefix(incoming_prefix(offer.upload))
            with self._lock:
                self._offers.pop(offer.upload, None)
            return self._refuse(offer.upload, str(e))
        return fleet.UploadStatus(offer.upload, "complete", have=[[0, offer.chunks]], log=key)

    def handle_chunk(self, car: str, header: fleet.ChunkHeader, body: memoryview | bytes) -> fleet.ChunkAck:
        offer = self._offer(header.upload)
        err = None
        if offer is None:
            err = "unknown upload (send the offer first)" if self._done(header.upload) is None else None
            if err is None:  # already complete: a late duplicate, acknowledge it
                return fleet.ChunkAck(header.upload, header.index)
        elif offer.car != car:
            err = f"upload belongs to car {offer.car}"
        elif header.index >= offer.chunks:
            err = f"index {header.index} beyond the {offer.chunks} chunks of the offer"
        elif len(body) != offer.chunk_len(header.index):
            err = f"chunk {header.index} is {len(body)} bytes, expected {offer.chunk_len(header.index)}"
        else:
            digest = hashlib.sha256(body).hexdigest()
            if digest != header.sha256 or digest != offer.chunk_sha256[header.index]:
                err = f"chunk {header.index} sha256 mismatch"
        if err is not None:
            self.stats.refused += 1
            log.warning("upload %s: refused chunk %d: %s", header.upload[:12], header.index, err)
            return fleet.ChunkAck(header.upload, header.index, error=err)
        self.store.put(chunk_key(header.upload, header.index), body)
        self.stats.chunks += 1
        self.stats.chunk_bytes += len(body)
        return fleet.ChunkAck(header.upload, header.index)

    def have(self, upload: str) -> set[int]:
        out = set()
        for key in self.store.list(incoming_prefix(upload)):
            tail = key.rsplit("/", 1)[-1]
            if tail.isdigit():
                out.add(int(tail))
        return out

    def _offer(self, upload: str) -> fleet.UploadOffer | None:
        with self._lock:
            o = self._offers.get(upload)
            if o is None:
                key = incoming_prefix(upload) + "offer.json"
                if self.store.exists(key):
                    o = self._offers[upload] = fleet.decode_offer(self.store.get(key))
            return o

    def _done(self, upload: str) -> dict[str, Any] | None:
        key = f"uploads/{upload}.json"
        return json.loads(self.store.get(key)) if self.store.exists(key) else None

    def _refuse(self, upload: str, why: str) -> fleet.UploadStatus:
        self.stats.refused += 1
        self.stats.errors.append(why)
        log.warning("upload %s refused: %s", upload[:12], why)
        return fleet.UploadStatus(upload, "error", error=why)

    def _assemble(self, offer: fleet.UploadOffer) -> tuple[str, int]:
        buf = io.BytesIO()
        h = hashlib.sha256()
        for i in range(offer.chunks):
            part = self.store.get(chunk_key(offer.upload, i))
            h.update(part)
            buf.write(part)
        if h.hexdigest() != offer.upload or buf.tell() != offer.size:
            raise EdgepilotError("assembled log does not match its sha256")
        name = offer.name
        prefix = f"logs/{offer.car}/{name}"
        if self.store.list(prefix + "/") and unpacked_upload(self.store, prefix) != offer.upload:
            prefix = f"logs/{offer.car}/{name}-{offer.upload[:8]}"
        frames = self._unpack(offer, buf.getvalue(), prefix)
        record = {
            "upload": offer.upload,
            "car": offer.car,
            "name": name,
            "log": prefix,
            "size": offer.size,
            "frames": frames,
            "received": time.time(),
        }
        self.store.put(f"uploads/{offer.upload}.json", json.dumps(record, indent=1).encode())
        self.store.delete_prefix(incoming_prefix(offer.upload))
        with self._lock:
            self._offers.pop(offer.upload, None)
        self.stats.logs += 1
        self.stats.frames += frames
        log.info("received log %s from %s: %d frames, %d bytes", prefix, offer.car, frames, offer.size)
        if self.on_log is not None:
            self.on_log(prefix, frames)
        return prefix, frames

    def _unpack(self, offer: fleet.UploadOffer, tar_bytes: bytes, prefix: str) -> int:
        """Unpack under ``prefix``, marked with the upload first. Why the mark: a trainer
        killed between the unpack and ``uploads/<id>.json`` leaves a whole log no record
        names; the next offer of the same upload must reuse that directory, not unpack a
        second copy beside it (retraining would read it as another session, possibly one
        held out and one trained on)."""
        return unpack_log(self.store, tar_bytes, prefix, upload=offer.upload)

    # -- MQTT ----------------------------------------------------------------------------
    def attach(self, conn: Connection, group: str = "cloud") -> None:
        """Serve uploads on ``conn``; MQTT v5 shared subscriptions let several trainers share."""
        self._conn = conn
        self._worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        self._worker.start()
        conn.subscribe(fleet.shared(group, fleet.UPLOAD_OFFER_FILTER), self._enqueue("offer"), qos=1)
        conn.subscribe(fleet.shared(group, fleet.UPLOAD_CHUNK_FILTER), self._enqueue("chunk"), qos=1)

    def close(self) -> None:
        if self._worker is not None:
            self._q.put(None)
            self._worker.join(5)
            self._worker = None

    def _enqueue(self, kind: str) -> Callable[[paho.MQTTMessage], None]:
        def handler(msg: paho.MQTTMessage) -> None:  # network thread: just queue it
            self._q.put((kind, msg.topic, msg.payload))

        return handler

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            kind, topic, payload = item
            try:
                car = fleet.car_of_upload_topic(topic)
                if kind == "offer":
                    self._serve_offer(car, payload)
                else:
                    self._serve_chunk(car, payload)
            except WireError as e:
                self.stats.refused += 1
                log.warning("ignoring %s on %s: %s", kind, topic, e)
            except Exception:  # the service must outlive any one bad message
                self.stats.refused += 1
                log.exception("ingest failed on %s", topic)

    def _serve_offer(self, car: str, payload: bytes) -> None:
        offer = fleet.decode_offer(payload)
        if offer.car != car:
            raise WireError(f"offer for car {offer.car} on car {car}'s topic")
        status = self.handle_offer(offer)
        assert self._conn is not None
        self._conn.publish(fleet.upload_topic(car, "status"), fleet.encode_status(status), qos=1)

    def _serve_chunk(self, car: str, payload: bytes) -> None:
        header, body = fleet.decode_chunk(payload)
        ack = self.handle_chunk(car, header, body)
        assert self._conn is not None
        self._conn.publish(fleet.upload_topic(car, "ack"), fleet.encode_ack(ack), qos=1)


UPLOAD_MARK = ".upload.json"  # in a received log: the upload it was unpacked from


def unpacked_upload(store: Store, prefix: str) -> str | None:
    """The upload a received log directory was unpacked from (None: unmarked)."""
    key = f"{prefix}/{UPLOAD_MARK}"
    if not store.exists(key):
        return None
    try:
        return str(json.loads(store.get(key))["upload"])
    except (ValueError, KeyError, TypeError):
        return None


def unpack_log(store: Store, tar_bytes: bytes, prefix: str, upload: str | None = None) -> int:
    """Unpack a packed driving log into ``prefix/``; returns its record count.

    Only regular files with plain relative names are accepted (no links, no ``..``, no
    hidden names), and ``meta.json`` + ``records.jsonl`` must be present: it has to be a
    driving log. With ``upload`` the directory is marked (``UPLOAD_MARK``) once the tar
    checked out, before the first member is written."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:")  # noqa: SIM115 - in memory
        members = tar.getmembers()
    except tarfile.TarError as e:
        raise EdgepilotError(f"upload is not a packed log ({e})") from None
    names = set()
    for m in members:
        parts = m.name.split("/")
        # hidden names are markers (ours, the car's): a packed log never holds one
        if not m.isfile() or not _MEMBER.match(m.name) or any(p.startswith(".") for p in parts):
            raise EdgepilotError(f"upload holds a member that is not allowed: {m.name!r}")
        names.add(m.name)
    for required in ("meta.json", "records.jsonl"):
        if required not in names:
            raise EdgepilotError(f"upload is not a driving log: no {required}")
    if upload is not None:  # valid: mark the directory before the first file lands
        store.put(f"{prefix}/{UPLOAD_MARK}", json.dumps({"upload": upload}).encode())
    frames = 0
    for m in members:
        f = tar.extractfile(m)
        data = f.read() if f is not None else b""
        if m.name == "records.jsonl":
            frames = sum(1 for line in data.splitlines() if line.strip() and b'"op"' not in line)
        store.put(f"{prefix}/{m.name}", data)
    return frames
