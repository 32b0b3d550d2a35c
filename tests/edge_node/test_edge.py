"""The edge node in-process against a real Mosquitto: round trip, expiry, malformed
payloads, micro-batching, health, model hot-swap."""

from __future__ import annotations

import itertools
import queue
import time

import cv2
import numpy as np
import pytest
import torch

from edge_node.model import BuiltinPilotNet, load_edge_model
from edge_node.service import EdgeService
from edgepilot.config import BrokerConfig
from edgepilot.model.package import load_private_key, make_keys
from edgepilot.mqtt import Connection, properties
from edgepilot.offload.client import OffloadClient
from edgepilot.schema import wire
from tests.helpers import wait_for

torch.set_num_threads(1)
_n = itertools.count()


def frame(seed: int = 0) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((120, 160, 3)) * 255).astype(np.uint8), (7, 7), 0)
    return img, cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def model():
    return load_edge_model("builtin:pilotnet")


@pytest.fixture
def edge(broker, model):
    svc = EdgeService(BrokerConfig(url=broker.url), model, node_id=f"edge-t{next(_n)}", health_every_s=0.2)
    svc.start()
    yield svc
    svc.stop()


class Listener:
    """A plain MQTT v5 client that publishes raw payloads and collects what comes back."""

    def __init__(self, broker, topic: str) -> None:
        self.got: queue.Queue = queue.Queue()
        self.conn = Connection(BrokerConfig(url=broker.url), f"listener-{next(_n)}")
        self.conn.subscribe(topic, self.got.put)
        self.conn.start()
        assert self.conn.wait_subscribed(5)

    def next(self, timeout: float = 2.0):
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self.conn.close()


def test_round_trip_answers_with_the_edge_models_own_output(broker, edge, model):
    # deadlines generous for a loaded machine: this test is about what comes back, not when
    car = OffloadClient(BrokerConfig(url=broker.url), "car-rt", deadline_s=2.0)
    car.start()
    try:
        answers, took_ms = {}, {}
        for i in range(5):
            img, jpeg = frame(i)
            t0 = time.monotonic()
            assert car.submit(100 + i, jpeg)
            answers[i] = car.poll(100 + i, time.monotonic() + 2.0)
            took_ms[i] = (time.monotonic() - t0) * 1e3
        for i, ans in answers.items():
            assert ans is not None and ans.frame == 100 + i
            img, jpeg = frame(i)
            local = model.infer(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
            assert ans.steering == pytest.approx(local.steering, abs=1e-5)
            assert ans.throttle == pytest.approx(local.throttle, abs=1e-5)
            assert ans.model == model.version and ans.node == edge.node_id
            assert 0 < ans.rtt_ms <= took_ms[i]  # within what the test itself saw the round trip take
        st = car.stats
        assert st["sent"] == 5 and st["answered"] == 5 and st["missed"] == 0
        assert st["rtt_ms"]["n"] == 5
    finally:
        car.close()


def test_reply_goes_to_the_requesters_own_reply_topic_with_its_correlation_data(broker, edge):
    lis = Listener(broker, wire.reply_topic("car-x"))
    try:
        _, jpeg = frame(1)
        payload = wire.encode_request(wire.InferRequest(car="car-x", frame=42, body=jpeg))
        props = properties(response_topic=wire.reply_topic("car-x"), correlation=b"my-token")
        lis.conn.publish(wire.infer_topic("car-x"), payload, props=props)
        msg = lis.next()
        assert msg.properties.CorrelationData == b"my-token"
        rep = wire.decode_reply(msg.payload)
        assert (rep.status, rep.car, rep.frame, rep.batch) == ("ok", "car-x", 42, 1)
        assert rep.compute_ms > 0
    finally:
        lis.close()


def test_a_response_topic_naming_another_car_is_refused_not_followed(broker, edge):
    """car-a asks for car-b's reply topic: the edge answers car-a with an error and sends
    nothing to car-b (otherwise car-a steers car-b with answers to its own frames)."""
    victim = Listener(broker, wire.reply_topic("car-b"))
    own = Listener(broker, wire.reply_topic("car-a"))
    try:
        _, jpeg = frame(3)
        payload = wire.encode_request(wire.InferRequest(car="car-a", frame=7, body=jpeg))
        props = properties(response_topic=wire.reply_topic("car-b"), correlation=(7).to_bytes(8, "big"))
        own.conn.publish(wire.infer_topic("car-a"), payload, props=props)
        rep = wire.decode_reply(own.next().payload)
        assert rep.status == "error" and "response topic" in rep.error
        with pytest.raises(queue.Empty):
            victim.next(0.5)
    finally:
        victim.close()
        own.close()


def test_without_response_topic_the_reply_goes_to_the_cars_reply_topic(broker, edge):
    lis = Listener(broker, wire.reply_topic("car-v3"))
    try:
        _, jpeg = frame(2)
        lis.conn.publish(
            wire.infer_topic("car-v3"), wire.encode_request(wire.InferRequest("car-v3", 5, jpeg))
        )
        rep = wire.decode_reply(lis.next().payload)
        assert rep.status == "ok" and rep.frame == 5
    finally:
        lis.close()


def test_expired_requests_are_dropped_not_answered(broker, edge):
    lis = Listener(broker, wire.reply_topic("car-e"))
    try:
        _, jpeg = frame(3)
        props = properties(response_topic=wire.reply_topic("car-e"))
        past = wire.InferRequest("car-e", 1, jpeg, deadline=time.time() - 0.01)
        lis.conn.publish(wire.infer_topic("car-e"), wire.encode_request(past), props=props)
        fresh = wire.InferRequest("car-e", 2, jpeg, deadline=time.time() + 5, budget_ms=5000)
        lis.conn.publish(wire.infer_topic("car-e"), wire.encode_request(fresh), props=props)
        rep = wire.decode_reply(lis.next().payload)
        assert rep.frame == 2  # the expired frame 1 got no answer; frame 2 did
        with pytest.raises(queue.Empty):
            lis.next(timeout=0.3)
        assert edge.metrics.dropped_expired == 1
    finally:
        lis.close()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x00\x01garbage", "no header line"),
        (b'{"v":7,"car":"car-m","frame":1}\nxx', "unsupported version 7"),
        (b'{"v":1,"car":"car-m","frame":1}\nnot a jpeg at all', "not a decodable JPEG"),
        (b'{"v":1,"car":"car-m","frame":1,"kind":"features"}\nxx', "features meta needs"),
        (
            b'{"v":1,"car":"car-m","frame":1,"kind":"features","meta":{"stage":0,"shape":[1,1,1],"scale":1}}\nx',
            "not served by this node",
        ),
        (b'{"v":1,"car":"someone-else","frame":1}\nxx', "does not match the topic"),
    ],
)
def test_malformed_payloads_get_an_error_reply_and_the_node_carries_on(broker, edge, payload, why):
    lis = Listener(broker, wire.reply_topic("car-m"))
    try:
        props = properties(response_topic=wire.reply_topic("car-m"), correlation=b"c1")
        lis.conn.publish(wire.infer_topic("car-m"), payload, props=props)
        rep = wire.decode_reply(lis.next().payload)
        assert rep.status == "error" and why in rep.error and rep.car == "car-m"
        _, jpeg = frame(4)
        lis.conn.publish(
            wire.infer_topic("car-m"), wire.encode_request(wire.InferRequest("car-m", 9, jpeg)), props=props
        )
        assert wire.decode_reply(lis.next().payload).status == "ok"
        assert edge.metrics.errors == 1
    finally:
        lis.close()


def test_a_burst_from_many_cars_is_micro_batched(broker, edge):
    lis = Listener(broker, f"{wire.ROOT}/car/+/reply")
    try:
        _, jpeg = frame(5)
        props = None
        n = 48
        for i in range(n):
            car = f"car-b{i % 8}"
            lis.conn.publish(
                wire.infer_topic(car), wire.encode_request(wire.InferRequest(car, i, jpeg)), props=props
            )
        reps = [wire.decode_reply(lis.next(5).payload) for _ in range(n)]
        assert sorted(r.frame for r in reps) == list(range(n))
        assert max(r.batch for r in reps) > 1
        assert max(r.batch for r in reps) <= edge.max_batch
        sizes = {int(k): v for k, v in edge.health().batch_sizes.items()}
        assert sum(k * v for k, v in sizes.items()) == n
        assert len(sizes) > 1 or 1 not in sizes
    finally:
        lis.close()


def test_health_is_published_retained(broker, edge):
    lis = Listener(broker, wire.health_topic(edge.node_id))
    try:
        h = wire.decode_health(lis.next().payload)
        assert h.node == edge.node_id and h.status == "up" and h.model.startswith("builtin-pilotnet")
    finally:
        lis.close()


def seed_loader(path, trusted_keys=None):
    """A stand-in package format: the file holds a seed (the real loader's signature
    check is another test's; here the announcement's signature and hash are under test)."""
    return BuiltinPilotNet(seed=int(open(path).read()))  # noqa: SIM115


def test_model_hot_swap_on_a_signed_announcement(broker, model, tmp_path):
    from cloud_trainer.push import announce

    priv, pub = make_keys(tmp_path / "keys")
    _, rogue_pub = make_keys(tmp_path / "rogue")
    svc = EdgeService(
        BrokerConfig(url=broker.url), model, node_id="edge-swap", model_loader=seed_loader, trusted_keys=[str(pub)], announce_keys=[str(pub)]
    ).start()
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-t")
    cloud.start()
    try:
        pkg = tmp_path / "e2.pkg"
        pkg.write_text("7")
        # signed by a key the node does not trust: refused before a byte is read
        announce(cloud, "edge", pkg, key=load_private_key(tmp_path / "rogue" / "signing.key"), version="e-bad")
        assert wait_for(lambda: svc.swap_error is not None, 5)
        assert "not signed by a trusted announcement key" in svc.swap_error and svc.model is model
        announce(cloud, "edge", pkg, key=load_private_key(priv), version="e2")
        assert wait_for(lambda: svc.swaps == 1, 5)
        assert svc.model.version == "builtin-pilotnet-untrained-s7" and svc.swap_error is None
        car = OffloadClient(BrokerConfig(url=broker.url), "car-swap", deadline_s=2.0)
        car.start()
        _, jpeg = frame(6)
        car.submit(1, jpeg)
        assert car.poll(1, time.monotonic() + 2.0).model == "builtin-pilotnet-untrained-s7"
        car.close()
    finally:
        cloud.close()
        svc.stop()


def test_a_package_changed_after_its_announcement_is_refused(broker, model, tmp_path):
    """The shared path's bytes are checked against the signed hash; with no good chunks
    either (here: cleared), the node keeps its model."""
    from cloud_trainer.push import announce, clear_chunks

    priv, pub = make_keys(tmp_path / "keys")
    svc = EdgeService(
        BrokerConfig(url=broker.url),
        model,
        node_id="edge-tamper",
        model_loader=seed_loader,
        trusted_keys=[str(pub)], announce_keys=[str(pub)],
        fetch_timeout_s=1.0,
    )
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-tamper")
    cloud.start()
    try:
        pkg = tmp_path / "e3.pkg"
        pkg.write_text("3")
        ann = announce(cloud, "edge", pkg, key=load_private_key(priv), version="e3")
        clear_chunks(cloud, "edge", "e3", ann.chunks)
        pkg.write_text("4")
        assert svc.swap_model(ann) is False
        assert "sha256" in svc.swap_error and svc.model is model
    finally:
        cloud.close()


def test_a_loader_that_crashes_keeps_the_current_model(broker, model, tmp_path):
    """Any exception from loading an announced package (here a UnicodeDecodeError, as a
    foreign file gave a test's loader) is a refused swap, not a dead swap thread."""
    from cloud_trainer.push import announce

    priv, pub = make_keys(tmp_path / "keys")
    svc = EdgeService(
        BrokerConfig(url=broker.url), model, node_id="edge-crash", model_loader=seed_loader, trusted_keys=[str(pub)], announce_keys=[str(pub)]
    )
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-crash")
    cloud.start()
    try:
        pkg = tmp_path / "binary.pkg"
        pkg.write_bytes(b"\x89PNG\xff\xfe")
        ann = announce(cloud, "edge", pkg, key=load_private_key(priv), version="e-bin")
        assert svc.swap_model(ann) is False
        assert svc.model is model and svc.swaps == 0
        assert svc.swap_error.startswith("UnicodeDecodeError")
    finally:
        cloud.close()


def test_bench_offload_reports_the_contract_keys_and_its_floor(broker, edge):
    import argparse

    from testbed.offload_bench import run

    res = run(argparse.Namespace(profile=None, broker=broker.url, vehicles=2, rate=20.0, duration=1.0))
    assert edge.node_id in res["edge_nodes"]
    for key in ("rtt_ms", "tcp_floor_ms", "edge_compute_ms"):
        assert res[key]["p50"] > 0
    assert res["rtt_ms"]["p99"] >= res["rtt_ms"]["p50"]
    # the floor is below the round trip it bounds, and the TCP echo below the MQTT round trip
    assert res["tcp_floor_ms"]["p50"] < res["rtt_unloaded_ms"]["p50"]
    # the bare MQTT request/response: above the TCP echo (two hops through the broker)
    assert res["tcp_floor_ms"]["p50"] < res["mqtt_floor_ms"]["p50"]
    assert res["sent"] == 2 * 20 and 0.0 <= res["deadline_miss_rate"] <= 1.0


def test_the_suite_leaves_no_retained_model_push_behind(broker):
    """The conftest teardown that keeps one test's retained pushes from the next test's nodes."""
    from tests.helpers import clear_retained

    conn = Connection(BrokerConfig(url=broker.url), "cloud-leak")
    conn.start()
    try:
        conn.publish(wire.model_topic("edge"), b'{"v":1,"target":"edge"}', qos=1, retain=True)
        time.sleep(0.1)
    finally:
        conn.close()
    assert wire.model_topic("edge") in clear_retained(broker.url)
    assert clear_retained(broker.url) == []


def test_a_model_giving_nan_gets_an_error_reply_not_full_lock(broker):
    """A corrupted edge model (NaN weights) must not answer "ok": clamping NaN to [-1, 1]
    gave steering 1.0, full right lock, which the car would have driven on."""
    bad = BuiltinPilotNet(seed=3)
    with torch.no_grad():
        bad.net[-1].bias.fill_(float("nan"))
    svc = EdgeService(BrokerConfig(url=broker.url), bad, node_id="edge-nan").start()
    lis = Listener(broker, wire.reply_topic("car-nan"))
    try:
        _, jpeg = frame(4)
        req = wire.encode_request(wire.InferRequest("car-nan", 9, jpeg))
        lis.conn.publish(wire.infer_topic("car-nan"), req)
        rep = wire.decode_reply(lis.next().payload)
        assert (rep.status, rep.frame, rep.steering) == ("error", 9, None)
        assert "non-finite" in rep.error
        assert svc.health().errors == 1
    finally:
        lis.close()
        svc.stop()
