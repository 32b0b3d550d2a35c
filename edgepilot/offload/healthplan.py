"""The car's split plan, fed by the edge nodes' health (which split point to send).

Every edge node publishes (retained, every second) which car model versions it has tails
for, and per split point the tail's validation MAE and its measured compute. The car's
offload client subscribes to that (``wire.HEALTH_FILTER``) and keeps one
``edgepilot.offload.planner.SplitPlanner`` for the model the loop runs now. Its candidates:

- each split point for which *every* live node has a tail for this car model version —
  the nodes of a group share requests (the broker hands each to any of them), so a split
  one node lacks would be answered with an error half the time;
- frame mode (the JPEG and the edge's own model), always; its accuracy is the edge
  model's validation MAE from the health (``model_mae``), so the plan weighs the edge's
  bigger model against the tails on the same footing.

The car's side of each candidate is measured by the car: bytes actually sent per split
point (until then the 8-bit size ``C*H*W`` from the health's shape, an upper bound of
what zlib leaves), packing time, and per-stage compute from its own runtime; the link's
round trip and bandwidth the planner fits from the answers. The edge side is the health's
tail compute (frame mode: the compute of the car's JPEG answers, else the node's p50).

The plan is rebuilt when a health message arrives (a node gained or lost tails, its
compute moved), when a node goes offline or silent (``stale_s``), and when the car swaps
its model (``follow``): candidates change, the link estimates stay. When no live node has
tails for the version, frame mode is the only candidate. When no node has been heard of
at all, ``active`` is False and the client keeps its plain split mode with the error
fallback (it knows nothing better).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho

from edgepilot.offload.planner import FRAME, Candidate, SplitPlanner, candidates_from_health
from edgepilot.schema import wire

log = logging.getLogger(__name__)

DEFAULT_JPEG_BYTES = 6000.0  # a 160x120 frame at quality 90, until the car has sent one
DEFAULT_EDGE_MS = 2.0  # edge compute of a way nobody has measured yet
HEADER_BYTES = 200.0  # the request's JSON header line


def _ema(old: float | None, new: float, a: float = 0.1) -> float:
    return new if old is None else (1 - a) * old + a * new


class HealthPlanner:
    """One car's plan from edge health; thread-safe (health and answers arrive on the
    network thread, the loop reads ``planner.choice`` and follows model swaps)."""

    def __init__(self, deadline_ms: float, *, stale_s: float = 5.0) -> None:
        self.stale_s = stale_s
        self.planner = SplitPlanner(
            [Candidate(FRAME, DEFAULT_JPEG_BYTES, DEFAULT_EDGE_MS)], [], deadline_ms=deadline_ms
        )
        self.version: str | None = None
        self.active = False
        self.splits: list[int] = []  # split points with tails for ``version`` on every live node
        self.rebuilds = 0
        self._nodes: dict[str, tuple[float, wire.EdgeHealth]] = {}
        self._sizes: dict[int, float] = {}  # split point (FRAME: JPEG) -> bytes sent, smoothed
        self._encode_ms: dict[int, float] = {}
        self._frame_ms: float | None = None  # edge compute of JPEG answers, smoothed
        self._car_ms: dict[int, float] = {}  # split point -> the car's compute of its segment
        self._lock = threading.RLock()

    # -- inputs ----------------------------------------------------------------------------
    def on_health(self, msg: paho.MQTTMessage) -> None:
        """Network thread: one node's (retained) health."""
        if not msg.payload:
            return
        try:
            h = wire.decode_health(msg.payload)
        except wire.WireError as e:
            log.debug("offload: ignoring edge health on %s: %s", msg.topic, e)
            return
        with self._lock:
            if h.status == "up":
                self._nodes[h.node] = (time.monotonic(), h)
            elif self._nodes.pop(h.node, None) is None:
                return  # offline, and we never counted it
            self.refresh()

    def follow(self, version: str | None) -> bool:
        """The car runs ``version`` now (start, hot-swap): plan for it. True on a change."""
        with self._lock:
            if version == self.version:
                return False
            self.version = version
            self._car_ms.clear()
            self._sizes = {k: v for k, v in self._sizes.items() if k == FRAME}  # other shapes now
            self._encode_ms.clear()
            self.refresh()
            log.info("offload: planning for car model %s: %s", version, self.describe())
            return True

    def note_stages(self, stage_ms: dict[str, float]) -> None:
        """The car's own per-stage compute (``Decision.stage_ms``: ``stage0``, ``stage1-2``,
        ... — a merged segment's time counts on its last stage, where it can be split)."""
        with self._lock:
            for name, ms in stage_ms.items():
                if name.startswith("stage"):
                    k = int(name[5:].rpartition("-")[2])
                    self._car_ms[k] = _ema(self._car_ms.get(k), ms)
            # no re-choice: a hard frame has run every stage anyway (the planner's sunk cost)
            self.planner.car_stage_ms = self._car_stage_ms(self.splits)

    def _car_stage_ms(self, stages: Iterable[int | str]) -> list[float]:
        top = max([*self._car_ms, *(int(k) for k in stages)], default=-1)
        return [self._car_ms.get(k, 0.0) for k in range(top + 1)]

    def note_sent(self, stage: int, nbytes: int, encode_ms: float | None = None) -> None:
        with self._lock:
            self._sizes[stage] = _ema(self._sizes.get(stage), float(nbytes))
            if encode_ms is not None:
                self._encode_ms[stage] = _ema(self._encode_ms.get(stage), encode_ms)

    def note_answer(self, stage: int, compute_ms: float | None, wire_bytes: int, link_ms: float) -> bool:
        """An answer in time: the link fit, and frame mode's edge compute. True on a new choice."""
        with self._lock:
            if stage == FRAME and compute_ms is not None and math.isfinite(compute_ms):
                self._frame_ms = _ema(self._frame_ms, compute_ms)
            return self.planner.observe(wire_bytes, link_ms)

    def set_deadline(self, deadline_ms: float) -> None:
        with self._lock:
            if abs(deadline_ms - self.planner.deadline_ms) > 1e-6:
                self.planner.update(deadline_ms=deadline_ms)

    # -- the plan --------------------------------------------------------------------------
    def _live(self) -> list[wire.EdgeHealth]:
        now = time.monotonic()
        for node in [n for n, (t, _) in self._nodes.items() if now - t > self.stale_s]:
            log.info("offload: edge %s silent for %.0f s; planning without it", node, self.stale_s)
            del self._nodes[node]
        return [h for _, h in self._nodes.values()]

    def _common_stages(self, live: list[wire.EdgeHealth]) -> dict[str, dict[str, Any]]:
        """Per split point every live node serves for ``version``: the worst MAE and compute."""
        per_node = []
        for h in live:
            entry = next((e for e in h.tails or [] if e.get("car_model") == self.version), None)
            per_node.append((entry or {}).get("stages") or {})
        common = set(per_node[0]).intersection(*per_node[1:]) if per_node else set()
        out = {}
        for k in common:
            sts = [st[k] for st in per_node]
            maes = [s.get("val_mae") for s in sts if s.get("val_mae") is not None]
            hard = [s.get("hard_mae") for s in sts if s.get("hard_mae") is not None]
            mss = [s.get("compute_ms") for s in sts if s.get("compute_ms") is not None]
            out[k] = {
                "shape": sts[0].get("shape"),
                "val_mae": max(maes) if maes else None,
                "hard_mae": max(hard) if len(hard) == len(sts) else None,
                "compute_ms": max(mss) if mss else None,
            }
        return out

    def refresh(self) -> bool:
        """Rebuild the candidates from what is known now; True when the choice changed."""
        with self._lock:
            live = self._live()
            if self.version is None or not live:
                self.active, self.splits = False, []
                return False
            stages = self._common_stages(live)
            wire_bytes = {}
            for key, st in stages.items():
                k = int(key)
                shape = st.get("shape") or []
                est = float(math.prod(shape)) + HEADER_BYTES if shape else DEFAULT_JPEG_BYTES
                wire_bytes[k] = self._sizes.get(k, est)
            cands = candidates_from_health(
                {"stages": stages}, wire_bytes, encode_ms=self._encode_ms, default_edge_ms=DEFAULT_EDGE_MS
            )
            p50s = [h.latency_p50_ms for h in live if h.latency_p50_ms is not None]
            frame_ms = self._frame_ms if self._frame_ms is not None else max(p50s, default=DEFAULT_EDGE_MS)
            # frame mode's accuracy: the worst live node's edge model (any node may answer);
            # unknown if one does not say, and unknown ranks below every known MAE
            maes = [h.model_mae for h in live]
            frame_mae = None if None in maes else max(maes)  # type: ignore[type-var]
            cands.append(
                Candidate(FRAME, self._sizes.get(FRAME, DEFAULT_JPEG_BYTES), frame_ms, mae=frame_mae)
            )
            before = self.planner.choice if self.active else None
            self.planner.set_candidates(cands, self._car_stage_ms(stages))
            self.splits = sorted(int(k) for k in stages)
            self.active = True
            self.rebuilds += 1
            changed = self.planner.choice != before
            if changed:
                log.info("offload: split plan for %s -> %s", self.version, self.describe())
            return changed

    def describe(self) -> str:
        if not self.active:
            return "no edge heard of yet"
        c = self.planner.choice
        return (
            f"{'frame mode' if c == FRAME else f'split after stage {c}'} (tails for {self.splits or 'none'})"
        )

    def summary(self) -> dict[str, Any]:
        """For the drive's JSON: what was planned and on what."""
        with self._lock:
            return {
                "car_model": self.version,
                "active": self.active,
                "choice": None
                if not self.active
                else ("frame" if self.planner.choice == FRAME else self.planner.choice),
                "splits": list(self.splits),
                "nodes": sorted(self._nodes),
                "rtt_ms": round(self.planner.rtt_ms, 3),
                "bandwidth_mbps": round(self.planner.bandwidth_mbps, 1),
                "table": self.planner.table() if self.active else [],
            }
