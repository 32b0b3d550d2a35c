"""Upload when idle and connected: the car's background uploader of finished driving logs.

Wired by ``edgepilot drive`` (``vehicle.car``); the transfer itself (chunks, resume,
hashes) is ``vehicle.upload.Uploader``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgepilot import EdgepilotError
from vehicle.upload import UploadCancelled, Uploader, UploadResult, is_uploaded

log = logging.getLogger(__name__)


class IdleUploader:
    """The car's background uploader: while the car is idle and the broker is connected,
    send every finished log under ``root`` that the cloud does not have yet.

    A log counts as finished when it has not changed for ``settle_s``. Leaving idle
    cancels the running upload between chunks; it resumes next time. With
    ``delete_after`` a log is deleted once the cloud acknowledged all of it — never before.
    """

    def __init__(
        self,
        uploader: Uploader,
        root: str | Path,
        is_idle: Callable[[], bool],
        *,
        interval_s: float = 5.0,
        settle_s: float = 10.0,
        delete_after: bool = False,
        exclude: Callable[[Path], bool] | None = None,  # e.g. the session being recorded now
    ) -> None:
        self.uploader = uploader
        self.root = Path(root)
        self.is_idle = is_idle
        self.interval_s = interval_s
        self.settle_s = settle_s
        self.delete_after = delete_after
        self.exclude = exclude
        self.done: list[UploadResult] = []
        self.done_at: float | None = None  # when the last upload completed (the dashboard shows it)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pending(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        now = time.time()
        out = []
        for p in sorted(self.root.iterdir()):
            rec = p / "records.jsonl"
            if (
                p.is_dir()
                and rec.is_file()
                and not is_uploaded(p)
                and not (self.exclude is not None and self.exclude(p))
                and now - rec.stat().st_mtime >= self.settle_s
            ):
                out.append(p)
        return out

    def run_once(self) -> int:
        """Upload what is pending while idle and connected; returns logs completed."""
        n = 0
        for p in self.pending():
            if self._stop.is_set() or not self.is_idle() or not self.uploader.conn.connected.is_set():
                break
            try:
                res = self.uploader.upload(
                    p, progress=False, keep_going=lambda: self.is_idle() and not self._stop.is_set()
                )
            except UploadCancelled as e:
                log.info("%s: %s", p.name, e)
                break
            except EdgepilotError as e:
                self.errors.append(f"{p.name}: {e}")
                log.warning("upload of %s failed: %s", p.name, e)
                continue
            self.done.append(res)
            self.done_at = time.time()
            n += 1
            if self.delete_after:
                shutil.rmtree(p, ignore_errors=True)
        return n

    def start(self) -> IdleUploader:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.run_once()

        self._thread = threading.Thread(target=loop, name="idle-upload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.uploader.cancel()
        if self._thread is not None:
            self._thread.join(5)

    close = stop  # a car part: closed after the drive
