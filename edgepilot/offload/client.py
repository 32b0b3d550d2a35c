"""The car's offload client: hard frames to the edge node, never at the cost of a deadline.

Used by the onboard loop (``edgepilot.drive.loop``): ``submit`` a frame the local model is
unsure of, keep going, then ``poll`` for the answer until the frame's deadline at the
latest. QoS 0, because a retransmitted frame would arrive after its deadline anyway.

Split mode (the default): for a hard frame the car sends the features its model
already computed (``Decision.features``, 8-bit + zlib, ~0.9-2 KB against a ~6 KB JPEG)
and the edge continues with a tail trained on them; measured side by side it answered
faster and closer to the expert than frame mode (docs/benchmarks.md, "Split mode"). An
edge that cannot serve them (no tails for this car model) answers an error, and the
client falls back to frame mode for ``split_fallback_s``; ``sends_features`` tells the
loop whether to encode a JPEG at all. With a ``SplitPlanner``, each answer's link time
updates its round-trip and bandwidth estimate, and its choice (a split point, or frame
mode) decides what is sent. In split mode the client builds that planner itself from the
edge nodes' health (``edgepilot.offload.healthplan.HealthPlanner``) for the car model the loop runs
(``track``): a split point every live node has tails for, or frame mode when none has.

Three promises the loop relies on:

- ``poll`` never waits past the deadline the loop gives it; no answer means the local
  answer drives. An answer that arrives after the deadline is counted ("late") and
  ignored: steering from a stale frame is worse than the local guess on a fresh one.
- ``submit`` never blocks: publishing is a buffer append handed to paho's thread.
- A circuit breaker (``edgepilot.offload.breaker``) stops offloading after a few misses in a row
  (edge slow, gone, or the link down), so a dead edge costs nothing but a counter, and
  probes until the edge answers again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.drive.parts import Decision, EdgeAnswer, Features, Pilot
from edgepilot.mqtt import Connection, properties
from edgepilot.offload.breaker import CircuitBreaker
from edgepilot.offload.healthplan import HealthPlanner
from edgepilot.offload.planner import FRAME, SplitPlanner
from edgepilot.schema import wire
from edgepilot.stats import pct

__all__ = ["CircuitBreaker", "EdgeAnswer", "OffloadClient"]

log = logging.getLogger(__name__)

MODES = ("frame", "split")
_REMEMBER = 512  # frames whose late answers we can still recognise


@dataclass(slots=True)
class _Sent:
    t: float
    deadline: float
    nbytes: int = 0
    kind: str = "jpeg"
    stage: int = FRAME  # the split point of a features request
    probe: bool = False  # the open breaker's probe: it must end in success, failure or release


def _plain(x: Features) -> Features:
    """A torch tensor as numpy (dequantised first: an int8 stage's output), an array as it is."""
    if getattr(x, "is_quantized", False):
        x = x.dequantize()  # type: ignore[union-attr]
    return x.numpy() if hasattr(x, "numpy") else x  # type: ignore[union-attr]


class OffloadClient:
    """One car's connection to the edge nodes (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerConfig,
        car_id: str,
        *,
        deadline_s: float = 0.05,
        mode: str = "split",
        breaker: CircuitBreaker | None = None,
        wall_clock_deadline: bool = True,
        model_version: str | None = None,
        on_answer: Callable[[EdgeAnswer, bool], None] | None = None,
        planner: SplitPlanner | None = None,
        plan_from_health: bool = True,
    ) -> None:
        if mode not in MODES:
            raise EdgepilotError(f"offload mode {mode!r} is not available (built: {', '.join(MODES)})")
        self.car_id = wire.check_id(car_id, "car id")
        self.deadline_s = deadline_s
        self.mode = mode
        self.breaker = breaker or CircuitBreaker()
        self.wall_clock_deadline = wall_clock_deadline
        self.model_version = model_version
        self.on_answer = on_answer  # (answer, in_time) on the network thread: benchmarks
        self._planner = planner  # edgepilot.offload.planner.SplitPlanner: which split point to send
        # ... or, in split mode, one built from the edge nodes' health for the car's model
        self.plan = (
            HealthPlanner(deadline_s * 1e3)
            if mode == "split" and planner is None and plan_from_health
            else None
        )
        if self.plan is not None and model_version is not None:
            self.plan.follow(model_version)
        self._tracked: Pilot | None = None
        self.split_fallback_s = 10.0  # frame mode this long after an edge refused features
        self._split_off_until = 0.0
        self._infer_topic = wire.infer_topic(car_id)
        self._reply_topic = wire.reply_topic(car_id)
        self._cond = threading.Condition()
        self._pending: dict[int, _Sent] = {}
        self._expired: OrderedDict[int, float] = OrderedDict()  # frame -> send time, for late answers
        self._answers: OrderedDict[int, EdgeAnswer] = OrderedDict()
        self._rtts: deque[float] = deque(maxlen=4096)
        self.counts = dict(
            sent=0, answered=0, late=0, missed=0, dropped=0, errors=0, throttled=0, stray=0, split=0, foreign=0
        )
        self.conn = Connection(broker, car_id)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait_s: float = 2.0) -> None:
        """Connect (waiting up to ``wait_s``); without a broker the car drives locally and
        the client keeps reconnecting in the background."""
        self.conn.subscribe(self._reply_topic, self._on_reply)
        if self.plan is not None:
            self.conn.subscribe(wire.HEALTH_FILTER, self.plan.on_health, qos=1)
        if not self.conn.start(wait_s, required=False):
            log.warning("offload: broker %s not reachable; driving locally until it is", self.conn.cfg.url)

    def close(self) -> None:
        self.conn.close()

    # -- network thread --------------------------------------------------------------------
    def _foreign(self, msg: paho.MQTTMessage, rep: wire.InferReply) -> bool:
        """A reply that is not this car's (another car's answer, sent here by a forged
        request): dropped, counted, and said once every 100 so an attack is not silent."""
        if msg.topic == self._reply_topic and rep.car in (None, self.car_id):
            return False
        with self._cond:
            self.counts["foreign"] += 1
            n = self.counts["foreign"]
        if n == 1 or n % 100 == 0:
            log.warning("offload: %d replies for another car (car %r on %s) dropped", n, rep.car, msg.topic)
        return True

    def _on_reply(self, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        try:
            rep = wire.decode_reply(msg.payload)
        except wire.WireError as e:
            log.debug("offload: bad reply: %s", e)
            with self._cond:
                self.counts["errors"] += 1
            return
        if self._foreign(msg, rep):
            return
        corr = getattr(msg.properties, "CorrelationData", None)
        frame = int.from_bytes(corr, "big") if corr and len(corr) == 8 else rep.frame
        with self._cond:
            sent = self._pending.pop(frame, None) if frame is not None else None
            if frame is None or sent is None:
                self._unexpected(frame, rep, now)
            elif rep.status != "ok":
                self._refused(frame, sent, rep, now)
            else:
                self._answered(frame, sent, rep, now)

    def _unexpected(self, frame: int | None, rep: wire.InferReply, now: float) -> None:
        """A reply to no pending frame: an answer after the deadline ("late"), or one this
        client never asked for (caller holds the lock)."""
        t_sent = self._expired.pop(frame, None) if frame is not None else None
        if t_sent is None:
            self.counts["stray"] += 1
        elif rep.status == "ok":
            self.counts["late"] += 1
            self._rtts.append((now - t_sent) * 1e3)

    def _refused(self, frame: int, sent: _Sent, rep: wire.InferReply, now: float) -> None:
        """The edge answered with an error, or said this car is over its fair share of the
        node (``throttled``: load, counted apart from faults) (caller holds the lock)."""
        self.counts["throttled" if rep.status == "throttled" else "errors"] += 1
        if sent.probe:  # refused, not answered: the next probe (a JPEG after this) goes
            self.breaker.release(now)
        log.debug("offload: edge refused frame %s: %s", frame, rep.error)
        if sent.kind == "features" and self.mode == "split":
            # no tails for this car model on the edge (yet): frames until it has them
            if now >= self._split_off_until:
                log.warning("offload: edge refused features (%s); frame mode for a while", rep.error)
            self._split_off_until = now + self.split_fallback_s
        self._cond.notify_all()  # the loop's poll returns now instead of at the deadline

    def _answered(self, frame: int, sent: _Sent, rep: wire.InferReply, now: float) -> None:
        """The edge's answer to a pending frame: kept for ``poll`` if in time, else a miss
        (caller holds the lock)."""
        rtt = (now - sent.t) * 1e3
        self._rtts.append(rtt)
        ans = EdgeAnswer(
            frame=frame,
            steering=float(rep.steering),  # type: ignore[arg-type]
            throttle=float(rep.throttle),  # type: ignore[arg-type]
            confidence=rep.confidence,
            model=rep.model,
            node=rep.node,
            rtt_ms=rtt,
            compute_ms=rep.compute_ms,
            batch=rep.batch,
            queue_ms=rep.queue_ms,
        )
        in_time = now <= sent.deadline
        if self.on_answer is not None:
            self.on_answer(ans, in_time)
        if not in_time:
            self.counts["late"] += 1
            self.counts["missed"] += 1
            self.breaker.failure(now)
            return
        self.counts["answered"] += 1
        self.breaker.success()
        if rep.compute_ms is not None:
            self._observe_link(sent, rtt - rep.compute_ms - (rep.queue_ms or 0.0), rep.compute_ms)
        self._answers[frame] = ans
        while len(self._answers) > _REMEMBER:
            self._answers.popitem(last=False)
        self._cond.notify_all()

    def _observe_link(self, sent: _Sent, link_ms: float, compute_ms: float) -> None:
        """One answer's link time (round trip less the edge's queue and compute) to the planner."""
        if self.plan is not None:
            self.plan.note_answer(sent.stage, compute_ms, sent.nbytes, link_ms)
        elif self._planner is not None:
            self._planner.observe(sent.nbytes, link_ms)

    # -- loop side -------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        """Frames past their deadline without an answer are misses (caller holds the lock)."""
        for frame in [f for f, s in self._pending.items() if now > s.deadline]:
            sent = self._pending.pop(frame)
            self._expired[frame] = sent.t
            self.counts["missed"] += 1
            self.breaker.failure(now)
        while len(self._expired) > _REMEMBER:
            self._expired.popitem(last=False)

    @property
    def planner(self) -> SplitPlanner | None:
        """The split planner in force: the one given, else the health-fed one once any edge
        has been heard of (None: plain split mode, with the error fallback)."""
        if self._planner is not None:
            return self._planner
        return self.plan.planner if self.plan is not None and self.plan.active else None

    @planner.setter
    def planner(self, p: SplitPlanner | None) -> None:
        self._planner = p

    def track(self, model: Pilot, dec: Decision | None = None) -> None:
        """The loop's model for this hard frame (and its decision): after a hot-swap the
        plan follows the new version; the decision's stage times are the car's compute."""
        if model is not self._tracked:
            self._tracked = model
            version = getattr(model, "version", None)
            self.model_version = version
            if self.plan is not None:
                self.plan.follow(version)
        if self.plan is not None and dec is not None and getattr(dec, "stage_ms", None):
            self.plan.note_stages(dec.stage_ms)

    @property
    def sends_features(self) -> bool:
        """True when the next hard frame goes as features (split mode, not in fallback, and
        the planner does not prefer the JPEG): the loop then need not encode a JPEG."""
        if self.mode != "split" or time.monotonic() < self._split_off_until:
            return False
        return self.planner is None or self.planner.choice >= 0

    def _body(
        self, jpeg: bytes | None, features: Features | Mapping[int, Features] | None, stage: int | None
    ) -> tuple[bytes, str, dict[str, Any]] | None:
        """What to send: in split mode the car's features of the planner's split point (or
        of the last stage it ran when that one is not at hand), else the JPEG."""
        if self.mode == "split" and features is not None and (jpeg is None or self.sends_features):
            raw = features if isinstance(features, Mapping) else {stage: features}
            avail = {k: v for k, v in raw.items() if isinstance(k, int) and k >= 0}
            want = self.planner.choice if self.planner is not None else None
            if avail and not (want is not None and want < 0 and jpeg is not None):
                k = want if want in avail else self._fallback_stage(avail)
                if k is None and jpeg is not None:
                    return jpeg, "jpeg", {}  # none of the stages at hand has tails: the JPEG
                k = max(avail) if k is None else k
                t0 = time.perf_counter()
                body, meta = wire.pack_features(_plain(avail[k]), k)
                if self.plan is not None:
                    self.plan.note_sent(k, len(body), (time.perf_counter() - t0) * 1e3)
                return body, "features", meta.to_dict()
        return (jpeg, "jpeg", {}) if jpeg is not None else None

    def _fallback_stage(self, avail: dict[int, Features]) -> int | None:
        """The planner's split is not at hand (the frame left at an earlier exit): the
        latest stage at hand that the edges have tails for; None when the health-fed plan
        knows of none (then the JPEG goes, if there is one)."""
        served = self.plan.splits if self.plan is not None and self.plan.active else None
        ok = [k for k in avail if served is None or k in served]
        return max(ok) if ok else None

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
        """Send one frame; False (and nothing sent) when the breaker is open or the broker
        is not connected. Never blocks.

        Split mode: ``features`` is the car's output of stage ``stage`` (``Decision.features``
        and ``Decision.exit``), or a ``{stage: tensor}`` of several; frame mode, or no
        features given, sends the JPEG. ``model``: the car model version that made them
        (the edge's tails are bound to one; default ``model_version``)."""
        budget = self.deadline_s if deadline_s is None else deadline_s
        if self.plan is not None:
            self.plan.set_deadline(budget * 1e3)
        now = time.monotonic()
        sent = self._reserve(frame_index, now, budget)
        if sent is None:
            return False
        try:
            what = self._body(jpeg, features, stage)
            if what is None:
                raise wire.WireError("nothing to send (no JPEG and no features)")
            body, kind, meta = what
            req = self._request(frame_index, body, kind, meta, budget, model or self.model_version)
            payload = wire.encode_request(req)  # e.g. a frame over MAX_REQUEST_BYTES: refused
        except wire.WireError as e:  # never into the drive loop: the local answer drives
            with self._cond:
                self._unreserve(frame_index, sent, now)
            log.warning("offload: frame %d not sent: %s", frame_index, e)
            return False
        sent.nbytes, sent.kind = len(payload), kind
        if kind == "features":
            sent.stage = int(meta["stage"])
        elif self.plan is not None:
            self.plan.note_sent(FRAME, len(body))
        props = properties(
            response_topic=self._reply_topic,
            correlation=frame_index.to_bytes(8, "big"),
            expiry_s=math.ceil(budget),
        )
        ok = self.conn.publish(self._infer_topic, payload, qos=0, props=props)
        with self._cond:
            if ok:
                self.counts["sent"] += 1
                self.counts["split"] += kind == "features"
            else:
                self._pending.pop(frame_index, None)
                self.counts["dropped"] += 1
                self.breaker.failure(now)
        return ok

    def _reserve(self, frame_index: int, now: float, budget: float) -> _Sent | None:
        """The frame's place among the pending ones, or None (counted as dropped) when the
        broker is not connected or the breaker holds it back."""
        with self._cond:
            self._sweep(now)
            if not self.conn.connected.is_set() or not self.breaker.allow(now):
                self.counts["dropped"] += 1
                return None
            # allowed while open: this frame is the probe
            sent = self._pending[frame_index] = _Sent(now, now + budget, probe=self.breaker.open)
            return sent

    def _unreserve(self, frame_index: int, sent: _Sent, now: float) -> None:
        """A reserved frame that could not be sent: dropped, and an open breaker's probe
        given back (the next frame probes instead) (caller holds the lock)."""
        self._pending.pop(frame_index, None)
        self.counts["dropped"] += 1
        if sent.probe:
            self.breaker.release(now)

    def _request(
        self, frame_index: int, body: bytes, kind: str, meta: dict[str, Any], budget: float, model: str | None
    ) -> wire.InferRequest:
        wall = time.time()
        return wire.InferRequest(
            car=self.car_id,
            frame=frame_index,
            body=body,
            kind=kind,
            sent=round(wall, 6),
            deadline=round(wall + budget, 6) if self.wall_clock_deadline else None,
            budget_ms=round(budget * 1e3, 3),
            model=model,
            meta=meta,
        )

    def poll(self, frame_index: int, wait_until: float) -> EdgeAnswer | None:
        """The edge's answer for ``frame_index`` if it comes before ``wait_until``
        (``time.monotonic()`` seconds); returns at ``wait_until`` at the latest."""
        with self._cond:
            while True:
                ans = self._answers.pop(frame_index, None)
                if ans is not None:
                    return ans
                left = wait_until - time.monotonic()
                if left <= 0 or frame_index not in self._pending:
                    self._sweep(time.monotonic())
                    return None
                self._cond.wait(left)

    def rtt_samples(self) -> list[float]:
        """The round trips (ms) remembered, answers in time and late ones, oldest first."""
        with self._cond:
            return list(self._rtts)

    @property
    def stats(self) -> dict[str, Any]:
        with self._cond:
            rtts = list(self._rtts)
            out: dict[str, Any] = dict(self.counts)
            out["breaker_open"] = self.breaker.open
            out["breaker_trips"] = self.breaker.trips
            out["connected"] = self.conn.connected.is_set()
        if self.plan is not None:
            out["plan"] = self.plan.summary()
        out["rtt_ms"] = {**pct(rtts, digits=3), "n": len(rtts)} if rtts else {}
        return out
