"""Write and read driving logs (the format is defined in ``edgepilot.schema.log``).

Writing happens on background threads so the control loop only pays for a queue put.
Two workers (by default) share the work; each encodes a JPEG and writes the image file
-- OpenCV and the file syscalls release the GIL, so two frames are encoded at once on
two cores. The second worker only joins while frames queue up (a burst, offline
conversion); at a steady frame rate one keeps up. Finished lines are committed strictly
in queue order: a line waits (in memory, not a thread) until every earlier one is
written, so the file never has a hole. One worker alone reached about half to two
thirds of bare JPEG encoding's speed on an idle machine, because it serialises encoding
and file creation (``edgepilot bench record``, docs/benchmarks.md). Lines are flushed to
the OS whenever the queue runs dry, so ``kill -9`` loses only what was still queued; an
image is always on disk before the line that names it.

Reading never crashes on a damaged log: a truncated or corrupt line, a 0-byte or
undecodable JPEG is skipped with one warning and counted in ``LogReader.skipped``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.imaging import decode_jpeg, encode_jpeg
from edgepilot.schema.log import (
    DeleteRange,
    Record,
    RecordError,
    SessionMeta,
    decode_line,
    encode_delete,
    encode_record,
)

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
META = "meta.json"
IMAGES = "images"


def image_name(i: int) -> str:
    return f"{IMAGES}/{i:06d}.jpg"


def new_session_dir(root: str | Path, prefix: str = "") -> Path:
    """A fresh, sortable session directory name under ``root``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{prefix}{stamp}-{uuid.uuid4().hex[:6]}"


class LogWriter:
    """Append-only, crash-safe recorder for one session.

    ``write()`` never blocks the caller unless ``block=True`` (benchmarks, offline
    conversion); when the queue is full a frame is dropped and counted in ``dropped``.
    ``workers`` threads encode and write frames in parallel; record lines still land in
    the order ``write()``/``delete()`` were called.
    """

    def __init__(
        self,
        path: str | Path,
        meta: SessionMeta | None = None,
        *,
        jpeg_quality: int = 90,
        queue_frames: int = 512,
        block: bool = False,
        workers: int = 2,
    ) -> None:
        self.path = Path(path)
        (self.path / IMAGES).mkdir(parents=True, exist_ok=True)
        if (self.path / RECORDS).exists() and (self.path / RECORDS).stat().st_size:
            raise EdgepilotError(f"{self.path}: already holds a driving log; pick a new directory")
        self.meta = meta or SessionMeta(session=uuid.uuid4().hex, created=time.time(), source="car")
        tmp = self.path / (META + ".tmp")
        tmp.write_text(self.meta.to_json())
        os.replace(tmp, self.path / META)
        self._lines = open(self.path / RECORDS, "ab", buffering=1 << 16)  # noqa: SIM115
        self._quality = int(jpeg_quality)
        self._dir = str(self.path)
        self._q: queue.Queue = queue.Queue(maxsize=queue_frames)
        self._block = block
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.failed: str | None = None  # the first line-write error (disk full): no more lines
        self._closed = False
        # Ordering: a worker takes an item and its ticket under ``_take``; finished lines
        # wait in ``_ready`` until every earlier ticket is committed.
        self._take = threading.Lock()
        self._taken = 0
        self._commit = threading.Lock()
        self._ready: dict[int, tuple[bytes | None, bool]] = {}
        self._committed = 0
        # Helpers sleep on ``_backlog`` and join in only while frames queue up: at a
        # steady 20-60 Hz one thread keeps up, and a caller's put() then wakes only that
        # one -- with every worker waiting on the queue, write() had multi-millisecond
        # p99 outliers on a busy 2-core machine (docs/benchmarks.md, "Recorder").
        self._backlog = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(k > 0,), name=f"log-writer-{k}", daemon=True)
            for k in range(max(1, int(workers)))
        ]
        for th in self._threads:
            th.start()

    # -- the control loop's side -------------------------------------------------
    def write(self, rec: Record, frame: np.ndarray | bytes | None = None) -> bool:
        """Queue one record and its frame (BGR array, or JPEG bytes already encoded).

        Returns False when the frame was dropped because the writer is behind."""
        if self._closed:
            raise EdgepilotError(f"{self.path}: log is closed")
        if frame is not None and rec.image is None:
            rec.image = image_name(rec.i)
        try:
            self._q.put((rec, frame), block=self._block)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def delete(self, first: int, last: int) -> None:
        """Mark records ``first..last`` deleted (appends a line; rewrites nothing)."""
        self._q.put((DeleteRange(first, last), None), block=True)

    def close(self) -> None:
        """Drain the queue, flush and fsync. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._q.put(None)
        self._backlog.set()
        for th in self._threads:
            th.join()
        try:
            self._lines.flush()
            os.fsync(self._lines.fileno())
        except OSError as e:  # disk full: what reached the file stays readable
            self._line_error(e)
        finally:
            with contextlib.suppress(OSError):  # the same error again, from close's own flush
                self._lines.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer threads ------------------------------------------------------
    def _run(self, helper: bool) -> None:
        q = self._q
        ready = self._ready
        while True:
            if helper:
                self._backlog.wait()
            with self._take:
                if helper:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        if self._closed:
                            return
                        self._backlog.clear()  # caught up: back to sleep
                        continue
                else:
                    item = q.get()
                    if len(self._threads) > 1 and not q.empty():
                        self._backlog.set()  # frames are queueing up: wake the helpers
                ticket = self._taken
                self._taken += 1
            if item is None:
                return  # sentinels come after every real item; nothing to commit
            line = self._prepare(*item)
            with self._commit:
                # Commit every line that is ready, in ticket order: no worker ever waits
                # for another's encoding, and the file never gets a hole.
                ready[ticket] = line
                n = self._committed
                while n in ready:
                    out, is_record = ready.pop(n)
                    if out is None or self.failed is not None:
                        self.errors += 1
                    else:
                        try:
                            self._lines.write(out)
                            self.written += is_record
                        except OSError as e:
                            self.errors += 1
                            self._line_error(e)
                    n += 1
                self._committed = n
                if q.empty() and self.failed is None:
                    try:
                        self._lines.flush()  # hand the lines to the OS: they now survive kill -9
                    except OSError as e:
                        self._line_error(e)

    def _line_error(self, e: OSError) -> None:
        """The records file cannot grow (disk full, file size limit): stop appending
        lines for good -- a later line after a torn one would be lost with it anyway -- and
        count every further record as an error. The writer thread must not die: a dead
        worker holds its ticket and every later line would wait for it forever."""
        if self.failed is None:
            self.failed = f"{e.strerror or e}"
            log.error("%s: cannot append to %s (%s); recording stops, driving goes on", self.path, RECORDS, e)

    def _prepare(
        self, rec: Record | DeleteRange, frame: np.ndarray | bytes | None
    ) -> tuple[bytes | None, bool]:
        """Write the frame's image file; return (the line to append or None on an I/O
        error, whether it is a record line)."""
        if isinstance(rec, DeleteRange):
            return encode_delete(rec), False
        try:
            if frame is not None:
                if isinstance(frame, np.ndarray):
                    data = encode_jpeg(frame, self._quality)
                else:
                    data = frame
                name = f"{self._dir}/{rec.image}"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    view = memoryview(data)
                    while view:  # a nearly full disk takes part of a write, then ENOSPC
                        view = view[os.write(fd, view) :]
                except OSError:
                    os.unlink(name)  # never leave a torn image for a line to name
                    raise
                finally:
                    os.close(fd)
            return encode_record(rec), True
        except OSError as e:  # disk full, permissions: count it, keep the thread alive
            if self.errors == 0 or self.errors % 1000 == 999:
                log.error(
                    "%s: could not write record %d: %s (%d errors so far)", self.path, rec.i, e, self.errors
                )
            return None, True


@dataclass
class LogReader:
    """A driving log opened for reading. Damaged parts are skipped, counted and warned about."""

    path: Path
    meta: SessionMeta = field(init=False)
    skipped: int = 0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped = 0
        if not (self.path / RECORDS).is_file():
            raise EdgepilotError(f"{self.path}: not a driving log (no {RECORDS})")
        try:
            self.meta = SessionMeta.from_json((self.path / META).read_text())
        except FileNotFoundError:
            log.warning("%s: no %s; using defaults", self.path, META)
            self.meta = SessionMeta(session=self.path.name, created=0.0, source="unknown")
        except RecordError as e:
            raise EdgepilotError(f"{self.path / META}: {e}") from None
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        """Every live record, in order, deleted ranges removed. Cached."""
        if self._records is None:
            recs: list[Record] = []
            deletes: list[DeleteRange] = []
            with open(self.path / RECORDS, "rb") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        item = decode_line(line)
                    except RecordError as e:
                        self._warn(f"{RECORDS} line {n}: {e}; skipped")
                        continue
                    (deletes if isinstance(item, DeleteRange) else recs).append(item)
            if deletes:
                recs = [r for r in recs if not any(d.first <= r.i <= d.last for d in deletes)]
            self._records = recs
        return self._records

    def __len__(self) -> int:
        return len(self.records())

    def jpeg(self, rec: Record) -> bytes | None:
        """The frame's JPEG bytes, or None (with a warning) when missing or empty."""
        if rec.image is None:
            return None
        try:
            data = (self.path / rec.image).read_bytes()
        except OSError as e:
            self._warn(f"{rec.image}: {e.strerror}; skipped")
            return None
        if not data:
            self._warn(f"{rec.image}: 0-byte image; skipped")
            return None
        return data

    def image(self, rec: Record) -> np.ndarray | None:
        """The decoded BGR frame, or None (with a warning) when it cannot be read."""
        data = self.jpeg(rec)
        if data is None:
            return None
        img = decode_jpeg(data)
        if img is None:
            self._warn(f"{rec.image}: not a decodable JPEG; skipped")
        return img

    def frames(self) -> Iterator[tuple[Record, np.ndarray]]:
        """(record, frame) for every record whose frame decodes."""
        for rec in self.records():
            img = self.image(rec)
            if img is not None:
                yield rec, img

    def _warn(self, msg: str) -> None:
        self.skipped += 1
        log.warning("%s: %s", self.path, msg)


def find_logs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand arguments into log directories: a log itself, or a folder of logs."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / RECORDS).is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(d.parent for d in p.glob(f"*/{RECORDS}"))
            if not found:
                raise EdgepilotError(f"{p}: no driving logs in it")
            out.extend(found)
        else:
            raise EdgepilotError(f"{p}: no such driving log")
    return out
