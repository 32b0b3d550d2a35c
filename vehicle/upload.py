"""Send driving logs to the cloud trainer: chunked, hash-checked, resumable, idempotent.

A log directory is packed into a deterministic tar (sorted names, zeroed times and
owners), so the same log always has the same sha256 — that hash is the upload's id. The
car offers it; the cloud answers with the chunks it already has (``complete`` when it
has the whole log: nothing is sent, ``sent_bytes`` 0). The car sends only the missing
chunks over MQTT QoS 1 with a window of chunks in flight, each carrying its sha256; the
cloud stores a chunk before it acknowledges it. After a broken connection (or a car that
drove off mid-upload) the next offer returns the stored chunks, so acknowledged chunks
are never sent again. When all are acknowledged the car offers again ("commit"); the
cloud assembles, verifies the whole-file hash and answers ``complete``, and only then
does the car mark (or delete) its copy.

Why MQTT and not HTTP: the car already holds an authenticated broker connection (ACLs
per car id, TLS), works behind NAT without an open port, and the broker is the one piece
a fleet already scales (docs/cloud.md). Loopback throughput: docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import paho.mqtt.client as paho

from edgepilot import EdgepilotError
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
WINDOW = 32  # chunks in flight: 8 MiB, enough to keep loopback and a LAN busy
MARKER = ".uploaded.json"  # written into the log once the cloud has all of it


class UploadCancelled(EdgepilotError):
    """The upload stopped on request (the car left idle); run it again to resume."""


# -- packing -----------------------------------------------------------------------------


@dataclass
class Packed:
    """A log packed for upload: a temporary tar file plus its hashes."""

    file: BinaryIO
    size: int
    sha256: str
    chunk_size: int
    chunk_sha256: list[str]
    frames: int

    def chunk(self, index: int) -> bytes:
        self.file.seek(index * self.chunk_size)
        return self.file.read(self.chunk_size)

    def close(self) -> None:
        self.file.close()

    @classmethod
    def of_file(cls, f: BinaryIO, chunk_size: int = CHUNK_SIZE, frames: int = 0) -> Packed:
        """A tar already written to ``f`` (from its start), hashed chunk by chunk."""
        f.seek(0)
        whole = hashlib.sha256()
        hashes = []
        size = 0
        while part := f.read(chunk_size):
            whole.update(part)
            size += len(part)
            hashes.append(hashlib.sha256(part).hexdigest())
        return cls(
            f, size, whole.hexdigest(), chunk_size, hashes or [hashlib.sha256(b"").hexdigest()], frames
        )


def check_log(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir() or not (p / "records.jsonl").is_file():
        raise EdgepilotError(f"{p}: not a driving log (a directory with records.jsonl)")
    return p


def log_files(path: Path) -> list[Path]:
    """The files that make up a log, sorted; hidden files (markers, temporaries) excluded."""
    out = []
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                out.append(Path(dirpath, name))
    return sorted(out, key=lambda p: p.relative_to(path).as_posix())


def pack_log(path: str | Path, chunk_size: int = CHUNK_SIZE) -> Packed:
    """Pack ``path`` into a deterministic tar (same log -> same bytes -> same sha256)."""
    path = check_log(path)
    f = tempfile.TemporaryFile()  # noqa: SIM115 - owned by Packed, closed by Packed.close()
    frames = 0
    with tarfile.open(fileobj=f, mode="w:", format=tarfile.USTAR_FORMAT) as tar:
        for p in log_files(path):
            rel = p.relative_to(path).as_posix()
            data = p.read_bytes()
            if rel == "records.jsonl":
                frames = sum(1 for line in data.splitlines() if line.strip() and b'"op"' not in line)
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return Packed.of_file(f, chunk_size, frames)


# -- the uploader ------------------------------------------------------------------------


@dataclass
class UploadResult:
    bytes: int
    sent_bytes: int
    sha256: str
    chunks: int
    chunks_sent: int
    resumes: int
    log: str | None
    seconds: float
    sent_indices: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "sent_indices"}
        d["mb_per_s"] = round(self.sent_bytes / 1e6 / self.seconds, 2) if self.seconds > 0 else None
        return d


@dataclass
class _Transfer:
    """Where one upload's chunks stand on the car's side."""

    offer: fleet.UploadOffer
    acked: set[int]
    generation: int  # the connection's CONNACK count when this state was last true
    todo: collections.deque[int] = field(default_factory=collections.deque)
    inflight: dict[int, float] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)  # chunks the cloud refused once
    sent_bytes: int = 0
    resumes: int = 0
    last_progress: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.restart(set(self.acked))

    def restart(self, acked: set[int]) -> None:
        self.acked = acked
        self.inflight.clear()
        self.todo = collections.deque(i for i in range(self.offer.chunks) if i not in acked)
        self.last_progress = time.monotonic()

    def take(self, acks: list[fleet.ChunkAck], pbar: Any) -> bool:
        """Count the acks; True when the cloud refused a chunk (once: it may have dropped
        an expired upload, so the car asks what it stored; twice is an error)."""
        bounced = False
        for a in acks:
            if a.upload != self.offer.upload or a.index in self.acked:
                continue
            self.inflight.pop(a.index, None)
            if a.error:
                if a.index in self.refused:
                    raise EdgepilotError(f"the cloud refused chunk {a.index}: {a.error}")
                self.refused.add(a.index)
                bounced = True
                continue
            self.acked.add(a.index)
            self.last_progress = time.monotonic()
            if pbar is not None:
                pbar.update(self.offer.chunk_len(a.index))
        return bounced


class Uploader:
    """Uploads one log at a time over an open ``Connection``."""

    def __init__(
        self,
        conn: Connection,
        car_id: str,
        *,
        chunk_size: int = CHUNK_SIZE,
        window: int = WINDOW,
        timeout_s: float = 10.0,
    ) -> None:
        self.conn = conn
        self.car = fleet.check_id(car_id, "car id")
        self.chunk_size = chunk_size
        self.window = max(1, window)
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._acks: collections.deque[fleet.ChunkAck] = collections.deque()
        self._status: dict[str, fleet.UploadStatus] = {}
        self._cancel = threading.Event()
        conn.subscribe(fleet.upload_topic(self.car, "ack"), self._on_ack, qos=1)
        conn.subscribe(fleet.upload_topic(self.car, "status"), self._on_status, qos=1)

    def cancel(self) -> None:
        """Stop the running upload at the next chunk (it resumes on the next call)."""
        self._cancel.set()

    # network thread --------------------------------------------------------------------
    def _on_ack(self, msg: paho.MQTTMessage) -> None:
        try:
            ack = fleet.decode_ack(msg.payload)
        except WireError as e:
            log.warning("ignoring bad chunk ack: %s", e)
            return
        with self._cond:
            self._acks.append(ack)
            self._cond.notify_all()

    def _on_status(self, msg: paho.MQTTMessage) -> None:
        try:
            st = fleet.decode_status(msg.payload)
        except WireError as e:
            log.warning("ignoring bad upload status: %s", e)
            return
        with self._cond:
            self._status[st.upload] = st
            self._cond.notify_all()

    # caller thread ---------------------------------------------------------------------
    def _ask(self, offer: fleet.UploadOffer) -> fleet.UploadStatus:
        """Offer (or commit) and wait for the cloud's status of this upload."""
        payload = fleet.encode_offer(offer)
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._status.pop(offer.upload, None)
        while time.monotonic() < deadline:
            if not self.conn.connected.wait(max(0.0, deadline - time.monotonic())):
                break
            self.conn.publish(fleet.upload_topic(self.car, "offer"), payload, qos=1)
            with self._cond:
                until = min(deadline, time.monotonic() + 2.0)
                while offer.upload not in self._status and time.monotonic() < until:
                    self._cond.wait(until - time.monotonic())
                st = self._status.pop(offer.upload, None)
            if st is not None:
                if st.state == "error":
                    raise EdgepilotError(f"the cloud refused the upload: {st.error}")
                return st
        raise EdgepilotError(
            f"no answer from a cloud trainer within {self.timeout_s:.0f} s "
            f"(is `edgepilot cloud` running on {self.conn.cfg.url}?)"
        )

    def upload(
        self,
        path: str | Path,
        *,
        progress: bool = True,
        keep_going: Callable[[], bool] | None = None,
    ) -> UploadResult:
        """Upload ``path``; returns once the cloud holds the whole log (verified)."""
        self._cancel.clear()  # before packing: a cancel() while it packs still counts
        t0 = time.perf_counter()
        packed = pack_log(path, self.chunk_size)
        try:
            res = self._send_packed(packed, Path(path).resolve().name, progress, keep_going)
        finally:
            packed.close()
        res.seconds = round(time.perf_counter() - t0, 4)  # packing included
        mark_uploaded(Path(path), packed.sha256, res.log)
        return res

    def send(
        self,
        packed: Packed,
        name: str,
        *,
        progress: bool = True,
        keep_going: Callable[[], bool] | None = None,
    ) -> UploadResult:
        """Send a packed log as ``name`` (``upload`` packs a log directory; a tar file that
        is already packed: ``Packed.of_file``); returns once the cloud holds all of it."""
        self._cancel.clear()
        return self._send_packed(packed, name, progress, keep_going)

    def _send_packed(
        self, packed: Packed, name: str, progress: bool, keep_going: Callable[[], bool] | None
    ) -> UploadResult:
        from edgepilot.progress import bar

        t0 = time.perf_counter()
        offer = fleet.UploadOffer(
            car=self.car,
            upload=packed.sha256,
            name=fleet.check_name(name, "log name"),
            size=packed.size,
            chunk_size=packed.chunk_size,
            chunk_sha256=packed.chunk_sha256,
            frames=packed.frames,
        )
        status = self._ask(offer)
        sent: list[int] = []
        sent_bytes = resumes = 0
        pbar = bar(total=packed.size, desc=f"upload {offer.name}", unit="B") if progress else None
        try:
            # A second round only when the cloud dropped chunks it had acknowledged: the
            # upload expired there (docs/cloud.md, "Limits") between two of our offers.
            for _ in range(2):
                if status.state == "complete":
                    break
                have = fleet.from_ranges(status.have, offer.chunks, "have")
                if pbar is not None:
                    pbar.reset()
                    pbar.update(sum(offer.chunk_len(i) for i in have))
                n, r = self._send(packed, offer, have, sent, pbar, keep_going)
                sent_bytes, resumes = sent_bytes + n, resumes + r
                status = self._ask(offer)  # commit: the cloud assembles and verifies
        finally:
            if pbar is not None:
                pbar.close()
        if status.state != "complete":
            raise EdgepilotError(
                "the cloud still misses chunks after all were acknowledged; run the upload again"
            )
        return UploadResult(
            bytes=packed.size,
            sent_bytes=sent_bytes,
            sha256=packed.sha256,
            chunks=offer.chunks,
            chunks_sent=len(sent),
            resumes=resumes,
            log=status.log,
            seconds=round(time.perf_counter() - t0, 4),
            sent_indices=sent,
        )

    def _send(
        self,
        packed: Packed,
        offer: fleet.UploadOffer,
        have: set[int],
        sent: list[int],
        pbar: Any,
        keep_going: Callable[[], bool] | None,
    ) -> tuple[int, int]:
        """Chunks out, a window at a time, until the cloud acknowledged every one; on a lost
        connection, stalled acks or a refused chunk, ask the cloud what it stored and go on
        from there. Returns (bytes sent, resumes)."""
        tr = _Transfer(offer, have, self.conn.connects)
        with self._cond:
            self._acks.clear()
        while len(tr.acked) < offer.chunks:
            if self._cancel.is_set() or (keep_going is not None and not keep_going()):
                raise UploadCancelled(
                    f"upload cancelled with {len(tr.acked)}/{offer.chunks} chunks acknowledged; run again to resume"
                )
            lost = self._link_broken(tr) or not self._fill(tr, packed, sent)
            bounced = tr.take(self._wait_acks(), pbar)
            lost = lost or self._link_broken(tr)
            stalled = tr.inflight and time.monotonic() - tr.last_progress > self.timeout_s / 2
            if lost or stalled or bounced:
                tr.resumes += 1
                why = "connection lost" if lost else "a chunk refused" if bounced else "acknowledgements stalled"
                st = self._resume(offer, why, len(tr.acked))
                tr.generation = self.conn.connects
                if st.state == "complete":
                    break
                # the cloud's state is the truth: stored before acknowledged, dropped when expired
                tr.restart(fleet.from_ranges(st.have, offer.chunks, "have"))
        return tr.sent_bytes, tr.resumes

    def _link_broken(self, tr: _Transfer) -> bool:
        """A reconnect between two checks of ``connected`` (paho's 0.1 s reconnect is
        quicker than one wait for acks) still lost the acks the cloud sent meanwhile:
        compare connection generations, not just the flag, or such a blip costs a stall."""
        return tr.generation != self.conn.connects or not self.conn.connected.is_set()

    def _fill(self, tr: _Transfer, packed: Packed, sent: list[int]) -> bool:
        """Publish chunks until the window is full; False when the broker refused one."""
        topic = fleet.upload_topic(self.car, "chunk")
        while tr.todo and len(tr.inflight) < self.window:
            i = tr.todo.popleft()
            body = packed.chunk(i)
            payload = fleet.encode_chunk(fleet.ChunkHeader(tr.offer.upload, i, tr.offer.chunk_sha256[i]), body)
            if not self.conn.publish(topic, payload, qos=1):
                tr.todo.appendleft(i)
                return False
            tr.inflight[i] = time.monotonic()
            sent.append(i)
            tr.sent_bytes += len(body)
        return True

    def _wait_acks(self) -> list[fleet.ChunkAck]:
        with self._cond:
            if not self._acks:
                self._cond.wait(0.2)
            acks = list(self._acks)
            self._acks.clear()
        return acks

    def _resume(self, offer: fleet.UploadOffer, why: str, acked: int) -> fleet.UploadStatus:
        """Broken connection, lost or refused acks: ask the cloud what it stored."""
        log.warning("upload %s: %s; resuming from the cloud's state", offer.name, why)
        if not self.conn.connected.wait(self.timeout_s):
            raise EdgepilotError(
                f"connection lost with {acked}/{offer.chunks} chunks acknowledged; run the upload again to resume"
            )
        return self._ask(offer)


def mark_uploaded(path: Path, sha256: str, key: str | None) -> None:
    """The car's record that the cloud holds this log (the log may now be deleted)."""
    (path / MARKER).write_text(json.dumps({"sha256": sha256, "log": key, "at": time.time()}))


def is_uploaded(path: Path) -> bool:
    return (path / MARKER).is_file()


# -- CLI ---------------------------------------------------------------------------------


def cli(args: Any) -> dict[str, Any]:
    """``edgepilot upload LOG``: JSON keys ``bytes``, ``sent_bytes``, ``sha256`` (+ more)."""
    from edgepilot.config import load_profile
    from edgepilot.mqtt import broker_config

    path = check_log(args.log)
    prof = load_profile(getattr(args, "profile", None), default="car")
    cfg = broker_config(prof.broker, getattr(args, "broker", None))
    conn = Connection(cfg, f"{prof.car_id}-upload-{os.getpid()}")
    conn.start()
    try:
        timeout = float(os.environ.get("EDGEPILOT_UPLOAD_TIMEOUT_S", "10"))
        res = Uploader(conn, prof.car_id, timeout_s=timeout).upload(path)
    finally:
        conn.close()
    return res.as_dict()
