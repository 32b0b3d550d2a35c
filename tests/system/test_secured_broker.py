"""Broker security with the project's secure config: per-client passwords, the ACL
(a car cannot publish as another car nor read its replies), and TLS with the test CA."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edgepilot import EdgepilotError
from edgepilot.broker import free_port, start_broker
from edgepilot.config import REPO_ROOT, BrokerConfig
from edgepilot.mqtt import Connection, properties
from edgepilot.offload.client import OffloadClient
from edgepilot.schema import fleet, wire

torch.set_num_threads(1)


def readable_dir() -> Path:
    """Mosquitto drops root for its own user before it reads the password file and ACL, so
    they must sit where that user can reach them (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="edgepilot-auth-"))
    d.chmod(0o755)
    return d


def start_secure(state, auth, extra: str = ""):
    port = free_port()
    text = (REPO_ROOT / "launch" / "mosquitto-secure.conf").read_text()
    text = text.replace("@PORT@", str(port)).replace("@STATE@", str(state)).replace("@AUTH@", str(auth))
    conf = state / "mosquitto.conf"
    conf.write_text(text + extra)
    return start_broker(state, port, _conf=conf)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    auth = readable_dir()
    subprocess.run(
        [
            REPO_ROOT / "launch" / "make-broker-auth",
            auth,
            "--car",
            "car-1",
            "--car",
            "car-2",
            "--edge",
            "edge-1",
            "--cloud",
            "cloud",
        ],
        check=True,
        capture_output=True,
    )
    b = start_secure(tmp_path_factory.mktemp("secure-broker"), auth)
    yield b, auth
    b.stop()
    shutil.rmtree(auth, ignore_errors=True)


def creds(b, auth, who: str, url: str | None = None, **kw) -> BrokerConfig:
    return BrokerConfig(url=url or b.url, username=who, password_file=str(auth / f"{who}.pass"), **kw)


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
        ann = fleet.PushAnnouncement("edge", "evil", "0" * 64, 1, 1, ["0" * 64], "A" * 86 + "==", path="/tmp/evil")
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
            fleet.UPLOAD_OFFER_FILTER,
            fleet.UPLOAD_CHUNK_FILTER,
            fleet.CAR_MODEL_FILTER,
            fleet.CLOUD_RETRAIN_TOPIC,
        ],
    )
    car1, car1_in = client(
        b,
        auth,
        "car-1",
        "car-1-fleet",
        [f"{R}/upload/car-1/#", f"{R}/upload/car-2/#", f"{R}/models/car/#", f"{R}/models/edge"],
    )
    car2, car2_in = client(b, auth, "car-2", "car-2-fleet", [f"{R}/upload/car-2/#", f"{R}/models/car/#"])
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


def test_tls_with_the_test_ca(tmp_path):
    shared = readable_dir()
    tls = shared / "tls"
    subprocess.run([REPO_ROOT / "launch" / "make-test-ca", tls], check=True, capture_output=True)
    auth = shared / "auth"
    subprocess.run(
        [REPO_ROOT / "launch" / "make-broker-auth", auth, "--car", "car-1", "--edge", "edge-1"],
        check=True,
        capture_output=True,
    )
    tls_port = free_port()
    extra = (
        f"\nlistener {tls_port} 127.0.0.1\ncafile {tls}/ca.crt\ncertfile {tls}/server.crt\n"
        f"keyfile {tls}/server.key\n"
    )
    b = start_secure(tmp_path, auth, extra)
    url = f"mqtts://127.0.0.1:{tls_port}"
    edge = EdgeService(
        creds(b, auth, "edge-1", url, tls_ca=str(tls / "ca.crt")), load_edge_model("builtin:pilotnet")
    )
    try:
        edge.start()
        car = OffloadClient(creds(b, auth, "car-1", url, tls_ca=str(tls / "ca.crt")), "car-1", deadline_s=1.0)
        car.start()
        assert car.submit(3, jpeg())
        ans = car.poll(3, time.monotonic() + 1.0)
        assert ans is not None and ans.frame == 3
        car.close()
        # a client that does not trust the CA is refused (certificate verify failed)
        with pytest.raises(EdgepilotError):
            Connection(creds(b, auth, "car-1", url), "car-1-notrust").start(1.0)
    finally:
        edge.stop()
        b.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_acl_split_plan_health_to_cars_and_tails_pushes_to_edges(secure):
    """Cars read the edges' health (their split plan: vehicle/splitplan.py); edge nodes read
    the cloud's tails pushes (edge_node/tailpush.py); a car cannot push tails."""
    b, auth = secure
    R = wire.ROOT
    cloud, _ = client(b, auth, "cloud", "cloud-tails", [])
    edge, edge_in = client(b, auth, "edge-1", "edge-1-tails", [wire.TAILS_TOPIC, f"{R}/models/tails/#"])
    car1, car1_in = client(b, auth, "car-1", "car-1-plan", [wire.HEALTH_FILTER, f"{R}/models/tails/#"])
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
