"""Broker security with the project's secure config: per-client passwords, the ACL
(a car cannot publish as another car nor read its replies), and TLS with the test CA."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edgepilot import EdgepilotError
from edgepilot.broker import start_secure_broker
from edgepilot.config import REPO_ROOT, BrokerConfig
from edgepilot.mqtt import Connection, properties
from edgepilot.offload.client import OffloadClient
from edgepilot.schema import fleet, wire
from tests.helpers import wait_for

torch.set_num_threads(1)


CLIENTS = ["--car", "car-1", "--car", "car-2", "--edge", "edge-1", "--cloud", "cloud", "--operator", "ops"]


def make_secured(tmp: Path, *clients: str) -> tuple[Path, object]:
    """docs/deploy.md's secured set-up, as a user makes it: the test CA, the logins and
    ACLs, the broker from launch/mosquitto-secure.conf (TLS only)."""
    auth = tmp / "auth"
    subprocess.run([REPO_ROOT / "launch" / "make-test-ca", auth / "tls"], check=True, capture_output=True)
    subprocess.run([REPO_ROOT / "launch" / "make-broker-auth", auth, *clients], check=True, capture_output=True)
    return auth, start_secure_broker(tmp / "state", auth)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    auth, b = make_secured(tmp_path_factory.mktemp("secure"), *CLIENTS)
    yield b, auth
    b.stop()


def creds(b, auth, who: str, **kw) -> BrokerConfig:
    kw.setdefault("tls_ca", str(auth / "tls" / "ca.crt"))
    return BrokerConfig(url=b.url, username=who, password_file=str(auth / f"{who}.pass"), **kw)


def jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))[1].tobytes()


def test_anonymous_and_wrong_password_are_refused(secure):
    b, auth = secure
    with pytest.raises(EdgepilotError, match="cannot connect"):
        Connection(BrokerConfig(url=b.url), "anon").start(1.0)
    with pytest.raises(EdgepilotError, match="cannot connect"):
        Connection(BrokerConfig(url=b.url, username="car-1", password="wrong"), "car-1").start(1.0)


def test_acl_a_car_cannot_publish_as_another_car_nor_read_its_replies(secure):
    b, auth = secure
    edge = EdgeService(
        creds(b, auth, "edge-1"), load_edge_model("builtin:pilotnet"), node_id="edge-1"
    ).start()
    car1 = OffloadClient(creds(b, auth, "car-1"), "car-1", deadline_s=1.0)
    car1.start()
    spy = Connection(creds(b, auth, "car-1"), "car-1-spy")
    got: list = []
    spy.subscribe(wire.reply_topic("car-1"), got.append)
    spy.subscribe(wire.reply_topic("car-2"), got.append)
    spy.start()
    try:
        # the car's own requests go through and are answered
        assert car1.submit(1, jpeg())
        assert car1.poll(1, time.monotonic() + 1.0) is not None
        before = edge.metrics.requests
        # car-1 publishing under car-2's id: the broker drops it, the edge never sees it
        forged = wire.encode_request(wire.InferRequest("car-2", 7, jpeg()))
        spy.publish(
            wire.infer_topic("car-2"), forged, props=properties(response_topic=wire.reply_topic("car-1"))
        )
        time.sleep(0.5)
        assert edge.metrics.requests == before
        assert all(wire.decode_reply(m.payload).frame != 7 for m in got)
        # car-2's replies never reach car-1 (Mosquitto 2.0 grants the SUBSCRIBE but checks
        # read access on every message it would deliver)
        car2 = OffloadClient(creds(b, auth, "car-2"), "car-2", deadline_s=1.0)
        car2.start()
        assert car2.submit(8, jpeg())
        assert car2.poll(8, time.monotonic() + 1.0) is not None  # car-2 got its answer...
        time.sleep(0.2)
        car2.close()
        assert all(m.topic != wire.reply_topic("car-2") for m in got)  # ...and car-1 saw nothing
        # a car cannot announce models (only the cloud may)
        seen: list = []
        edge.conn.subscribe(wire.model_topic("edge"), seen.append, qos=1)
        ann = fleet.PushAnnouncement(
            "edge", "evil", "0" * 64, 1, 1, ["0" * 64], "A" * 86 + "==", path="/tmp/evil", counter=1, expires=2**31
        )
        spy.publish(wire.model_topic("edge"), fleet.encode_announcement(ann), qos=1)
        time.sleep(0.3)
        assert not seen and edge.swaps == 0
    finally:
        spy.close()
        car1.close()
        edge.stop()


class Inbox:
    """A client's received messages, with a wait for one topic (QoS 1, so ordered)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.got: list[tuple[str, bytes]] = []

    def __call__(self, msg) -> None:
        self.got.append((msg.topic, msg.payload))

    def topics(self) -> list[str]:
        return [t for t, _ in self.got]

    def wait_for(self, topic: str, payload: bytes, timeout: float = 3.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (topic, payload) in self.got:
                return True
            time.sleep(0.01)
        return False


def client(b, auth, who: str, name: str, filters: list[str]) -> tuple[Connection, Inbox]:
    conn = Connection(creds(b, auth, who), name)
    inbox = Inbox(conn)
    for flt in filters:
        conn.subscribe(flt, inbox, qos=1)
    conn.start()
    assert conn.wait_subscribed(5)
    return conn, inbox


def test_acl_fleet_topics_upload_model_status_and_push(secure):
    """The cloud's traffic: each car uploads and reports only as itself and reads only its
    own acks; only the cloud announces models, acks uploads and reads the fleet's uploads.

    Every denied publish is followed by an allowed one from the same client at QoS 1: the
    broker delivers one publisher's messages in order, so once the allowed one arrived the
    denied one would have arrived before it if the broker had let it through."""
    b, auth = secure
    R = wire.ROOT
    cloud, cloud_in = client(
        b,
        auth,
        "cloud",
        "cloud-t",
        [
            fleet.shared("cloud", fleet.UPLOAD_OFFER_FILTER),
            fleet.shared("cloud", fleet.UPLOAD_CHUNK_FILTER),
            fleet.CAR_MODEL_FILTER,
            fleet.CLOUD_RETRAIN_TOPIC,
        ],
    )
    car1, car1_in = client(
        b,
        auth,
        "car-1",
        "car-1-fleet",
        [
            *(fleet.upload_topic(car, kind) for car in ("car-1", "car-2") for kind in ("ack", "status")),
            f"{R}/models/car",
            f"{R}/models/car/chunks/+/+",
            f"{R}/models/edge",
        ],
    )
    car2, car2_in = client(
        b,
        auth,
        "car-2",
        "car-2-fleet",
        [fleet.upload_topic("car-2", "ack"), fleet.upload_topic("car-2", "status"), f"{R}/models/car"],
    )
    try:
        # a car uploads as itself (offer and chunk) and reports its model as itself
        for kind in ("offer", "chunk"):
            assert car1.publish(fleet.upload_topic("car-1", kind), b"mine-" + kind.encode(), qos=1)
            assert cloud_in.wait_for(fleet.upload_topic("car-1", kind), b"mine-" + kind.encode())
        assert car1.publish(fleet.car_model_topic("car-1"), b"status-1", qos=1)
        assert cloud_in.wait_for(fleet.car_model_topic("car-1"), b"status-1")
        # ... but not as another car: offer, chunk, model status under car-2 never arrive
        for topic in (
            fleet.upload_topic("car-2", "offer"),
            fleet.upload_topic("car-2", "chunk"),
            fleet.car_model_topic("car-2"),
        ):
            car1.publish(topic, b"forged", qos=1)
        assert car1.publish(fleet.upload_topic("car-1", "offer"), b"after-forgery", qos=1)
        assert cloud_in.wait_for(fleet.upload_topic("car-1", "offer"), b"after-forgery")
        assert all(p != b"forged" for _, p in cloud_in.got)
        # nor acknowledge an upload, nor trigger a retraining
        car1.publish(fleet.upload_topic("car-2", "ack"), b"fake-ack", qos=1)
        car1.publish(fleet.CLOUD_RETRAIN_TOPIC, b'{"v":1}', qos=1)
        # a car cannot announce a model nor push chunks (car-2 would swap in anything)
        car1.publish(wire.model_topic("car"), b"evil-announcement", qos=1)
        car1.publish(fleet.chunk_topic("car", "evil", 0), b"evil-chunk", qos=1)
        assert car1.publish(fleet.upload_topic("car-1", "chunk"), b"after-evil", qos=1)
        assert cloud_in.wait_for(fleet.upload_topic("car-1", "chunk"), b"after-evil")
        assert fleet.CLOUD_RETRAIN_TOPIC not in cloud_in.topics()
        # the cloud can: ack car-2's upload (car-2 reads it, car-1 does not), trigger a
        # retrain, announce a model and its chunks (both cars read them)
        assert cloud.publish(fleet.upload_topic("car-2", "ack"), b"ack-2", qos=1)
        assert cloud.publish(fleet.upload_topic("car-2", "status"), b"status-2", qos=1)
        assert cloud.publish(fleet.CLOUD_RETRAIN_TOPIC, b'{"v":1}', qos=1)
        assert cloud.publish(fleet.chunk_topic("car", "good", 0), b"good-chunk", qos=1)
        assert cloud.publish(wire.model_topic("edge"), b"edge-announcement", qos=1)
        assert cloud.publish(wire.model_topic("car"), b"good-announcement", qos=1)
        assert car2_in.wait_for(fleet.upload_topic("car-2", "status"), b"status-2")
        assert car2_in.wait_for(wire.model_topic("car"), b"good-announcement")
        assert car1_in.wait_for(wire.model_topic("car"), b"good-announcement")
        assert car1_in.wait_for(fleet.chunk_topic("car", "good", 0), b"good-chunk")
        assert cloud_in.wait_for(fleet.CLOUD_RETRAIN_TOPIC, b'{"v":1}')
        assert (fleet.upload_topic("car-2", "ack"), b"ack-2") in car2_in.got
        assert all(p not in (b"evil-announcement", b"evil-chunk", b"fake-ack") for _, p in car2_in.got)
        assert all(t.startswith(f"{R}/models/car") or "/car-1/" in t for t in car1_in.topics())
        assert wire.model_topic("edge") not in car1_in.topics()  # cars never see edge models
    finally:
        for conn in (cloud, car1, car2):
            conn.close()


def test_tls_only_and_the_files_are_private(secure):
    """The one listener speaks TLS: a plain client, or one that does not trust the CA, is
    refused; the server key, the logins file and every password file are 0600."""
    b, auth = secure
    assert b.url.startswith("mqtts://")
    plain = BrokerConfig(url=b.url.replace("mqtts://", "mqtt://"), username="car-1", password_file=str(auth / "car-1.pass"))
    with pytest.raises(EdgepilotError):
        Connection(plain, "car-1:plain").start(1.0)
    with pytest.raises(EdgepilotError):
        Connection(creds(b, auth, "car-1", tls_ca=None), "car-1:notrust").start(1.0)
    conn = Connection(creds(b, auth, "car-1"), "car-1:ok")
    try:
        conn.start(3.0)
    finally:
        conn.close()
    for f in [auth / "tls" / "server.key", auth / "tls" / "ca.key", auth / "dynamic-security.json", auth / "ratelimit-exempt"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert set((auth / "ratelimit-exempt").read_text().split()) == {"edge-1", "cloud"}  # not the cars, not ops
    for f in auth.glob("*.pass"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    logins = json.loads((auth / "dynamic-security.json").read_text())
    secrets_ = {f.read_text().strip() for f in auth.glob("*.pass")}
    assert not any(pw in json.dumps(logins) for pw in secrets_)  # hashes only


def test_acl_split_plan_health_to_cars_and_tails_pushes_to_edges(secure):
    """Cars read the edges' health (their split plan: vehicle/splitplan.py); edge nodes read
    the cloud's tails pushes (edge_node/tailpush.py); a car cannot push tails."""
    b, auth = secure
    R = wire.ROOT
    cloud, _ = client(b, auth, "cloud", "cloud-tails", [])
    edge, edge_in = client(b, auth, "edge-1", "edge-1-tails", [wire.TAILS_TOPIC, f"{R}/models/tails/chunks/+/+"])
    car1, car1_in = client(b, auth, "car-1", "car-1-plan", [wire.HEALTH_FILTER, f"{R}/models/tails/chunks/+/+"])
    try:
        health = wire.encode_health(wire.EdgeHealth(node="edge-1"))
        assert edge.publish(wire.health_topic("edge-1"), health, qos=1)
        assert car1_in.wait_for(wire.health_topic("edge-1"), health)
        car1.publish(wire.TAILS_TOPIC, b"evil-tails", qos=1)
        car1.publish(fleet.chunk_topic("tails", "evil", 0), b"evil-chunk", qos=1)
        assert cloud.publish(fleet.chunk_topic("tails", "v1", 0), b"tails-chunk", qos=1)
        assert cloud.publish(wire.TAILS_TOPIC, b"tails-announcement", qos=1)
        assert edge_in.wait_for(fleet.chunk_topic("tails", "v1", 0), b"tails-chunk")
        assert edge_in.wait_for(wire.TAILS_TOPIC, b"tails-announcement")
        time.sleep(0.3)
        assert all(p not in (b"evil-tails", b"evil-chunk") for _, p in edge_in.got)
        assert not [t for t in car1_in.topics() if "/models/tails" in t]  # cars never see tails
    finally:
        for conn in (cloud, edge, car1):
            conn.close()


def raw_connect(cfg: BrokerConfig, client_id: str, timeout: float = 3.0) -> tuple[object, int | None]:
    """A bare paho client with exactly this client id (edgepilot's Connection would name it
    "<login>:..."): as an attacker would connect. Returns (client, CONNACK reason or None)."""
    import ssl
    import threading

    import paho.mqtt.client as paho

    from edgepilot.mqtt import parse_url

    got: dict[str, int] = {}
    done = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.username_pw_set(cfg.username, Path(cfg.password_file).read_text().strip())
    c.tls_set(ca_certs=cfg.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
    def on_connect(cl, ud, flags, rc, props) -> None:
        got["rc"] = rc.value
        done.set()

    c.on_connect = on_connect
    addr = parse_url(cfg.url)
    c.connect(addr.host, addr.port)
    c.loop_start()
    done.wait(timeout)
    return c, got.get("rc")


def test_a_car_cannot_take_another_clients_session(secure):
    """car-1 connecting with edge-1's client id is refused at CONNECT: the edge node stays
    connected and its retained health stays "up" (a takeover would fire its Last Will)."""
    b, auth = secure
    edge = EdgeService(creds(b, auth, "edge-1"), load_edge_model("builtin:pilotnet"), node_id="edge-1").start()
    health: list[wire.EdgeHealth] = []
    watch = Connection(creds(b, auth, "cloud"), "cloud:health-watch")
    watch.subscribe(wire.health_topic("edge-1"), lambda m: m.payload and health.append(wire.decode_health(m.payload)))
    watch.start()
    try:
        assert wait_for(lambda: health and health[-1].status == "up", 5)
        first_up = len(health) - 1  # earlier: a previous test's node's retained "offline"
        connects = edge.conn.connects
        for stolen in ("edge-1", "cloud", "car-2", "edge-1:x"):
            c, rc = raw_connect(creds(b, auth, "car-1"), stolen)
            c.loop_stop()
            c.disconnect()
            assert rc is not None and rc >= 0x80, f"car-1 connected as {stolen!r}"
        c, rc = raw_connect(creds(b, auth, "car-1"), "car-1:own")  # its own namespace is fine
        c.disconnect()
        c.loop_stop()
        assert rc == 0
        time.sleep(0.5)  # a takeover's Last Will would have arrived by now
        assert edge.conn.connected.is_set() and edge.conn.connects == connects
        assert all(h.status == "up" for h in health[first_up:])
    finally:
        watch.close()
        edge.stop()


def test_a_car_cannot_join_the_edge_or_cloud_shared_groups(secure):
    """A car's subscription to $share/edge/... or $share/cloud/... is refused at SUBACK, so it
    takes no share of the fleet's inference requests or uploads: every request reaches the edge."""
    b, auth = secure
    edge = EdgeService(creds(b, auth, "edge-1"), load_edge_model("builtin:pilotnet"), node_id="edge-1").start()
    thief_got: list = []
    thief = Connection(creds(b, auth, "car-1"), "car-1:thief")
    groups = [wire.shared_infer_filter("edge"), fleet.shared("cloud", fleet.UPLOAD_OFFER_FILTER)]
    for flt in groups:
        thief.subscribe(flt, thief_got.append, qos=1)
    thief.start()
    car2 = OffloadClient(creds(b, auth, "car-2"), "car-2", deadline_s=2.0)
    car2.start()
    try:
        assert thief.wait_subscribed(5)
        assert all(min(thief.suback[f]) >= 0x80 for f in groups)  # refused
        answered = 0
        for i in range(20):
            assert car2.submit(i, jpeg())
            answered += car2.poll(i, time.monotonic() + 2.0) is not None
        assert answered == 20 and thief_got == []
    finally:
        car2.close()
        thief.close()
        edge.stop()


def test_a_forged_response_topic_gets_no_car_steered_by_another(secure):
    """car-1 sends its own frames with car-2's reply topic and car-2's next frame indexes
    as Correlation Data while car-2 drives: car-2 gets no answer computed from car-1's
    frames; car-1 gets error replies; car-2's own answers all come back."""
    b, auth = secure
    edge = EdgeService(creds(b, auth, "edge-1"), load_edge_model("builtin:pilotnet"), node_id="edge-1").start()
    seen_by_car2: list[wire.InferReply] = []
    car2_ear = Connection(creds(b, auth, "car-2"), "car-2:ear")
    car2_ear.subscribe(wire.reply_topic("car-2"), lambda m: seen_by_car2.append(wire.decode_reply(m.payload)))
    car2_ear.start()
    attacker = Connection(creds(b, auth, "car-1"), "car-1:attack")
    to_attacker: list[wire.InferReply] = []
    attacker.subscribe(wire.reply_topic("car-1"), lambda m: to_attacker.append(wire.decode_reply(m.payload)))
    attacker.start()
    car2 = OffloadClient(creds(b, auth, "car-2"), "car-2", deadline_s=2.0)
    car2.start()
    try:
        assert car2_ear.wait_subscribed(5) and attacker.wait_subscribed(5)
        answered = 0
        for i in range(20):
            req = wire.encode_request(wire.InferRequest("car-1", i, jpeg(), budget_ms=2000))
            props = properties(response_topic=wire.reply_topic("car-2"), correlation=i.to_bytes(8, "big"))
            assert attacker.publish(wire.infer_topic("car-1"), req, props=props)
            assert car2.submit(i, jpeg())
            answered += car2.poll(i, time.monotonic() + 2.0) is not None
        assert wait_for(lambda: len(to_attacker) == 20, 5)
        assert all(r.status == "error" and "response topic" in r.error for r in to_attacker)
        assert answered == 20 and car2.stats["foreign"] == 0
        assert [r.car for r in seen_by_car2 if r.car != "car-2"] == []  # 0 answers from car-1's frames
    finally:
        car2.close()
        attacker.close()
        car2_ear.close()
        edge.stop()


def test_the_rate_limit_is_per_login_and_spares_edge_nodes_the_cloud_and_uploads(secure):
    """The broker's rate limit (launch/mosquitto-plugin/edgepilot_ratelimit.c: 100 messages/s
    per login, 200 at once) counts per login: car-1's three connections, 150 requests each
    (each under the burst on its own), share one bucket and get at most 200 + 100/s through;
    car-2's 120 at the same time all arrive. The edge node's replies and the cloud's acks
    (their logins are in ratelimit-exempt) and a car's upload chunks are not limited: 400 of
    each, all arrive."""
    b, auth = secure
    got: list[tuple[str, float]] = []

    def inbox(who: str, name: str, filters: list[str]) -> Connection:
        conn = Connection(creds(b, auth, who), name)
        for flt in filters:
            conn.subscribe(flt, lambda m: got.append((m.topic, time.monotonic())))
        conn.start()
        assert conn.wait_subscribed(5)
        return conn

    def count(topic: str) -> int:
        return sum(1 for t, _ in got if t == topic)

    edge_ear = inbox("edge-1", "edge-1:ear", [wire.shared_infer_filter("edge")])
    cloud_ear = inbox("cloud", "cloud:ear", [fleet.shared("cloud", fleet.UPLOAD_CHUNK_FILTER)])
    car2_ear = inbox("car-2", "car-2:ear", [wire.reply_topic("car-2"), fleet.upload_topic("car-2", "ack")])
    car1 = [Connection(creds(b, auth, "car-1"), f"car-1:flood{i}") for i in range(3)]
    car2, edge, cloud = (Connection(creds(b, auth, w), f"{w}:pub") for w in ("car-2", "edge-1", "cloud"))
    conns = [edge_ear, cloud_ear, car2_ear, *car1, car2, edge, cloud]
    try:
        for c in [*car1, car2, edge, cloud]:
            c.start()
        time.sleep(2.0)  # earlier tests' requests: every bucket full again
        t0 = time.monotonic()
        for i in range(150):
            for c in car1:
                assert c.publish(wire.infer_topic("car-1"), b"req")
            if i < 120:
                assert car2.publish(wire.infer_topic("car-2"), b"req")
        for _ in range(400):
            assert edge.publish(wire.reply_topic("car-2"), b"reply")
            assert cloud.publish(fleet.upload_topic("car-2", "ack"), b"ack")
            assert car2.publish(fleet.upload_topic("car-2", "chunk"), b"chunk")
        exempt = [wire.reply_topic("car-2"), fleet.upload_topic("car-2", "ack"), fleet.upload_topic("car-2", "chunk")]
        assert wait_for(lambda: all(count(t) == 400 for t in exempt), 10), [count(t) for t in exempt]
        assert wait_for(lambda: count(wire.infer_topic("car-2")) == 120, 5)
        time.sleep(0.5)
        car1_got = [t for topic, t in got if topic == wire.infer_topic("car-1")]
        window = max(car1_got) - t0
        assert 100 <= len(car1_got) <= 200 + 100 * window + 1, (len(car1_got), window)
        log = (b.state / "mosquitto.log").read_text()
        assert "edgepilot_ratelimit: 'car-1' over its limit" in log
        for who in ("car-2", "edge-1", "cloud"):
            assert f"'{who}' over its limit" not in log
    finally:
        for c in conns:
            c.close()
