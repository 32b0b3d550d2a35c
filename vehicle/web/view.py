"""What the page sees: the newest camera frame and the loop's per-frame info.

``View.update`` is the loop's ``on_frame`` (the loop thread): it only keeps references
and wakes the server, so the loop pays microseconds per frame whether or not a page
watches. The JPEG is encoded later, on the server's side, once per frame however many
pages watch, and only when one does (simplejpeg releases the GIL while it encodes).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgepilot.drive.parts import Frame
from edgepilot.imaging import encode_jpeg

# the loop's info keys the HUD shows; later ones are shown when the loop provides them
HUD_KEYS = (
    "mode",
    "steering",
    "throttle",
    "recording",
    "records",
    "estop",
    "exit",
    "confidence",
    "offloaded",
    "edge_used",
    "model_version",
    "edge_rtt_ms",
    "label_source",
    "loop_hz",
)


def plain(v: Any) -> Any:
    """A JSON-safe value: numpy scalars as Python numbers, NaN as None, rounded floats."""
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int | np.integer) and not isinstance(v, np.bool_):
        return int(v)
    if isinstance(v, float | np.floating):
        f = float(v)
        return round(f, 4) if math.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return str(v)


class View:
    def __init__(self, jpeg_quality: int = 80, rate_window: int = 41) -> None:
        self._lock = threading.Lock()
        self._quality = int(jpeg_quality)
        self.seq = 0  # frames seen (the server waits for a newer one)
        self._image: np.ndarray | None = None
        self._jpeg: bytes | None = None  # the source's own bytes (replay), or the encoded cache
        self._jpeg_seq = -1
        self._index = 0
        self._t = 0.0  # wall clock of the newest frame (epoch s)
        self._info: dict[str, Any] = {}
        self._times: collections.deque[float] = collections.deque(maxlen=rate_window)
        self.on_new: Callable[[], None] | None = None  # set by the server; thread-safe

    def update(self, frame: Frame, info: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self.seq += 1
            self._image, self._index, self._t = frame.image, frame.index, time.time()
            self._jpeg, self._jpeg_seq = (frame.jpeg, self.seq) if frame.jpeg is not None else (None, -1)
            self._info = info
            self._times.append(now)
        wake = self.on_new
        if wake is not None:
            wake()

    def loop_hz(self) -> float | None:
        """The loop's rate over the last frames (from the on_frame times)."""
        with self._lock:
            t = self._times
            if len(t) < 2 or t[-1] <= t[0]:
                return None
            if time.monotonic() - t[-1] > 2.0:  # stalled or ended
                return 0.0
            return (len(t) - 1) / (t[-1] - t[0])

    def hud(self) -> dict[str, Any]:
        with self._lock:
            info = dict(self._info)
            seq, index, t = self.seq, self._index, self._t
        out = {k: plain(info.get(k)) for k in HUD_KEYS}
        if out["loop_hz"] is None:
            hz = self.loop_hz()
            out["loop_hz"] = None if hz is None else round(hz, 1)
        out.update(seq=seq, frame=index, frame_t=round(t * 1e3, 1))
        return out

    def jpeg(self) -> tuple[int, int, float, bytes] | None:
        """(seq, frame index, frame time epoch s, JPEG) of the newest frame; encodes at
        most once per frame. Called off the loop thread."""
        with self._lock:
            seq, image, index, t = self.seq, self._image, self._index, self._t
            if image is None:
                return None
            if self._jpeg_seq == seq and self._jpeg is not None:
                return seq, index, t, self._jpeg
        data = encode_jpeg(image, self._quality)
        with self._lock:
            if self.seq == seq:
                self._jpeg, self._jpeg_seq = data, seq
        return seq, index, t, data
