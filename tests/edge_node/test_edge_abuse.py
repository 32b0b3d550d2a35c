"""The edge node under abuse: one car floods it (large frames, a high rate, deadlines a day
away) and another car keeps its round trip.

The fair queue on its own (no broker, a clock passed in), the node's limits on a node
that is not connected (``process`` and the arrival check run the whole request path;
replies go nowhere, the metrics count them), throttling through a real Mosquitto, and the
target: a legitimate car's round trip p50 under the flood within 2x of its round trip
without it, both measured in the same run (testbed/edge_abuse.py; docs/benchmarks.md); and
a flood larger than the node's network thread reads, which only the broker's per-login rate
limit (launch/mosquitto-plugin) keeps off the node's connection.
"""

from __future__ import annotations

import itertools
import math
import queue
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge_node import service as service_mod
from edge_node.fairq import FairQueue, PerCarRate
from edge_node.model import load_edge_model
from edge_node.service import MIN_COST, EdgeService, _Pending
from edgepilot import EdgepilotError
from edgepilot.broker import ratelimit_config, start_broker
from edgepilot.config import BrokerConfig, EdgeConfig, load_profile
from edgepilot.mqtt import Connection, properties
from edgepilot.schema import wire
from testbed.edge_abuse import FloodSpec, bomb_frame, broker_drops, edge_health, noise_frame, side_by_side
from testbed.loadgen import bench_frame
from testbed.procs import spawn_edge

_n = itertools.count()
CAM = MIN_COST  # the cost of one 160x120 camera frame
BIG = 4 * MIN_COST  # the cost of one 320x240 frame


def fq(per_car: int = 16, total: int = 256, flood_rate: float = 30 * CAM) -> FairQueue[str]:
    return FairQueue(per_car, total, quantum=2 * CAM, flood_rate=flood_rate)


def batch(q: FairQueue[str], now: float = 0.0, max_items: int = 16) -> list[str]:
    limit = q.window(now)
    return [] if limit is None else q.take(limit, max_items, now)


# -- the fair queue ---------------------------------------------------------------------


def test_a_light_car_is_served_before_a_flooders_backlog_and_never_batched_with_it():
    q = fq()
    for i in range(12):
        assert q.push("flood", f"f{i}", BIG, 0.0).queued
    assert batch(q) == ["f0"]  # a large frame is a batch of its own
    q.push("car", "c0", CAM, 0.0)  # arrives while f0 is computed
    assert batch(q) == ["c0"]  # next, alone: the flooder's f1 is tagged past the window
    assert batch(q) == ["f1"]


def test_cars_with_a_few_frames_each_still_fill_a_micro_batch():
    q = fq()
    for i in range(3):
        for c in range(8):
            q.push(f"car-{c}", f"{c}.{i}", CAM, 0.0)
    first = batch(q)
    assert len(first) == 16 and {x.split(".")[0] for x in first} == {str(c) for c in range(8)}
    assert len(batch(q)) == 8 and len(q) == 0


def test_a_full_lane_refuses_and_penalises_and_a_full_queue_evicts_the_longest_lane():
    q = fq(per_car=4, total=6)
    assert [q.push("a", f"a{i}", CAM, 0.0).queued for i in range(5)] == [True] * 4 + [False]
    assert q.flooding("a", 0.5) and not q.flooding("a", 1.01)  # for a second after
    q.push("b", "b0", CAM, 0.0)
    q.push("b", "b1", CAM, 0.0)
    adm = q.push("c", "c0", CAM, 0.0)  # the queue is full: "a" (4 waiting) gives way
    assert adm.queued and (adm.evicted, adm.evicted_car) == ("a3", "a")
    assert len(q) == 6 and q.backlog("a") == 3
    assert not q.push("b", "b2", CAM, 0.0).queued  # "b" now has as many as the longest


def test_a_flooding_car_is_served_at_its_flood_rate_even_by_an_idle_node():
    q = fq(per_car=2, flood_rate=10 * CAM)  # 10 camera frames' worth a second
    for i in range(3):
        q.push("flood", f"f{i}", CAM, 0.0)  # the third overflows: flooding from t=0
    assert batch(q, 0.0) == []  # no credit yet
    assert q.ready_in(0.0) == pytest.approx(0.1)  # one frame's worth of credit in 0.1 s
    assert batch(q, 0.1) == ["f0"]
    q.push("car", "c0", CAM, 0.1)
    assert batch(q, 0.1) == ["c0"]  # another car is not held up by the flooder's rate
    assert batch(q, 0.15) == [] and batch(q, 0.2) == ["f1"]
    assert q.ready_in(0.2) is None
    q.push("flood", "f3", CAM, 1.5)  # a second after its last overflow: served as any car
    assert not q.flooding("flood", 1.5) and batch(q, 1.5) == ["f3"]


def test_per_car_rate_allows_a_burst_then_its_rate():
    r = PerCarRate(rate=20.0, burst=2.0)
    assert [r.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert r.allow("b", 0.0)  # per car
    assert not r.allow("a", 0.04) and r.allow("a", 0.05)


# -- the node's limits, on a node that is not connected ---------------------------------


@pytest.fixture(scope="module")
def model():
    return load_edge_model("builtin:pilotnet")


@pytest.fixture
def node(model):
    return EdgeService(BrokerConfig(url="mqtt://127.0.0.1:9"), model, node_id=f"e-abuse-{next(_n)}")


def pending(req: wire.InferRequest, age_s: float = 0.0) -> _Pending:
    return _Pending(
        wire.encode_request(req), wire.infer_topic(req.car), None, b"\x00" * 8, time.monotonic() - age_s
    )


@pytest.fixture
def decodes(monkeypatch):
    """Counts the node's JPEG decodes: a frame refused "before decoding" is never one."""
    calls: list[int] = []
    real = service_mod.decode_jpeg

    def counted(data):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(service_mod, "decode_jpeg", counted)
    return calls


def test_a_far_deadline_and_budget_are_believed_only_up_to_the_horizon(node):
    day = 86400.0
    far = wire.InferRequest("car-h", 1, bench_frame(), deadline=time.time() + day, budget_ms=day * 1e3)
    fresh = wire.InferRequest("car-h", 2, bench_frame(), deadline=time.time() + day, budget_ms=day * 1e3)
    horizon_s = node.max_budget_ms / 1e3
    node.process([pending(far, age_s=horizon_s * 1.5), pending(fresh)])
    h = node.health()
    assert (h.dropped_expired, h.answered) == (1, 1)
    silent = wire.InferRequest("car-h", 3, bench_frame())  # no deadline, no budget: the horizon
    node.process([pending(silent, age_s=horizon_s * 1.5)])
    assert node.health().dropped_expired == 2


def test_a_frame_larger_than_a_camera_sends_is_refused_from_its_header_never_decoded(node, decodes):
    side = 4000  # under MAX_FRAME_SIDE: before, it was decoded (48 MB) and answered
    bomb = bomb_frame()
    assert service_mod.jpeg_size(bomb) == (side, side) < (service_mod.MAX_FRAME_SIDE,) * 2
    payload = wire.encode_request(wire.InferRequest("car-p", 1, bomb, budget_ms=1e4))
    _, why = node._admission(payload)
    assert why is not None and f"{side}x{side}" in why and str(node.max_frame_pixels) in why
    node.process([pending(wire.InferRequest("car-p", 1, bomb, budget_ms=1e4))])
    at_cap = noise_frame(320, 240)
    node.process([pending(wire.InferRequest("car-p", 2, at_cap, budget_ms=1e4))])
    assert decodes == [len(at_cap)]  # only the frame within the cap was decoded
    h = node.health()
    assert (h.errors, h.answered) == (1, 1)


def test_bodies_over_the_byte_cap_and_non_jpeg_images_are_refused_before_decoding(node, decodes):
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()  # imdecode would read it
    node.process([pending(wire.InferRequest("car-p", 1, png, budget_ms=1e4))])
    big = b"\xff\xd8" + bytes(node.max_frame_bytes)
    _, why = node._admission(wire.encode_request(wire.InferRequest("car-p", 2, big)))
    assert why is not None and "bytes" in why
    # a JPEG whose frame header hides behind a run of empty markers: not walked to the end
    padded = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 100_000 + bomb_frame()[2:]
    assert service_mod.jpeg_size(padded) is None
    node.process([pending(wire.InferRequest("car-p", 3, padded[: node.max_frame_bytes], budget_ms=1e4))])
    assert decodes == [] and node.health().errors == 2


def test_the_limits_come_from_the_profiles_edge_section(tmp_path):
    prof = tmp_path / "edge.toml"
    prof.write_text(
        "[edge]\nqueue_per_car = 4\nqueue_max = 64\nmax_frame_pixels = 19200\n"
        "max_frame_bytes = 65536\nmax_budget_ms = 250.0\nflood_rate_hz = 10.0\n"
    )
    e = load_profile(str(prof)).edge
    assert (e.queue_per_car, e.queue_max, e.max_frame_pixels) == (4, 64, 19200)
    assert (e.max_frame_bytes, e.max_budget_ms, e.flood_rate_hz) == (65536, 250.0, 10.0)
    prof.write_text("[edge]\nmax_budget_ms = 0\n")
    with pytest.raises(EdgepilotError, match="edge.max_budget_ms: must be positive"):
        load_profile(str(prof))
    assert EdgeConfig().max_frame_pixels == 320 * 240


# -- through a real broker --------------------------------------------------------------


def test_a_burst_past_the_lane_is_throttled_with_a_reply_that_says_so_counted_per_car(broker, model):
    """60 requests at once from one car with room for 2: most are refused as "throttled"
    (answered within the car's budget of refusal replies, all counted in the health); the
    next car's request is answered as usual."""
    svc = EdgeService(BrokerConfig(url=broker.url), model, node_id="edge-throttle", queue_per_car=2).start()
    replies: queue.Queue = queue.Queue()
    lis = Connection(BrokerConfig(url=broker.url), "throttle-listener")
    lis.subscribe(f"{wire.ROOT}/car/+/reply", replies.put)
    lis.start()
    assert lis.wait_subscribed(5)
    try:
        jpeg, n = bench_frame(), 60
        props = properties(correlation=b"12345678")
        for i in range(n):
            req = wire.InferRequest("car-burst", i, jpeg, budget_ms=30_000)
            lis.publish(wire.infer_topic("car-burst"), wire.encode_request(req), props=props)
        lis.publish(wire.infer_topic("car-calm"), wire.encode_request(wire.InferRequest("car-calm", 0, jpeg)))
        got = _collect(replies, lambda r: r.car == "car-calm")
        calm = [r for r in got if r.car == "car-calm"]
        assert [r.status for r in calm] == ["ok"]
        throttled = [r for r in got if r.status == "throttled"]
        assert throttled and all("throttled" in r.error and "car-burst" in r.error for r in throttled)
        h = svc.health()
        assert h.throttled_cars == {"car-burst": h.throttled} and h.throttled >= len(throttled)
        assert h.throttled + h.answered - 1 + h.dropped_expired == n  # every request accounted for
        assert wire.decode_health(wire.encode_health(h)).throttled_cars == h.throttled_cars
    finally:
        lis.close()
        svc.stop()


def _collect(replies: queue.Queue, last, timeout_s: float = 10.0) -> list[wire.InferReply]:
    """Replies until one satisfies ``last`` (then what else came within 0.5 s)."""
    out: list[wire.InferReply] = []
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            out.append(wire.decode_reply(replies.get(timeout=0.5).payload))
        except queue.Empty:
            if any(last(r) for r in out):
                return out
    return out


def test_a_flooding_car_leaves_another_cars_round_trip_within_2x(broker):
    """The attack: one car sends 4000 x 4000 frames (30/s, as in the finding that pushed
    another car's round trip to 6.5 s) and frames at the largest accepted size at 150/s,
    every one with a deadline a day away; the node is a real ``edgepilot edge`` process.
    The legitimate car's round trip p50 during the flood stays within 2x of its p50
    without it, both measured in this run, windows alternating."""
    node = "edge-abuse"
    edge = spawn_edge(broker.url, node)
    try:
        res = side_by_side(broker.url, FloodSpec())
        health = edge_health(broker.url, node)
    finally:
        edge.terminate()
        edge.wait(10)
    assert res["baseline_n"] > 20 and res["attacked_n"] > 0
    assert math.isfinite(res["attacked_p50_ms"]), res
    assert res["attacked_p50_ms"] <= 2.0 * res["baseline_p50_ms"], res
    tally = res["flooder"]["replies"]
    assert tally.get("too-big", 0) > 0 and tally.get("throttled", 0) > 0, res
    assert health is not None and health.throttled_cars.get("car-flood", 0) > 0
    assert "car-legit" not in health.throttled_cars


@pytest.mark.slow
@pytest.mark.broker
def test_the_brokers_rate_limit_keeps_a_flood_the_node_cannot_read_off_another_cars_round_trip(tmp_path):
    """The flood that held other cars' requests in the broker-to-node connection (30 bombs +
    600 large frames a second: 18x the victim's p50 at load 17, without a broker limit),
    from a car the broker's rate limit counts and, in turn, from one it exempts, in one run
    (``python -m testbed.edge_abuse --rate-limit``): under the limit the victim's p50 stays
    within 2x of its baseline, and most of the flood is dropped by the broker, none of the
    exempt car's nor the node's."""
    node = "edge-abuse-limited"
    spec = FloodSpec(cap_rate=600.0)
    free = replace(spec, car=f"{spec.car}-unlimited")
    b = start_broker(tmp_path / "mosquitto", extra=ratelimit_config(exempt_users=(node, free.car)))
    try:
        edge = spawn_edge(b.url, node)
        try:
            res = side_by_side(b.url, spec, unlimited=free)
        finally:
            edge.terminate()
            edge.wait(10)
        time.sleep(1.2)  # the plugin logs a client's last drops within a second
        log = b.state / "mosquitto.log"
        dropped = {car: broker_drops(log, car) for car in (spec.car, free.car, node)}
    finally:
        b.stop()
    sent = sum(res["flooder"]["sent"].values())
    assert math.isfinite(res["attacked_p50_ms"]), res
    assert res["attacked_p50_ms"] <= 2.0 * res["baseline_p50_ms"], res
    assert dropped[spec.car] >= sent / 2 and dropped[free.car] == dropped[node] == 0, (dropped, sent)
