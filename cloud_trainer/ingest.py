"""Receive driving logs from the fleet: offers, verified chunks, assembly into the store.

Every upload belongs to the car whose topic its offer came in on (the broker's ACL ties
``upload/<car>/…`` to that car's login): its state is keyed by (car, upload id), so a car
can neither block, nor feed, nor complete another car's upload, whatever id it names.

The protocol (``edgepilot.schema.fleet``, docs/cloud.md) keeps no state in memory that
matters: every chunk is an object in the store (``incoming/<car>/<upload>/<index>``) before
it is acknowledged, so a trainer that crashes, or a second trainer that shares the store
and the MQTT shared subscription, answers the next offer correctly from the store alone.

- offer: "which chunks of upload U do you have?" -> ``UploadStatus``. A new offer is
  admitted only within the limits (``edgepilot.config.UploadLimits``: size and chunks of
  one upload, the car's uploads and bytes in progress, its quota of stored bytes);
  ``complete`` at once when this car's U was received before (a second upload of the same
  log sends nothing). When every chunk is there, the same offer assembles the log from
  disk, checks the whole-file sha256, checks every tar header against the caps
  (``cloud_trainer.logtar``), streams the members to ``logs/<car>/<name>/`` and records
  ``uploads/<car>/<U>.json``.
- chunk: length and hash checked against the car's offer, stored, acknowledged.
- expiry: an upload not offered again for ``upload_ttl_s`` is dropped with its chunks (on
  the car's next offer, on a chunk for it, and by a sweep every minute at most).

Bad input (a wrong hash, an unknown upload, a tar that is not a plain log, a limit) is
refused with a reason in the ack/status and a counted warning, never a crash of the
service. Memory stays bounded whatever is uploaded (docs/cloud.md, "Limits").
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import paho.mqtt.client as paho

from cloud_trainer import logtar
from cloud_trainer.store import Store, check_key
from edgepilot import EdgepilotError
from edgepilot.config import UploadLimits
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)

OFFER_CACHE = 16  # accepted offers kept decoded in memory (32 bytes per chunk each)
PUT_WAIT_S = 5.0  # how long the MQTT thread waits for room in the queue (keep-alive stays alive)
SWEEP_MAX_S = 60.0  # expired uploads are looked for at least this often


@dataclass
class IngestStats:
    offers: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    refused: int = 0
    expired: int = 0  # partial uploads dropped for age
    dropped: int = 0  # messages dropped because the ingest queue stayed full
    logs: int = 0
    frames: int = 0
    errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=100))


def incoming_prefix(car: str, upload: str) -> str:
    return f"incoming/{car}/{upload}/"


def chunk_key(car: str, upload: str, index: int) -> str:
    return f"{incoming_prefix(car, upload)}{index:06d}"


def record_key(car: str, upload: str) -> str:
    """The record of a received upload: car, name, log key, size, frames."""
    return f"uploads/{car}/{upload}.json"


@dataclass(frozen=True, slots=True)
class Accepted:
    """An admitted offer, compact: chunk hashes as 32 raw bytes each, not 64-char strings."""

    car: str
    upload: str
    name: str
    size: int
    chunk_size: int
    digests: bytes
    at: float  # when the car last offered it: the age expiry counts from

    @classmethod
    def of(cls, o: fleet.UploadOffer, at: float) -> Accepted:
        digests = b"".join(bytes.fromhex(h) for h in o.chunk_sha256)
        return cls(o.car, o.upload, o.name, o.size, o.chunk_size, digests, at)

    @property
    def chunks(self) -> int:
        return len(self.digests) // 32

    def digest(self, index: int) -> bytes:
        return self.digests[32 * index : 32 * index + 32]

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def matches(self, o: fleet.UploadOffer) -> bool:
        return (self.size, self.chunk_size, self.digests) == (o.size, o.chunk_size, Accepted.of(o, 0).digests)


class JoinedChunks(io.RawIOBase):
    """An upload's chunk objects read as one seekable file, one chunk file open at a time:
    the tar is hashed, checked and extracted from disk, never assembled in memory."""

    def __init__(self, path_of: Callable[[int], Path], chunk_size: int, size: int) -> None:
        self._path_of = path_of
        self._chunk_size = chunk_size
        self._size = size
        self._pos = 0
        self._index = -1
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        index, off = divmod(self._pos, self._chunk_size)
        if index != self._index or self._file is None:
            self._close_file()
            try:
                self._file = open(self._path_of(index), "rb")  # noqa: SIM115 - kept open across reads
            except (KeyError, OSError):
                raise EdgepilotError(f"chunk {index} of the upload is missing from the store") from None
            self._index = index
        self._file.seek(off)
        want = min(len(buf), self._chunk_size - off, self._size - self._pos)
        n = self._file.readinto(memoryview(buf)[:want])
        if not n:
            raise EdgepilotError(f"chunk {index} of the upload is shorter than its offer says")
        self._pos += n
        return n

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()
        super().close()


Message = tuple[str, str, bytes]  # kind ("offer", "chunk", "stop"), topic, payload


class ByteQueue:
    """The received messages waiting for the ingest worker, bounded by the bytes they hold
    (a count would let 4 MiB messages in as freely as 1 KiB ones). ``put`` waits for room
    up to ``wait_s`` and then gives up: the MQTT thread that calls it must get back to its
    keep-alive, and an upload message lost here is one the car re-sends on its resume."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[Message, int]] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()

    def put(self, item: Message, nbytes: int, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._bytes and self._bytes + nbytes > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()
            return True

    def get(self, timeout_s: float) -> Message | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item


class Ingest:
    """The cloud side of uploads, usable without MQTT (``handle_*``) or attached to it."""

    def __init__(
        self,
        store: Store,
        on_log: Callable[[str, int], None] | None = None,
        *,
        limits: UploadLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.on_log = on_log
        self.limits = limits or UploadLimits()
        self.clock = clock  # wall clock: upload ages are kept in the store, across restarts
        self.stats = IngestStats()
        self._cache: collections.OrderedDict[tuple[str, str], Accepted] = collections.OrderedDict()
        self._lock = threading.RLock()
        self._q = ByteQueue(self.limits.ingest_queue_bytes)
        self._conn: Connection | None = None
        self._worker: threading.Thread | None = None

    # -- protocol logic (no MQTT) ---------------------------------------------------------
    def handle_offer(self, offer: fleet.UploadOffer) -> fleet.UploadStatus:
        """``offer.car`` is the car it came from (``_offer_message`` checks it against the topic)."""
        self.stats.offers += 1
        car, up = offer.car, offer.upload
        bad = _bad_car(car)
        if bad is not None:
            return self._refuse(up, bad)
        done = self._done(car, up)
        if done is not None:
            return fleet.UploadStatus(up, "complete", log=done["log"])
        with self._lock:
            acc = self._accepted(car, up)
            if acc is None:
                why = self._admit(offer)
                if why is not None:
                    return self._refuse(up, why)
                acc = self._save(Accepted.of(offer, self.clock()), offer)
            elif not acc.matches(offer):
                return self._refuse(up, "offer differs from the earlier offer of this upload")
            else:
                acc = self._save(replace(acc, at=self.clock()))  # offered again: alive
        have = self.have(up, car)
        if len(have) < acc.chunks:
            return fleet.UploadStatus(up, "partial", have=fleet.ranges(have))
        try:
            key, _ = self._assemble(acc)
        except EdgepilotError as e:
            self._drop(car, up)
            return self._refuse(up, str(e))
        return fleet.UploadStatus(up, "complete", have=[[0, acc.chunks]], log=key)

    def handle_chunk(self, car: str, header: fleet.ChunkHeader, body: memoryview | bytes) -> fleet.ChunkAck:
        """``car``: the car whose topic the chunk came in on; only its own offer counts."""
        up, i = header.upload, header.index
        err = _bad_car(car)
        acc = None
        if err is None:
            with self._lock:
                acc = self._accepted(car, up)
            if acc is None and self._done(car, up) is not None:  # a late duplicate: acknowledge it
                return fleet.ChunkAck(up, i)
        err = err or _chunk_error(acc, car, header, body)
        if err is not None:
            self.stats.refused += 1
            log.warning("upload %s of %s: refused chunk %d: %s", up[:12], car, i, err)
            return fleet.ChunkAck(up, i, error=err)
        self.store.put(chunk_key(car, up, i), body)
        self.stats.chunks += 1
        self.stats.chunk_bytes += len(body)
        return fleet.ChunkAck(up, i)

    def have(self, upload: str, car: str | None = None) -> set[int]:
        """The chunks of ``upload`` stored for ``car`` (None: for any car; operators, tests)."""
        out = set()
        for c in [car] if car is not None else self.store.children("incoming/"):
            for key in self.store.list(incoming_prefix(c, upload)):
                tail = key.rsplit("/", 1)[-1]
                if tail.isdigit():
                    out.add(int(tail))
        return out

    def expire(self) -> int:
        """Drop every partial upload not offered again for ``upload_ttl_s``; returns how many."""
        before = self.stats.expired
        with self._lock:
            for car in self.store.children("incoming/"):
                if _bad_car(car) is None and not self._pending(car):
                    self.store.delete_prefix(f"incoming/{car}/")
        return self.stats.expired - before

    # -- state in the store ----------------------------------------------------------------
    def _admit(self, offer: fleet.UploadOffer) -> str | None:
        """Why a new offer is over a limit or the car's quota (None: admitted)."""
        lim, car, size = self.limits, offer.car, offer.size
        if size > lim.upload_max_bytes:
            return f"upload of {size} bytes is over the limit of {lim.upload_max_bytes} bytes per upload"
        if offer.chunks > lim.upload_max_chunks:
            return f"upload in {offer.chunks} chunks is over the limit of {lim.upload_max_chunks} (use bigger chunks)"
        pending = self._pending(car)
        if len(pending) >= lim.car_inflight_uploads:
            return f"car {car} already has {len(pending)} uploads in progress, its limit"
        inflight = sum(pending)
        if inflight + size > lim.car_inflight_bytes:
            return (
                f"car {car} has {inflight} bytes of uploads in progress; {size} more is over "
                f"its limit of {lim.car_inflight_bytes}"
            )
        stored = self._stored(car)
        if stored + inflight + size > lim.car_quota_bytes:
            return (
                f"car {car}'s quota is full: {stored} bytes received + {inflight} in progress "
                f"+ {size} offered is over {lim.car_quota_bytes}"
            )
        return None

    def _pending(self, car: str) -> list[int]:
        """Declared sizes of the car's partial uploads; expired ones are dropped on the way."""
        sizes = []
        for up in self.store.children(f"incoming/{car}/"):
            state = self._state(car, up)
            if state is None or self.clock() - state[1] > self.limits.upload_ttl_s:
                self._drop(car, up)
                self.stats.expired += 1
                log.info("upload %s of %s expired: dropped with its chunks", up[:12], car)
            else:
                sizes.append(state[0])
        return sizes

    def _state(self, car: str, up: str) -> tuple[int, float] | None:
        """(declared size, last offered) of a partial upload; None: unreadable or half made."""
        key = incoming_prefix(car, up) + "state.json"
        try:
            d = json.loads(self.store.get(key))
            return int(d["size"]), float(d["at"])
        except (KeyError, ValueError, TypeError, EdgepilotError):
            return None

    def _stored(self, car: str) -> int:
        total = 0
        for name in self.store.children(f"uploads/{car}/"):
            try:
                total += int(json.loads(self.store.get(f"uploads/{car}/{name}")).get("size", 0))
            except (KeyError, ValueError, TypeError, AttributeError):
                continue
        return total

    def _accepted(self, car: str, up: str) -> Accepted | None:
        """The car's live offer of ``up`` (cache, else store); an expired one is dropped."""
        acc = self._cache.get((car, up))
        if acc is None:
            state = self._state(car, up)
            okey = incoming_prefix(car, up) + "offer.json"
            if state is None or not self.store.exists(okey):
                return None
            acc = Accepted.of(fleet.decode_offer(self.store.get(okey)), state[1])
        if self.clock() - acc.at > self.limits.upload_ttl_s:
            self._drop(car, up)
            self.stats.expired += 1
            return None
        self._remember(acc)
        return acc

    def _save(self, acc: Accepted, offer: fleet.UploadOffer | None = None) -> Accepted:
        prefix = incoming_prefix(acc.car, acc.upload)
        if offer is not None:
            self.store.put(prefix + "offer.json", fleet.encode_offer(offer))
        self.store.put(prefix + "state.json", json.dumps({"size": acc.size, "at": acc.at}).encode())
        self._remember(acc)
        return acc

    def _remember(self, acc: Accepted) -> None:
        key = (acc.car, acc.upload)
        self._cache[key] = acc
        self._cache.move_to_end(key)
        while len(self._cache) > OFFER_CACHE:
            self._cache.popitem(last=False)

    def _drop(self, car: str, up: str) -> None:
        with self._lock:
            self._cache.pop((car, up), None)
            self.store.delete_prefix(incoming_prefix(car, up))

    def _done(self, car: str, up: str) -> dict[str, Any] | None:
        key = record_key(car, up)
        return json.loads(self.store.get(key)) if self.store.exists(key) else None

    def _refuse(self, upload: str, why: str) -> fleet.UploadStatus:
        self.stats.refused += 1
        self.stats.errors.append(why)
        log.warning("upload %s refused: %s", upload[:12], why)
        return fleet.UploadStatus(upload, "error", error=why)

    # -- assembly, from disk ---------------------------------------------------------------
    def _assemble(self, acc: Accepted) -> tuple[str, int]:
        car, up = acc.car, acc.upload
        path_of = lambda i: self.store.local_file(chunk_key(car, up, i))  # noqa: E731
        with io.BufferedReader(JoinedChunks(path_of, acc.chunk_size, acc.size), 64 * 1024) as f:
            if _sha256(f, acc.size) != up:
                raise EdgepilotError("assembled log does not match its sha256")
            prefix = self._log_prefix(acc)
            try:
                frames = self._unpack(acc, f, prefix)
            except BaseException:
                self.store.delete_prefix(prefix + "/")  # empty or marked with this upload
                raise
        record = {
            "upload": up,
            "car": car,
            "name": acc.name,
            "log": prefix,
            "size": acc.size,
            "frames": frames,
            "received": time.time(),
        }
        self.store.put(record_key(car, up), json.dumps(record, indent=1).encode())
        self._drop(car, up)
        self.stats.logs += 1
        self.stats.frames += frames
        log.info("received log %s from %s: %d frames, %d bytes", prefix, car, frames, acc.size)
        if self.on_log is not None:
            self.on_log(prefix, frames)
        return prefix, frames

    def _log_prefix(self, acc: Accepted) -> str:
        """``logs/<car>/<name>``, unless another upload already fills that directory."""
        prefix = f"logs/{acc.car}/{acc.name}"
        if self.store.children(prefix + "/") and unpacked_upload(self.store, prefix) != acc.upload:
            prefix = f"logs/{acc.car}/{acc.name}-{acc.upload[:8]}"
        return prefix

    def _unpack(self, offer: Accepted | fleet.UploadOffer, tar: BinaryIO | bytes, prefix: str) -> int:
        """Unpack under ``prefix``, marked with the upload first. Why the mark: a trainer
        killed between the unpack and the upload's record leaves a whole log no record
        names; the next offer of the same upload must reuse that directory, not unpack a
        second copy beside it (retraining would read it as another session, possibly one
        held out and one trained on)."""
        return unpack_log(self.store, tar, prefix, upload=offer.upload, limits=tar_limits(self.limits))

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
            self._q.put(("stop", "", b""), 0, PUT_WAIT_S)
            self._worker.join(5)
            self._worker = None

    def _enqueue(self, kind: str) -> Callable[[paho.MQTTMessage], None]:
        def handler(msg: paho.MQTTMessage) -> None:  # network thread: just queue it
            if not self._q.put((kind, msg.topic, msg.payload), len(msg.payload), PUT_WAIT_S):
                self.stats.dropped += 1
                log.warning("ingest queue full for %.0f s: dropped a %s on %s", PUT_WAIT_S, kind, msg.topic)

        return handler

    def _work(self) -> None:
        every = max(0.05, min(SWEEP_MAX_S, self.limits.upload_ttl_s / 4))
        next_sweep = time.monotonic() + every
        while True:
            item = self._q.get(max(0.0, next_sweep - time.monotonic()))
            if time.monotonic() >= next_sweep:
                self._guarded("expiry sweep", self.expire)
                next_sweep = time.monotonic() + every
            if item is None:
                continue
            kind, topic, payload = item
            if kind == "stop":
                return
            self._guarded(topic, functools.partial(self._serve, kind, topic, payload))

    def _guarded(self, what: str, job: Callable[[], object]) -> None:
        try:
            job()
        except WireError as e:
            self.stats.refused += 1
            log.warning("ignoring a message on %s: %s", what, e)
        except Exception:  # the service must outlive any one bad message
            self.stats.refused += 1
            log.exception("ingest failed on %s", what)

    def _serve(self, kind: str, topic: str, payload: bytes) -> None:
        car = fleet.car_of_upload_topic(topic)
        assert self._conn is not None
        if kind == "offer":
            status = self._offer_message(car, payload)
            self._conn.publish(fleet.upload_topic(car, "status"), fleet.encode_status(status), qos=1)
        else:
            header, body = fleet.decode_chunk(payload)
            ack = self.handle_chunk(car, header, body)
            self._conn.publish(fleet.upload_topic(car, "ack"), fleet.encode_ack(ack), qos=1)

    def _offer_message(self, car: str, payload: bytes) -> fleet.UploadStatus:
        most = max_offer_bytes(self.limits)
        if len(payload) > most:  # refused before it is parsed: parsing is what costs memory
            chunks = self.limits.upload_max_chunks
            why = f"offer of {len(payload)} bytes is over the limit of {most} (at most {chunks} chunks)"
            return self._refuse(_upload_named(payload), why)
        offer = fleet.decode_offer(payload)
        if offer.car != car:
            raise WireError(f"offer for car {offer.car} on car {car}'s topic")
        return self.handle_offer(offer)


def max_offer_bytes(lim: UploadLimits) -> int:
    """The longest offer within the limits (64 hex digits, quotes and a comma per chunk):
    a longer one is refused unparsed, which bounds what decoding an offer costs."""
    return 1024 + 67 * lim.upload_max_chunks


_UPLOAD_FIELD = re.compile(rb'"upload"\s*:\s*"([0-9a-f]{64})"')


def _upload_named(payload: bytes) -> str:
    """The upload id an offer names near its start (fleet's encoder writes it second)."""
    m = _UPLOAD_FIELD.search(payload[:1024])
    if m is None:
        raise WireError(f"an offer of {len(payload)} bytes, over the limits, naming no upload")
    return m.group(1).decode()


def tar_limits(lim: UploadLimits) -> logtar.TarLimits:
    return logtar.TarLimits(lim.upload_max_bytes, lim.upload_max_member_bytes, lim.upload_max_members)


def _bad_car(car: str) -> str | None:
    """Why ``car`` cannot name a store directory (None: it can)."""
    try:
        check_key(f"incoming/{car}/x")
    except EdgepilotError:
        return f"car id {car!r} cannot name a store directory"
    return None


def _chunk_error(
    acc: Accepted | None, car: str, header: fleet.ChunkHeader, body: memoryview | bytes
) -> str | None:
    i = header.index
    if acc is None:
        return f"unknown upload: send the offer first (an upload belongs to car {car} only once {car} offered it)"
    if i >= acc.chunks:
        return f"index {i} beyond the {acc.chunks} chunks of the offer"
    if len(body) != acc.chunk_len(i):
        return f"chunk {i} is {len(body)} bytes, expected {acc.chunk_len(i)}"
    if header.sha256 != acc.digest(i).hex() or hashlib.sha256(body).digest() != acc.digest(i):
        return f"chunk {i} sha256 mismatch"
    return None


def _sha256(f: BinaryIO, size: int) -> str:
    f.seek(0)
    h = hashlib.sha256()
    n = 0
    while piece := f.read(logtar.PIECE):
        h.update(piece)
        n += len(piece)
    return h.hexdigest() if n == size else ""


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


def unpack_log(
    store: Store,
    tar: BinaryIO | bytes,
    prefix: str,
    upload: str | None = None,
    limits: logtar.TarLimits | None = None,
) -> int:
    """Unpack a packed driving log (a seekable file, or bytes) into ``prefix/``; returns
    its record count.

    Every header is checked first (``logtar.check``: regular files with plain relative
    names only, sizes and counts within ``limits``, ``meta.json`` + ``records.jsonl``
    present), then the members are streamed to the store. With ``upload`` the directory is
    marked (``UPLOAD_MARK``) once the tar checked out, before the first member is written."""
    limits = limits or tar_limits(UploadLimits())
    f: BinaryIO = io.BytesIO(tar) if isinstance(tar, bytes | bytearray) else tar
    size = f.seek(0, io.SEEK_END)
    logtar.check(f, size, limits)
    if upload is not None:  # valid: mark the directory before the first file lands
        store.put(f"{prefix}/{UPLOAD_MARK}", json.dumps({"upload": upload}).encode())
    return logtar.extract(f, size, limits, store, prefix)
