"""The edge node's split-mode tails: one ``TailSet`` per car model version.

A fleet runs several car model versions at once (the cloud pushes new ones; cars swap
between frames), and features from one version mean nothing to another's tail. So the node
keeps a shelf: ``--tails FILE`` serves one version; ``--tails DIR`` serves every
``*.pt`` tails file in the directory and looks again (at most every ``rescan_s``) when a
request names a version it does not have, so tails trained for a newly pushed car model
(``edgepilot.model.tail.train_tails`` + ``TailSet.save`` into the directory) are served
without a restart. A file that does not load is logged and skipped, never fatal. Tails the
cloud pushes (``edge_node.tailpush``) are added with ``add`` — written into the directory
first when the shelf has one, so a restarted node still has them.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.model.tail import TailSet

log = logging.getLogger(__name__)


class TailShelf:
    def __init__(self, source: str | Path | TailSet | None = None, rescan_s: float = 5.0) -> None:
        self.sets: dict[str, TailSet] = {}
        self.dir: Path | None = None
        self.rescan_s = rescan_s
        self._seen: set[Path] = set()
        self._next_scan = 0.0
        self._lock = threading.Lock()
        self.tail_ms: dict[tuple[str, int], float] = {}  # (car version, stage) -> per-frame ms, smoothed
        if isinstance(source, TailSet):
            self.sets[source.car_version] = source
        elif source is not None:
            p = Path(source)
            if p.is_dir():
                self.dir = p
                self._scan()
            elif p.exists():
                ts = TailSet.load(p)
                self.sets[ts.car_version] = ts
            else:
                raise EdgepilotError(f"tails {p}: no such file or directory")

    def _scan(self) -> None:
        assert self.dir is not None
        for f in sorted(self.dir.glob("*.pt")):
            if f in self._seen:
                continue
            self._seen.add(f)
            try:
                ts = TailSet.load(f)
            except EdgepilotError as e:
                log.warning("edge: skipping %s", e)
                continue
            self.sets[ts.car_version] = ts
            log.info("edge: serving split mode for car model %s (%s)", ts.car_version, f.name)

    def add(self, ts: TailSet, path: Path | None = None) -> None:
        """Serve ``ts`` from now on (pushed tails: ``edge_node.tailpush``); ``path``, the
        file it came from in this shelf's directory, is not loaded again by a rescan."""
        with self._lock:
            if path is not None:
                self._seen.add(path)
            self.sets[ts.car_version] = ts
        log.info("edge: serving split mode for car model %s (pushed)", ts.car_version)

    def get(self, car_version: str | None) -> TailSet | None:
        """The tails for ``car_version``; a miss rescans the directory (throttled)."""
        if car_version is None:
            return None
        ts = self.sets.get(car_version)
        if ts is None and self.dir is not None and time.monotonic() >= self._next_scan:
            with self._lock:
                self._next_scan = time.monotonic() + self.rescan_s
                self._scan()
            ts = self.sets.get(car_version)
        return ts

    def timed(self, car_version: str, stage: int, per_frame_ms: float) -> None:
        key = (car_version, stage)
        old = self.tail_ms.get(key)
        self.tail_ms[key] = per_frame_ms if old is None else 0.9 * old + 0.1 * per_frame_ms

    def summary(self) -> list[dict[str, Any]]:
        """For the node's health: per car model version, per split point: shape, validation
        MAE (over all frames, and over the frames the car marks hard) and the measured
        per-frame tail compute (null until used)."""
        out = []
        for version, ts in sorted(dict(self.sets).items()):  # a copy: pushes add from another thread
            stages = {}
            for k, t in sorted(ts.tails.items()):
                ms = self.tail_ms.get((version, k))
                stages[str(k)] = {
                    "shape": list(t.shape),
                    "val_mae": t.val_mae,
                    "hard_mae": t.hard_mae,
                    "compute_ms": None if ms is None else round(ms, 4),
                }
            out.append({"car_model": version, "stages": stages})
        return out
