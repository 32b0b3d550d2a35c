"""Choosing the split point (co-inference by partitioning; Neurosurgeon's idea).

Shared: the car runs it (``edgepilot.offload.healthplan`` builds one from edge health) and the
split benchmark feeds it its measurements (``testbed.split_bench``).

For each way of asking the edge, the end-to-end time of an answer is predicted from
measured parts: the car's own stages up to the split that it would not run anyway, the
8-bit + zlib encoding, the link (round trip plus bytes over bandwidth), and the edge's
compute for what is left. ``frame`` mode is one more candidate: the JPEG the car already
has, and the edge's whole model. Among the candidates whose prediction fits the deadline,
the one with the best measured accuracy (steering MAE on held-out logs) wins, the faster
on a tie; when none fits, the fastest. The choice is made again whenever a measurement
changes (``update``/``observe``), because on a congested link the bytes term dominates and
on an idle one the edge compute does.

Sunk car compute: a frame is known to be hard only at the car's final exit, so by then the
car has run every stage, and a later split costs the car nothing extra. ``sunk_stages``
says how many stages the car runs regardless (default: all); with fewer, earlier splits
save the car's time and the planner counts it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

REFIT_EVERY = 4  # answers between two fits of the link model
FRAME = -1  # the candidate "send the JPEG, the edge runs its own model"


@dataclass
class Candidate:
    """One way to ask: split after stage ``stage`` (or ``FRAME``)."""

    stage: int
    wire_bytes: float  # request payload size, measured (mean over frames)
    edge_ms: float  # edge compute for it at batch 1 (decode/unpack + tail or model)
    encode_ms: float = 0.0  # car-side packing (quantize + zlib; JPEG is already made)
    mae: float | None = None  # held-out steering MAE of the answer


@dataclass
class SplitPlanner:
    candidates: list[Candidate]
    car_stage_ms: list[float]  # measured per-stage compute on the car
    rtt_ms: float = 1.0  # link round trip without payload (measured)
    bandwidth_mbps: float = 100.0  # link bandwidth (measured)
    deadline_ms: float = 33.3
    sunk_stages: int | None = None  # None: all (hard frames are known at the final exit)
    choice: int = field(init=False, default=FRAME)
    changes: int = field(init=False, default=0)
    _obs: deque = field(init=False, default_factory=lambda: deque(maxlen=64))
    _n_obs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("SplitPlanner needs at least one candidate")
        self.choice = self._choose()

    def predict_ms(self, c: Candidate) -> float:
        sunk = len(self.car_stage_ms) if self.sunk_stages is None else self.sunk_stages
        car = sum(self.car_stage_ms[sunk : c.stage + 1]) if c.stage >= 0 else 0.0
        link = self.rtt_ms + c.wire_bytes * 8 / (self.bandwidth_mbps * 1e3)  # Mbit/s -> bits per ms
        return car + c.encode_ms + link + c.edge_ms

    def table(self) -> list[dict]:
        return [
            {
                "split": "frame" if c.stage == FRAME else c.stage,
                "wire_bytes": round(c.wire_bytes),
                "predicted_ms": round(self.predict_ms(c), 3),
                "mae": c.mae,
                "chosen": c.stage == self.choice,
            }
            for c in self.candidates
        ]

    def _choose(self) -> int:
        timed = [(self.predict_ms(c), c) for c in self.candidates]
        fit = [(t, c) for t, c in timed if t <= self.deadline_ms]
        if not fit:
            return min(timed, key=lambda tc: tc[0])[1].stage
        return min(fit, key=lambda tc: (math.inf if tc[1].mae is None else tc[1].mae, tc[0]))[1].stage

    def _rechoose(self) -> bool:
        new = self._choose()
        changed = new != self.choice
        self.choice = new
        self.changes += changed
        return changed

    def update(
        self,
        *,
        rtt_ms: float | None = None,
        bandwidth_mbps: float | None = None,
        car_stage_ms: list[float] | None = None,
        edge_ms: dict[int, float] | None = None,
        deadline_ms: float | None = None,
    ) -> bool:
        """New measurements in; True when the choice changed."""
        if rtt_ms is not None:
            self.rtt_ms = rtt_ms
        if bandwidth_mbps is not None:
            self.bandwidth_mbps = bandwidth_mbps
        if car_stage_ms is not None:
            self.car_stage_ms = list(car_stage_ms)
        if deadline_ms is not None:
            self.deadline_ms = deadline_ms
        for c in self.candidates:
            if edge_ms and c.stage in edge_ms:
                c.edge_ms = edge_ms[c.stage]
        return self._rechoose()

    def set_candidates(self, candidates: list[Candidate], car_stage_ms: list[float] | None = None) -> bool:
        """Another set of ways to ask (an edge gained or lost tails, the car swapped its
        model); the link estimates learned so far are kept, since the link is the same.
        True when the choice changed."""
        if not candidates:
            raise ValueError("SplitPlanner needs at least one candidate")
        self.candidates = list(candidates)
        if car_stage_ms is not None:
            self.car_stage_ms = list(car_stage_ms)
        return self._rechoose()

    def observe(self, wire_bytes: int, link_ms: float) -> bool:
        """One answer's link time (round trip minus the edge's compute and queue) for a
        request of ``wire_bytes``. With sizes spread enough, fit ``link = rtt + bytes/bw``
        over the recent window; otherwise only the round trip moves. True on a new choice.

        This runs on the car's network thread for every answer, so the fit is plain Python
        and redone every ``REFIT_EVERY`` answers: with numpy on every answer it took ~0.1 ms
        (measured), a tenth of the whole offload round trip."""
        if not (math.isfinite(link_ms) and link_ms >= 0):
            return False
        self._obs.append((float(wire_bytes), float(link_ms)))
        self._n_obs += 1
        if len(self._obs) < 8 or self._n_obs % REFIT_EVERY:
            return False
        n = len(self._obs)
        b_min = min(b for b, _ in self._obs)
        b_max = max(b for b, _ in self._obs)
        if b_max > 1.5 * max(b_min, 1.0):
            mb = sum(b for b, _ in self._obs) / n
            mm = sum(m for _, m in self._obs) / n
            var = sum((b - mb) ** 2 for b, _ in self._obs)
            slope = sum((b - mb) * (m - mm) for b, m in self._obs) / var
            if slope > 0:
                self.bandwidth_mbps = 8 / (slope * 1e3)
            self.rtt_ms = max(0.0, mm - slope * mb)
        else:
            per_byte = 8 / (self.bandwidth_mbps * 1e3)
            self.rtt_ms = max(0.0, statistics.median(m - b * per_byte for b, m in self._obs))
        return self._rechoose()


def _offload_mae(stage: dict[str, Any]) -> float | None:
    """A tail's accuracy where it is used: on the frames the car offloads (``hard_mae``),
    not over every validation frame. A tail reads the car's own features, so on the frames
    the car is unsure of it tends to be wrong with it (docs/protocol.md, split mode). Frame
    mode's figure stays the edge model's MAE over all frames: compared this way a tail must
    beat the independent edge model on the frames it would answer. Tails from before the
    field: their MAE over all frames."""
    hard = stage.get("hard_mae")
    return hard if hard is not None else stage.get("val_mae")


def candidates_from_health(
    tails: dict[str, Any],
    wire_bytes: dict[int, float],
    *,
    encode_ms: dict[int, float] | None = None,
    default_edge_ms: float = 1.0,
) -> list[Candidate]:
    """The split candidates of one entry of an edge node's health ``tails`` (the one for the
    car's model version: each split's measured compute and validation MAE), sized by the
    car's own measurements. Split points the car cannot size are left out; a split the
    edge has not run yet gets ``default_edge_ms`` until it has."""
    cands = []
    for key, st in (tails.get("stages") or {}).items():
        k = int(key)
        if k not in wire_bytes:
            continue
        ms = st.get("compute_ms")
        cands.append(
            Candidate(
                k,
                wire_bytes[k],
                default_edge_ms if ms is None else float(ms),
                (encode_ms or {}).get(k, 0.0),
                _offload_mae(st),
            )
        )
    return cands


def from_health(
    tails: dict[str, Any],
    car_stage_ms: list[float],
    wire_bytes: dict[int, float],
    *,
    frame: Candidate | None = None,
    encode_ms: dict[int, float] | None = None,
    deadline_ms: float = 33.3,
    default_edge_ms: float = 1.0,
) -> SplitPlanner:
    """A planner from one entry of an edge node's health ``tails`` and the car's own
    measurements (per-stage compute, packed sizes and packing times per split point);
    ``frame`` adds frame mode as a candidate."""
    cands = candidates_from_health(tails, wire_bytes, encode_ms=encode_ms, default_edge_ms=default_edge_ms)
    if frame is not None:
        cands.append(frame)
    return SplitPlanner(cands, car_stage_ms, deadline_ms=deadline_ms)
