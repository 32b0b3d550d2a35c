"""Model registry, signed push over a real Mosquitto, the car's verify-and-swap, and rollback."""

from __future__ import annotations

import base64
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from cloud_trainer.push import announce, push_current
from cloud_trainer.registry import Registry, cli_list, cli_promote, cli_rollback
from cloud_trainer.store import DirStore
from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.drive.slot import ModelSlot
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.package import load_private_key, make_keys, save_package
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from tests.helpers import wait_for
from vehicle.updates import ModelUpdater


def make_package(path: Path, version: str, key, parent: str | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_net(ArchSpec("early-exit"))
    manifest = {
        "version": version,
        "parent": parent,
        "arch": net.arch.to_dict(),
        "quant": "fp32",
        "thresholds": {"exits": [0.5, 0.5], "offload": 0.1},
        "metrics": {"val_steering_mae": 0.1 + seed / 100},
        "training": {"sessions": [f"s{seed}"]},
    }
    return save_package(path, manifest, net.state_dict(), key)


@pytest.fixture
def keys(tmp_path):
    priv, pub = make_keys(tmp_path / "keys")
    return load_private_key(priv), str(pub)


@pytest.fixture
def reg(tmp_path, keys):
    return Registry(DirStore(tmp_path / "store"), trusted_keys=[keys[1]])


def test_add_promote_rollback_history(tmp_path, keys, reg):
    key, _ = keys
    for n in (1, 2, 3):
        reg.add("car", make_package(tmp_path / f"m{n}.eppkg", f"car-v{n}", key, f"car-v{n - 1}", seed=n))
    assert [e["version"] for e in reg.versions("car")] == ["car-v1", "car-v2", "car-v3"]
    e = reg.get("car", "car-v2")
    assert e["parent"] == "car-v1" and e["data"] == ["s2"] and len(e["sha256"]) == 64
    assert e["signature"]["alg"] == "ed25519" and e["thresholds"]["offload"] == 0.1
    assert reg.current("car") is None
    with pytest.raises(EdgepilotError, match="no earlier"):
        reg.rollback("car")
    for v in ("car-v1", "car-v2", "car-v3"):
        reg.promote("car", v)
    assert reg.current("car") == "car-v3" and reg.history("car") == ["car-v1", "car-v2"]
    assert reg.rollback("car")["version"] == "car-v2"
    assert reg.rollback("car")["version"] == "car-v1"  # walks back, not in a circle
    assert reg.current("edge") is None  # targets are independent
    with pytest.raises(EdgepilotError, match="no car model version"):
        reg.promote("car", "car-v9")


def test_unsigned_or_tampered_package_is_never_registered(tmp_path, keys, reg):
    foreign = load_private_key(make_keys(tmp_path / "other")[0])
    with pytest.raises(EdgepilotError, match="signature"):
        reg.add("car", make_package(tmp_path / "f.eppkg", "car-f", foreign))
    p = make_package(tmp_path / "t.eppkg", "car-t", keys[0])
    tamper(p)
    with pytest.raises(EdgepilotError, match="hash mismatch"):
        reg.add("car", p)
    assert reg.versions("car") == []


def tamper(path: Path) -> None:
    """Flip one weight byte, keeping the signed manifest: what a corrupted mirror does."""
    with zipfile.ZipFile(path) as z:
        data = {n: z.read(n) for n in z.namelist()}
    w = bytearray(data["weights.pt"])
    w[len(w) // 2] ^= 0xFF
    data["weights.pt"] = bytes(w)
    with zipfile.ZipFile(path, "w") as z:
        for n, b in data.items():
            z.writestr(n, b)


class Car:
    """A car's model side: a slot swapped between 'frames' by a ticker, and the updater."""

    def __init__(
        self, broker_url: str, car_id: str, cache: Path, trusted: list[str], announce: list[str] | None = None
    ) -> None:
        self.slot = ModelSlot(trusted_keys=trusted)
        self.conn = Connection(BrokerConfig(url=broker_url), car_id)
        self.updater = ModelUpdater(
            self.conn,
            self.slot,
            car_id,
            cache,
            trusted_keys=trusted,
            announce_keys=announce or trusted,
            fetch_timeout_s=5,
        )
        self.conn.start()
        self.updater.start()
        self._stop = threading.Event()
        self.ticks = 0
        self._t = threading.Thread(target=self._tick, daemon=True)
        self._t.start()

    def _tick(self) -> None:
        while not self._stop.is_set():
            self.slot.maybe_swap()
            self.ticks += 1
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.conn.close()


def test_push_swap_tamper_and_rollback_over_mqtt(broker, tmp_path, keys, reg):
    key, pub = keys
    target = "car"
    topic_root = fleet.chunk_filter(target, "x")  # topics are per broker: clear any earlier state
    assert topic_root.startswith("edgepilot/v1/models/car/chunks/")
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-reg-test")
    cloud.start()
    car = Car(broker.url, "car-reg", tmp_path / "cache", [pub])
    statuses: list[fleet.CarModelStatus] = []
    cloud.subscribe(
        fleet.car_model_topic("car-reg"), lambda m: statuses.append(fleet.decode_car_status(m.payload)), qos=1
    )
    try:
        reg.add(target, make_package(tmp_path / "a.eppkg", "reg-a", key, seed=1))
        reg.add(target, make_package(tmp_path / "b.eppkg", "reg-b", key, "reg-a", seed=2))
        reg.promote(target, "reg-a")
        push_current(cloud, reg, target, key=key)
        st = car.updater.wait_for("reg-a", 10)
        assert st.state == "running" and car.slot.version == "reg-a"

        reg.promote(target, "reg-b")
        t0 = time.monotonic()
        ann = push_current(cloud, reg, target, key=key)
        st = car.updater.wait_for("reg-b", 10)
        assert st.state == "running" and car.slot.version == "reg-b"
        assert ann.size < 1 << 20
        assert car.updater.swapped_at["reg-b"] - t0 < 10  # the figure itself: benchmark, docs

        # a tampered package with a *correct* announcement (hash of the tampered bytes, signed
        # by the cloud key): the package's own signature check refuses it; reg-b keeps running
        bad = make_package(tmp_path / "c.eppkg", "reg-c", key, "reg-b", seed=3)
        tamper(bad)
        announce(cloud, target, bad, key=key, version="reg-c")
        st = car.updater.wait_for("reg-c", 10)
        assert st.state == "refused" and "hash mismatch" in st.error and car.slot.version == "reg-b"

        # a forged announcement (signed by a key the car does not trust) is refused before fetching
        other = load_private_key(make_keys(tmp_path / "evil")[0])
        announce(
            cloud,
            target,
            make_package(tmp_path / "d.eppkg", "reg-d", other, seed=4),
            key=other,
            version="reg-d",
        )
        st = car.updater.wait_for("reg-d", 10)
        assert st.state == "refused" and "not signed by a trusted announcement key" in st.error
        assert not (tmp_path / "cache" / "reg-d.eppkg").exists()

        # rollback: the registry's previous current goes back onto the car
        assert reg.rollback(target)["version"] == "reg-a"
        ann = push_current(cloud, reg, target, key=key, rollback=True)
        assert ann.rollback
        st = car.updater.wait_for("reg-a", 10)
        assert st.state == "running" and car.slot.version == "reg-a" and car.slot.swaps == 3
        # the cloud sees what the car runs
        assert wait_for(lambda: bool(statuses) and statuses[-1].version == "reg-a", 5)
    finally:
        car.close()
        cloud.close()


def test_models_cli_list_promote_rollback(tmp_path, keys, broker, monkeypatch):
    key, pub = keys
    store = tmp_path / "clistore"
    r = Registry(DirStore(store), trusted_keys=[pub])
    r.add("edge", make_package(tmp_path / "e1.eppkg", "edge-1", key, seed=1))
    r.add("edge", make_package(tmp_path / "e2.eppkg", "edge-2", key, "edge-1", seed=2))
    monkeypatch.setenv("EDGEPILOT_SIGNING_KEY", str(tmp_path / "keys" / "signing.key"))

    class A:
        profile = None
        json = True

    a = A()
    a.store, a.target, a.broker = str(store), "edge", broker.url
    a.version = "edge-1"
    assert cli_promote(a)["pushed"] is True
    a.version = "edge-2"
    assert cli_promote(a) == {"target": "edge", "current": "edge-2", "pushed": True}
    listed = cli_list(a)
    assert listed["current"] == "edge-2" and [v["version"] for v in listed["versions"]] == [
        "edge-1",
        "edge-2",
    ]
    out = cli_rollback(a)
    assert out["current"] == "edge-1" and out["rolled_back"] == "edge-2"
    # the retained announcement on the broker now names edge-1, signed
    got: list[bytes] = []
    c = Connection(BrokerConfig(url=broker.url), "reader")
    c.subscribe("edgepilot/v1/models/edge", lambda m: got.append(m.payload), qos=1)
    c.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    c.close()
    ann = fleet.decode_announcement(got[-1])
    assert ann.version == "edge-1" and ann.rollback and len(base64.b64decode(ann.signature)) == 64
    assert json.loads((store / "models/edge/pushed.json").read_text())["version"] == "edge-1"
