"""Replay: the frames of a recorded driving log through the onboard loop.

The JPEG bytes are handed on with the decoded image so that recording a replay does not
re-encode, and the recorded label (with its source) rides along for scoring and for the
loop's 'user' (``edgepilot.drive.loop.ReplayLabel``).
"""

from __future__ import annotations

import time
from pathlib import Path

from edgepilot import EdgepilotError
from edgepilot.drive.parts import Frame
from edgepilot.drivelog import LogReader
from edgepilot.imaging import decode_jpeg
from edgepilot.schema.log import label_source_of


class ReplaySource:
    """Frames of a recorded log, at recorded timing (``realtime``) or as fast as possible."""

    def __init__(self, path: str | Path, rate: str = "max", loop: bool = False) -> None:
        self.reader = LogReader(path)
        self.records = self.reader.records()
        if not self.records:
            raise EdgepilotError(f"{path}: the log holds no records")
        self.rate = rate
        self.loop = loop
        self._pos = 0
        self._t0_wall: float | None = None
        self._t0_rec = self.records[0].t
        self.decode_errors = 0

    def read(self) -> Frame | None:
        while True:
            if self._pos >= len(self.records):
                if not self.loop:
                    return None
                self._pos, self._t0_wall = 0, None
            rec = self.records[self._pos]
            self._pos += 1
            data = self.reader.jpeg(rec)
            img = None if data is None else decode_jpeg(data)
            if img is None:
                self.decode_errors += 1  # counted; the reader already warned for missing/empty files
                continue
            if self.rate == "realtime":
                now = time.monotonic()
                if self._t0_wall is None:
                    self._t0_wall = now
                wait = (rec.t - self._t0_rec) - (now - self._t0_wall)
                if wait > 0:
                    time.sleep(wait)
            return Frame(
                img,
                rec.t,
                rec.i,
                jpeg=data,
                label=(rec.steering, rec.throttle),
                truth=dict(rec.sim),
                label_source=label_source_of(rec, self.reader.meta.source),
            )

    def close(self) -> None:
        pass
