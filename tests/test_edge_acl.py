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
from edgepilot.schema import wire
from vehicle.offload import OffloadClient

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
        ann = wire.ModelAnnouncement("edge", "evil", "0" * 64, path="/tmp/evil")
        spy.publish(wire.model_topic("edge"), wire.encode_announcement(ann), qos=1)
        time.sleep(0.3)
        assert not seen and edge.swaps == 0
    finally:
        spy.close()
        car1.close()
        edge.stop()


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
