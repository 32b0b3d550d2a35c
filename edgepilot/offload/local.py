"""An edge model in this process, behind the car's ``Offloader`` contract.

The cloud's joint check drives a car model with an edge model answering its hard frames
(``edgepilot.sim.drive.scored_drives(edge=...)``) without a broker or an edge node:
the loop encodes each hard frame as it would for the network, this part decodes and
answers it at once, so every answer is in time. What it measures is the edge model's
steering on the frames the car sends, not the network (``edgepilot bench offload`` does).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from edgepilot.drive.parts import Decision, EdgeAnswer, Features, Pilot
from edgepilot.imaging import decode_jpeg


class LocalEdge:
    """Answers each submitted JPEG with ``edge``'s final head."""

    sends_features = False  # frame mode: the JPEG, as a car sends to an edge without tails

    def __init__(self, edge: Pilot) -> None:
        self.edge = edge
        self.counts = {"sent": 0, "answered": 0, "undecodable": 0}
        self._answers: dict[int, EdgeAnswer] = {}

    def track(self, model: Pilot, dec: Decision | None = None) -> None:
        pass

    def submit(
        self,
        frame_index: int,
        jpeg: bytes | None,
        deadline_s: float | None = None,
        *,
        features: Features | Mapping[int, Features] | None = None,
        stage: int | None = None,
        model: str | None = None,
    ) -> bool:
        image = decode_jpeg(jpeg) if jpeg is not None else None
        if image is None:
            self.counts["undecodable"] += 1
            return False
        self.counts["sent"] += 1
        t0 = time.perf_counter()
        dec = self.edge.infer(image)
        ms = (time.perf_counter() - t0) * 1e3
        version = getattr(self.edge, "version", None)
        self._answers[frame_index] = EdgeAnswer(
            frame_index, dec.steering, dec.throttle, dec.confidence, version, "local", ms, compute_ms=ms
        )
        return True

    def poll(self, frame_index: int, wait_until: float) -> EdgeAnswer | None:
        ans = self._answers.pop(frame_index, None)
        self.counts["answered"] += ans is not None
        return ans

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.counts)

    def close(self) -> None:
        self._answers.clear()
