"""The edge node: answer the fleet's hard frames over MQTT v5, within their deadlines.

One node subscribes to ``$share/<group>/edgepilot/v1/car/+/infer`` so that N nodes in
one group split the fleet's requests (the broker hands each message to one of them).
The network thread only sizes a message and queues it in its car's lane (``fairq``); one
worker thread forms micro-batches across cars, drops what is already past its deadline
(answering late wastes the link and the car ignores it anyway), decodes the JPEGs, runs
the model once per batch and replies to the car the request's topic names, with its
Correlation Data.

One car cannot starve the others: each car's share of the worker is fair (a car that
sends faster than its share has the excess refused as "throttled", counted per car in the
node's health), the queue is bounded, a frame larger than a car's camera sends is refused
from its JPEG header before any decoding, and a request's own deadline is believed only up
to a horizon (``max_budget_ms``).

Micro-batching waits at most ``batch_wait_ms`` for a batch to fill, and only when
another request is *expected* within that window (inter-arrival gap, averaged): with a
lone car, waiting would add latency and batch nothing. Under load the queue fills while
the previous batch computes, so batches form without waiting at all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import torch

from edge_node.fairq import FairQueue, PerCarRate
from edge_node.metrics import EdgeMetrics
from edge_node.model import load_edge_model, model_mae
from edge_node.tailpush import TailsFollower
from edge_node.tails import TailShelf
from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig, EdgeConfig, load_profile
from edgepilot.delivery import AnnouncementGuard, receive
from edgepilot.drive.slot import Loader, ModelSlot
from edgepilot.imaging import decode_jpeg
from edgepilot.mqtt import Connection, broker_config, properties
from edgepilot.schema import fleet, unit_command, wire

log = logging.getLogger(__name__)

MAX_FRAME_SIDE = 4096  # a decoded frame larger than this is refused (memory bomb)
# a real JPEG's frame header comes after a handful of markers (APPn, DQT, DHT); bounding
# the walk keeps a body of a million empty markers from costing the network thread
MAX_JPEG_MARKERS = 64
# a request's cost in the fair queue is the pixels it decodes, at least a camera frame's:
# its fixed work (header, inference, reply) is about a small frame's decode
MIN_COST = 160 * 120
FAIR_QUANTUM = 2 * MIN_COST  # per batch, each backlogged car gets about two camera frames in
# error replies to requests refused on arrival (too large, throttled), per car and second:
# one per frame of a 20 Hz camera; past that a flood's refusals are counted, not answered,
# because an answer costs the node's network thread about what receiving the request did
# (docs/benchmarks.md, "The edge under a flood")
REFUSAL_REPLIES_PER_S = 20.0
_DEFAULTS = EdgeConfig()


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) a JPEG's frame header declares, read *before* decoding: a 1 MiB
    request can hold a uniform 11000 x 11000 JPEG, which OpenCV would decode into 360 MB
    before a size check on the image refused it. None when the data does not start as a
    JPEG or no frame header comes within ``MAX_JPEG_MARKERS`` markers."""
    n = len(data)
    if n < 2 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    for _ in range(MAX_JPEG_MARKERS):
        if i + 9 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def jpeg_side(data: bytes | memoryview) -> int | None:
    """The larger side a JPEG's frame header declares (``jpeg_size``)."""
    size = jpeg_size(data)
    return max(size) if size is not None else None


def _lane_of(topic: str) -> str:
    """The car a request's topic names: its lane in the fair queue (the broker's ACL lets a
    car publish only on its own). A malformed topic gets the nameless lane."""
    try:
        return wire.car_of_infer_topic(topic)
    except wire.WireError:
        return ""


@dataclass(slots=True)
class _Answer:
    steering: float
    throttle: float
    confidence: float


@dataclass(slots=True)
class _Pending:
    payload: bytes
    topic: str
    response_topic: str | None
    correlation: bytes | None
    t_mono: float


_Request = tuple[_Pending, wire.InferRequest]


class EdgeService:
    """An edge node. ``start()`` connects and starts the worker; ``stop()`` ends both."""

    def __init__(
        self,
        broker: BrokerConfig,
        model: Any,
        *,
        node_id: str = "edge-1",
        group: str = "edge",
        max_batch: int = 16,
        batch_wait_ms: float = 1.0,
        health_every_s: float = 1.0,
        model_loader: Loader | None = None,
        trusted_keys: list[str] | None = None,
        announce_keys: list[str] | None = None,
        cache_dir: str | Path | None = None,
        fetch_timeout_s: float = 20.0,
        tails: Any = None,
        follow_tails: bool = True,
        batch_threads: int = 1,
        queue_per_car: int = _DEFAULTS.queue_per_car,
        queue_max: int = _DEFAULTS.queue_max,
        max_frame_pixels: int = _DEFAULTS.max_frame_pixels,
        max_frame_bytes: int = _DEFAULTS.max_frame_bytes,
        max_budget_ms: float = _DEFAULTS.max_budget_ms,
        flood_rate_hz: float = _DEFAULTS.flood_rate_hz,
    ) -> None:
        self.node_id = wire.check_id(node_id, "node id")
        self.group = group
        # the served model, swapped between batches like the car's between frames
        self.slot = ModelSlot(model, trusted_keys, model_loader or load_edge_model)
        self._broker = broker
        self._fetch_timeout_s = fetch_timeout_s
        self._cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix=f"edgepilot-{node_id}-"))
        # split mode (features requests): a TailShelf, or a TailSet / path to make one of;
        # with none, an empty shelf that the cloud's tails pushes fill (``follow_tails``)
        self.tails = tails if isinstance(tails, TailShelf) else TailShelf(tails)
        self.follow_tails = follow_tails
        self._init_batching(max_batch, batch_wait_ms, batch_threads)
        self.health_every_s = health_every_s
        self.metrics = EdgeMetrics()
        self._announce_keys = announce_keys
        self.guard = AnnouncementGuard()  # the retained announcement is the newest; no disk
        self._init_admission(
            queue_per_car, queue_max, max_frame_pixels, max_frame_bytes, max_budget_ms, flood_rate_hz
        )
        self._init_worker_state()
        offline = wire.encode_health(wire.EdgeHealth(node=self.node_id, status="offline"))
        self.conn = Connection(broker, self.node_id, will=(wire.health_topic(self.node_id), offline, True))
        self.tails_follower = TailsFollower(
            self.tails, self.conn, self.node_id, announce_keys, on_added=self._publish_health
        )

    def _init_batching(self, max_batch: int, batch_wait_ms: float, batch_threads: int) -> None:
        """How the worker forms and runs micro-batches: at most ``max_batch`` frames, waiting
        at most ``batch_wait_ms`` for one to fill, on ``batch_threads`` intra-op threads."""
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = max(0.0, batch_wait_ms) / 1e3
        # intra-op threads for a batch of 2+ frames (0: every core); a lone frame always runs
        # on one thread: at batch 1, 2 threads measured slower than 1 (too little work to
        # split), while a batch of 4+ splits well (docs/benchmarks.md#offload)
        self.batch_threads = batch_threads if batch_threads > 0 else (os.cpu_count() or 1)

    def _init_admission(
        self,
        queue_per_car: int,
        queue_max: int,
        max_frame_pixels: int,
        max_frame_bytes: int,
        max_budget_ms: float,
        flood_rate_hz: float,
    ) -> None:
        """What the network thread admits: the frame and deadline limits a request is checked
        against, the bounded fair queue (per car and in all, a flooding car's rate) and the
        per-car budget of error replies to refused requests."""
        self.max_frame_pixels = max_frame_pixels
        self.max_frame_bytes = max_frame_bytes
        self.max_budget_ms = max_budget_ms
        self._queue: FairQueue[_Pending] = FairQueue(
            queue_per_car, queue_max, FAIR_QUANTUM, flood_rate=flood_rate_hz * MIN_COST
        )
        self._refusal_replies = PerCarRate(REFUSAL_REPLIES_PER_S, REFUSAL_REPLIES_PER_S)

    def _init_worker_state(self) -> None:
        """The state the network thread and the worker share under ``_cond``: the worker's
        wake-up, the smoothed inter-arrival gap batching decides by, and whether it runs."""
        self._cond = threading.Condition()
        self._gap_s = 1.0  # smoothed inter-arrival gap
        self._last_arrival = 0.0
        self._running = False
        self._worker: threading.Thread | None = None

    # -- network thread ------------------------------------------------------------------
    def _on_request(self, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        props = msg.properties
        item = _Pending(
            msg.payload,
            msg.topic,
            getattr(props, "ResponseTopic", None),
            getattr(props, "CorrelationData", None),
            now,
        )
        self.metrics.requests += 1
        car = _lane_of(msg.topic)
        cost, why = self._admission(item.payload)
        if why is not None:  # refused from its size alone: never queued, never decoded
            self.metrics.error(why)
            self._refuse_on_arrival(item, car, why)
            return
        with self._cond:
            fresh = not self._queue.backlog(car)
            adm = self._queue.push(car, item, cost, now)
            if adm.queued:
                if fresh:  # only a car's first waiting request can join the next batch
                    self._note_arrival(now)
                self._cond.notify()
        if not adm.queued:
            self._throttle(item, car, f"it has {self._queue.per_car} requests waiting here already")
        if adm.evicted is not None and adm.evicted_car is not None:
            self._throttle(
                adm.evicted,
                adm.evicted_car,
                f"the queue is full ({self._queue.total}) and it has the most waiting",
            )

    def _note_arrival(self, now: float) -> None:
        """The smoothed gap between requests that could share a batch (``_take_batch``)."""
        if self._last_arrival:
            self._gap_s = 0.8 * self._gap_s + 0.2 * (now - self._last_arrival)
        self._last_arrival = now

    def _admission(self, payload: bytes) -> tuple[float, str | None]:
        """A request's cost in the fair queue (pixels to decode, at least ``MIN_COST``) and
        why it is refused on arrival (None: queued). Only sizes are read here: the worker
        validates the rest."""
        nl = payload.find(b"\n", 0, wire.MAX_HEADER_BYTES + 1)
        if nl < 0:
            return MIN_COST, None  # malformed: the worker says why
        kind = "features" if b'"features"' in payload[:nl] else None  # the worker checks kinds
        pixels, why = self._frame_refusal(memoryview(payload)[nl + 1 :], kind)
        return max(MIN_COST, pixels), why

    def _frame_refusal(self, body: bytes | memoryview, kind: str | None) -> tuple[int, str | None]:
        """The pixels a body declares (0: not a JPEG) and why it may not be decoded (None:
        it may). ``kind`` None: not known yet (on arrival), only the size limits apply."""
        if len(body) > self.max_frame_bytes:
            return 0, f"body is {len(body)} bytes, over this node's limit of {self.max_frame_bytes} bytes"
        if kind == "features":
            return 0, None
        size = jpeg_size(body)
        if size is None:
            return 0, "body is not a decodable JPEG frame (no JPEG frame header)" if kind else None
        w, h = size
        if w * h > self.max_frame_pixels or max(w, h) > MAX_FRAME_SIDE:
            return w * h, (
                f"frame is {w}x{h} = {w * h} pixels, over this node's limit of {self.max_frame_pixels} "
                "pixels (a car camera's frame)"
            )
        return w * h, None

    def _throttle(self, item: _Pending, car: str, why: str) -> None:
        self.metrics.throttle(car)
        self._refuse_on_arrival(
            item,
            car,
            f"throttled: car {car} sends faster than its fair share of node {self.node_id}: {why}",
            status="throttled",
        )

    def _refuse_on_arrival(self, item: _Pending, car: str, why: str, status: str = "error") -> None:
        """An error (or throttled) reply, within the car's budget of them (``REFUSAL_REPLIES_PER_S``)."""
        if self._refusal_replies.allow(car, item.t_mono):
            self._refuse(item, why, status=status)

    @property
    def model(self) -> Any:
        return self.slot.current

    @property
    def swaps(self) -> int:
        return self.slot.swaps

    @property
    def swap_error(self) -> str | None:
        return self.slot.last_error

    def _on_model(self, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            ann = fleet.decode_announcement(msg.payload)
        except wire.WireError as e:
            log.warning("edge %s: ignoring model announcement: %s", self.node_id, e)
            return
        if ann.target != "edge" or ann.version == self.slot.version:
            return
        threading.Thread(target=self.swap_model, args=(ann,), daemon=True, name="edge-swap").start()

    # -- model hot-swap ------------------------------------------------------------------
    def swap_model(self, ann: fleet.PushAnnouncement) -> bool:
        """Verify the announcement's signature before reading a byte, fetch the package
        (shared path or the retained chunks, hash-checked), load and warm it off the
        worker; the worker swaps it in between batches. Any failure keeps the current model."""
        try:
            self.guard.check(ann)
            data = receive(
                ann, self._announce_keys, self._broker, f"{self.node_id}-fetch", self._fetch_timeout_s
            )
            path = self._cache / f"edge-{ann.version}.eppkg"
            path.write_bytes(data)
            model = self.slot.load(path)
        except (OSError, EdgepilotError) as e:
            return self._refused(ann, str(e))
        except Exception as e:  # noqa: BLE001 - any loader failure keeps the current model
            log.exception("edge %s: model %s not swapped in", self.node_id, ann.version)
            return self._refused(ann, f"{type(e).__name__}: {e}")
        self.slot.last_error = None
        self.guard.accept(ann)
        self.slot.offer(model)
        with self._cond:
            self._cond.notify()  # an idle worker swaps now, not at its next wake-up
        return True

    def _refused(self, ann: fleet.PushAnnouncement, why: str) -> bool:
        self.slot.last_error = why
        log.warning("edge %s: model %s not swapped in: %s", self.node_id, ann.version, why)
        return False

    # -- worker --------------------------------------------------------------------------
    def _take_batch(self) -> list[_Pending]:
        """The next micro-batch: the requests of the fair queue's next window, and those
        that arrive within ``batch_wait_ms`` and fall in the same window."""
        with self._cond:
            wait = self._queue.ready_in(time.monotonic())
            if self._running and wait != 0.0:  # idle, or only flooding cars out of credit
                self._cond.wait(min(0.2, self.health_every_s, wait or math.inf))  # and wake for health
            limit = self._queue.window(time.monotonic())
            if limit is None:
                return []
            batch = self._queue.take(limit, self.max_batch, time.monotonic())
            if batch and len(batch) < self.max_batch and self._gap_s < self.batch_wait_s:
                until = batch[0].t_mono + self.batch_wait_s
                while len(batch) < self.max_batch and self._running:
                    more = self._queue.take(limit, self.max_batch - len(batch), time.monotonic())
                    if more:
                        batch += more
                        continue
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        return batch

    def _reply(self, item: _Pending, rep: wire.InferReply) -> None:
        """Answer the car the request came from: the one its topic names (the broker's ACL
        lets a car publish only on its own), never a topic the request asks for."""
        try:
            topic = wire.reply_topic(wire.car_of_infer_topic(item.topic))
        except wire.WireError:  # not a car's inference topic: nobody to answer (counted already)
            return
        props = properties(correlation=item.correlation) if item.correlation is not None else None
        self.conn.publish(topic, wire.encode_reply(rep), qos=0, props=props)

    def _error(self, item: _Pending, why: str, car: str | None = None, frame: int | None = None) -> None:
        self.metrics.error(why)
        self._refuse(item, why, car, frame)

    def _refuse(
        self,
        item: _Pending,
        why: str,
        car: str | None = None,
        frame: int | None = None,
        status: str = "error",
    ) -> None:
        """Answer ``why`` as an error (or throttled) reply (the caller counts it)."""
        if car is None:
            _, frame = wire.peek_identity(item.payload)
            with contextlib.suppress(wire.WireError):
                car = wire.car_of_infer_topic(item.topic)
        log.debug("edge %s: error reply to %s: %s", self.node_id, car, why)
        self._reply(item, wire.InferReply(status, car=car, frame=frame, node=self.node_id, error=why))

    @staticmethod
    def _misrouted(item: _Pending, car: str) -> str | None:
        """Why a request's Response Topic is refused: it may only name the car's own."""
        if item.response_topic is None or item.response_topic == wire.reply_topic(car):
            return None
        return f"response topic must be {wire.reply_topic(car)} (the requester's own), got {item.response_topic[:80]!r}"

    def _features(self, item: _Pending, req: wire.InferRequest) -> tuple[tuple[str, int], np.ndarray] | None:
        """A split-mode body -> ((car model, stage), float32 C x H x W), or an error reply."""
        if self.tails is None or (not self.tails.sets and self.tails.dir is None):
            self._error(
                item, "kind 'features' is not served by this node (no tails loaded)", req.car, req.frame
            )
            return None
        try:
            meta = wire.FeatureMeta.from_dict(req.meta)
            ts = self.tails.get(req.model)
            if ts is None:
                raise wire.WireError(
                    f"features from car model {req.model!r}: this node has no tails for it "
                    f"(serves {sorted(self.tails.sets)})"
                )
            tail = ts.tails.get(meta.stage)
            if tail is None or tuple(meta.shape) != tuple(tail.shape):
                raise wire.WireError(f"no tail for stage {meta.stage} with shape {list(meta.shape)}")
            return (ts.car_version, meta.stage), wire.unpack_features(req.body, meta)
        except wire.WireError as e:
            self._error(item, str(e), req.car, req.frame)
            return None

    def _expired(self, req: wire.InferRequest, item: _Pending, now_mono: float, now_wall: float) -> bool:
        """Past its own deadline or budget, or held here longer than ``max_budget_ms``: a
        deadline a day away must not keep a request (and its memory) in the queue."""
        if req.deadline is not None and now_wall > req.deadline:
            return True
        budget = self.max_budget_ms if req.budget_ms is None else min(req.budget_ms, self.max_budget_ms)
        return (now_mono - item.t_mono) * 1e3 > budget

    def _validate(self, batch: list[_Pending], now_mono: float, now_wall: float) -> list[_Request]:
        """The batch's requests that are well-formed, the requester's own, within their
        deadline and small enough to decode; the others are answered or dropped here."""
        good: list[_Request] = []
        for item in batch:
            try:
                req = wire.decode_request(item.payload)
                if req.car != wire.car_of_infer_topic(item.topic):
                    raise wire.WireError(f"car id {req.car!r} does not match the topic {item.topic!r}")
                why = self._misrouted(item, req.car)
                if why is not None:
                    raise wire.WireError(why)
            except wire.WireError as e:
                self._error(item, str(e))
                continue
            if self._expired(req, item, now_mono, now_wall):
                self.metrics.dropped_expired += 1
                continue
            _, why = self._frame_refusal(req.body, req.kind)
            if why is not None:  # never decoded: its header says it is too large, or no JPEG
                self._error(item, why, req.car, req.frame)
                continue
            good.append((item, req))
        return good

    def _decode(
        self, good: list[_Request]
    ) -> tuple[list[np.ndarray], list[_Request], dict[tuple[str, int], Any]]:
        """JPEGs -> frames (with their requests), features -> groups per (car model, stage)."""
        frames: list[np.ndarray] = []
        ready: list[_Request] = []
        split: dict[tuple[str, int], list[tuple[_Pending, wire.InferRequest, np.ndarray]]] = {}
        for item, req in good:
            if req.kind == "features":
                feats = self._features(item, req)
                if feats is not None:
                    split.setdefault(feats[0], []).append((item, req, feats[1]))
                continue
            img = decode_jpeg(req.body)
            if img is None or img.ndim != 3 or max(img.shape[:2]) > MAX_FRAME_SIDE:
                self._error(item, "body is not a decodable JPEG frame", req.car, req.frame)
                continue
            frames.append(img)
            ready.append((item, req))
        return frames, ready, split

    def process(self, batch: list[_Pending]) -> None:
        """Validate, drop the expired, decode, infer once, reply. Never raises."""
        t0 = time.monotonic()
        wall0 = time.time()
        model = self.slot.current
        frames, ready, split = self._decode(self._validate(batch, t0, wall0))
        decisions: list[Any] = []
        try:
            if frames:
                if self.batch_threads > 1:
                    torch.set_num_threads(self.batch_threads if len(frames) > 1 else 1)
                decisions = list(model.infer_batch(frames))
            for (version, stage), group in split.items():  # one batch per car model and split point
                t_tail = time.perf_counter()
                s_, t_, c_ = self.tails.sets[version].infer(stage, np.stack([f for _, _, f in group]))
                self.tails.timed(version, stage, (time.perf_counter() - t_tail) * 1e3 / len(group))
                decisions += [
                    _Answer(a, b, c) for a, b, c in zip(s_.tolist(), t_.tolist(), c_.tolist(), strict=True)
                ]
                ready += [(item, req) for item, req, _ in group]
        except Exception as e:  # a model bug answers errors; it must not stop the node
            log.exception("edge %s: inference failed", self.node_id)
            failed = ready[: len(frames)] + [(i, r) for g in split.values() for i, r, _ in g]
            for item, req in failed:
                self._error(item, f"inference failed: {type(e).__name__}", req.car, req.frame)
            return
        if not ready:
            return
        t1 = time.monotonic()
        compute_ms = (t1 - t0) * 1e3
        jpeg_version = getattr(model, "version", None)
        late_wall = time.time()
        self.metrics.batch(len(ready))
        for (item, req), d in zip(ready, decisions, strict=True):
            if self._expired(req, item, t1, late_wall):
                self.metrics.dropped_expired += 1
                continue
            steering, throttle, confidence = float(d.steering), float(d.throttle), float(d.confidence)
            if not (math.isfinite(steering) and math.isfinite(throttle) and math.isfinite(confidence)):
                # clamping would turn NaN into full right lock (min(1.0, nan) is 1.0)
                self._error(item, "the edge model gave a non-finite answer", req.car, req.frame)
                continue
            rep = wire.InferReply(
                "ok",
                car=req.car,
                frame=req.frame,
                steering=unit_command(steering),
                throttle=unit_command(throttle),
                confidence=confidence,
                model=jpeg_version if req.kind == "jpeg" else f"tail-{req.model}",
                node=self.node_id,
                compute_ms=round(compute_ms, 3),
                batch=len(ready),
                queue_ms=round((t0 - item.t_mono) * 1e3, 3),
            )
            self._reply(item, rep)
            self.metrics.answered(time.monotonic() - item.t_mono)

    def _work(self) -> None:
        next_health = time.monotonic()
        while self._running:
            if self.slot.maybe_swap():
                log.info("edge %s: now serving model %s", self.node_id, self.slot.version)
                self._publish_health()
            batch = self._take_batch()
            if batch:
                self.process(batch)
            if time.monotonic() >= next_health:
                self._publish_health()
                next_health = time.monotonic() + self.health_every_s

    def health(self) -> wire.EdgeHealth:
        h = self.metrics.snapshot(self.node_id, self.slot.version)
        with self._cond:
            h.queued = len(self._queue)
        h.model_mae = model_mae(self.slot.current)
        if self.tails is not None:
            h.tails = self.tails.summary()
        return h

    def _publish_health(self) -> None:
        self.conn.publish(
            wire.health_topic(self.node_id), wire.encode_health(self.health()), qos=1, retain=True
        )

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> EdgeService:
        self.conn.subscribe(wire.shared_infer_filter(self.group), self._on_request)
        self.conn.subscribe(wire.model_topic("edge"), self._on_model, qos=1)
        if self.follow_tails:  # the cloud's split-mode tails for the car models it pushes
            self.conn.subscribe(wire.TAILS_TOPIC, self.tails_follower.on_announcement, qos=1)
        self._running = True
        self._worker = threading.Thread(target=self._work, daemon=True, name=f"edge-{self.node_id}")
        self._worker.start()
        try:
            self.conn.start(wait_s, required=True)
        except EdgepilotError:
            self.stop()
            raise
        if not self.conn.wait_subscribed(wait_s):  # ready = the broker routes requests to us
            log.warning(
                "edge %s: the broker did not acknowledge every subscription in %.0f s", self.node_id, wait_s
            )
        return self

    def stop(self) -> None:
        self._running = False
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(5)
        if self.conn.connected.is_set():
            offline = wire.encode_health(wire.EdgeHealth(node=self.node_id, status="offline"))
            info = self.conn.client.publish(wire.health_topic(self.node_id), offline, qos=1, retain=True)
            info.wait_for_publish(1.0)
        self.conn.close()


def cli(args: argparse.Namespace) -> dict[str, Any]:
    """``edgepilot edge``: run until SIGINT/SIGTERM, then print the node's metrics."""
    import torch

    prof = load_profile(args.profile, default="edge")
    torch.set_num_threads(max(1, prof.model.threads))
    spec = args.model or prof.edge.model
    if not spec:
        raise EdgepilotError(
            "no edge model: pass --model PKG (or --model builtin:pilotnet for transport tests)"
        )
    model = load_edge_model(spec, prof.model.trusted_keys or None)
    tails = TailShelf(args.tails) if getattr(args, "tails", None) else None
    svc = EdgeService(
        broker_config(prof.broker, args.broker),
        model,
        node_id=args.node_id or prof.edge.node_id,
        group=prof.edge.group,
        max_batch=prof.edge.max_batch,
        batch_wait_ms=prof.edge.batch_wait_ms,
        trusted_keys=prof.model.trusted_keys or None,
        announce_keys=prof.model.announce_keys or None,
        tails=tails,
        batch_threads=prof.edge.batch_threads,
        queue_per_car=prof.edge.queue_per_car,
        queue_max=prof.edge.queue_max,
        max_frame_pixels=prof.edge.max_frame_pixels,
        max_frame_bytes=prof.edge.max_frame_bytes,
        max_budget_ms=prof.edge.max_budget_ms,
        flood_rate_hz=prof.edge.flood_rate_hz,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    svc.start()
    log.warning(
        "edge %s: serving %s on %s (group %s)", svc.node_id, svc.slot.version, svc.conn.cfg.url, svc.group
    )
    print(f"edge {svc.node_id} ready", flush=True)  # tests and scripts wait for this line
    while not stop.wait(0.5):
        pass
    svc.stop()
    return {"node": svc.node_id, "model": svc.slot.version, **asdict(svc.health())}
