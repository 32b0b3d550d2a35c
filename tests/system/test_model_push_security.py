"""Model pushes that cannot be rolled back or frozen (after Uptane/TUF): a replayed older,
validly signed announcement is refused by a car that ran a newer one, also after a restart;
an expired one is refused even by a fresh car; an explicit rollback (an older version under
a newer counter) is accepted; announcements need the announcement key, not the package key;
version-1 announcements (no counter) are refused. A real Mosquitto, the cloud's push code,
the car's updater."""

from __future__ import annotations

import time
from pathlib import Path

from cloud_trainer.push import announce, push_current
from cloud_trainer.registry import Registry
from cloud_trainer.store import DirStore
from edgepilot.config import BrokerConfig
from edgepilot.keys import ANNOUNCEMENTS, load_private_key, make_keys
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet, wire
from tests.cloud_trainer.test_registry import Car, make_package
from tests.helpers import wait_for


def fleet_keys(tmp: Path) -> dict[str, object]:
    """Two pairs, as the cloud has them: packages and announcements."""
    pkg_priv, pkg_pub = make_keys(tmp / "keys")
    ann_priv, ann_pub = make_keys(tmp / "keys", role=ANNOUNCEMENTS)
    return {
        "package": load_private_key(pkg_priv),
        "announce": load_private_key(ann_priv, role=ANNOUNCEMENTS),
        "package_pub": str(pkg_pub),
        "announce_pub": str(ann_pub),
    }


def car_with(broker_url: str, name: str, cache: Path, k: dict[str, object]) -> Car:
    return Car(broker_url, name, cache, [str(k["package_pub"])], [str(k["announce_pub"])])


def refused_with(car: Car, text: str, timeout: float = 10.0) -> bool:
    """The car's latest status is a refusal that says ``text``."""
    return wait_for(lambda: (st := car.updater.status) is not None and st.state == "refused" and text in (st.error or ""), timeout)


def captured(conn: Connection) -> list[bytes]:
    """Every announcement of the car model that crosses the broker (what anyone who reads
    ``models/car`` can record and publish again later)."""
    got: list[bytes] = []
    conn.subscribe(wire.model_topic("car"), lambda m: m.payload and got.append(bytes(m.payload)), qos=1)
    assert conn.wait_subscribed(5)
    return got


def test_a_replayed_older_announcement_downgrades_no_car(broker, tmp_path):
    k = fleet_keys(tmp_path)
    reg = Registry(DirStore(tmp_path / "store"), trusted_keys=[str(k["package_pub"])])
    for n in (1, 2, 3):
        reg.add("car", make_package(tmp_path / f"v{n}.eppkg", f"rb-v{n}", k["package"], seed=n))
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-rb")
    cloud.start()
    seen = captured(cloud)
    car = car_with(broker.url, "car-rb", tmp_path / "cache", k)
    try:
        for n in (1, 2, 3):
            reg.promote("car", f"rb-v{n}")
            push_current(cloud, reg, "car", key=k["announce"])
            assert car.updater.wait_for(f"rb-v{n}", 10).state == "running"
        assert car.slot.version == "rb-v3" and len(seen) >= 3
        v1_announcement = next(p for p in seen if fleet.decode_announcement(p).version == "rb-v1")
        cloud.publish(wire.model_topic("car"), v1_announcement, qos=1, retain=True)  # the replay
        assert refused_with(car, "not newer") and car.slot.version == "rb-v3"
        car.close()
        # the car restarts (same cache): the retained replay is still refused
        car = car_with(broker.url, "car-rb", tmp_path / "cache", k)
        car.slot.current = car.slot.load(tmp_path / "cache" / "rb-v3.eppkg")
        assert refused_with(car, "not newer") and car.slot.version == "rb-v3"

        # an explicit rollback: the older version under a newer counter, signed as a rollback
        reg.promote("car", "rb-v2")
        ann = push_current(cloud, reg, "car", key=k["announce"], rollback=True)
        assert ann.rollback and ann.counter > fleet.decode_announcement(v1_announcement).counter
        assert car.updater.wait_for("rb-v2", 10).state == "running" and car.slot.version == "rb-v2"
    finally:
        car.close()
        cloud.close()


def test_expired_and_wrongly_signed_and_old_format_announcements_are_refused(broker, tmp_path):
    k = fleet_keys(tmp_path)
    pkg = make_package(tmp_path / "e.eppkg", "exp-v1", k["package"], seed=5)
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-exp")
    cloud.start()
    car = car_with(broker.url, "car-exp", tmp_path / "fresh-cache", k)  # a fresh car: no state
    try:
        announce(cloud, "car", pkg, key=k["announce"], version="exp-v1", ttl_s=-60)  # frozen
        assert refused_with(car, "expired")
        # signed with the package key, which the car trusts for packages, not for announcements
        announce(cloud, "car", pkg, key=k["package"], version="exp-v1")
        assert refused_with(car, "not signed by a trusted announcement key")
        # a version-1 announcement (signed before counters existed) is refused unread
        old = (
            b'{"v":1,"target":"car","version":"exp-v1","sha256":"' + b"0" * 64 + b'","size":1,'
            b'"chunk_size":1,"chunk_sha256":["' + b"0" * 64 + b'"],"signature":"' + b"A" * 86 + b'=="}'
        )
        cloud.publish(wire.model_topic("car"), old, qos=1, retain=True)
        assert refused_with(car, "no signed counter")
        assert car.slot.version is None and not (tmp_path / "fresh-cache" / "exp-v1.eppkg").exists()
        # and a good one runs
        announce(cloud, "car", pkg, key=k["announce"], version="exp-v1")
        assert car.updater.wait_for("exp-v1", 10).state == "running"
    finally:
        car.close()
        cloud.close()


def test_the_cloud_refreshes_its_announcements_before_they_expire(broker, tmp_path, monkeypatch):
    """CloudService re-announces the current models every quarter of their lifetime: a
    newer counter, a later expiry, the same version (a car notes it, fetches nothing)."""
    from cloud_trainer.service import CloudService
    from edgepilot.config import RetrainConfig

    k = fleet_keys(tmp_path)
    store = DirStore(tmp_path / "store")
    reg = Registry(store, trusted_keys=[str(k["package_pub"])])
    reg.add("car", make_package(tmp_path / "r.eppkg", "ref-v1", k["package"], seed=6))
    reg.promote("car", "ref-v1")
    conn = Connection(BrokerConfig(url=broker.url), "cloud-refresh")
    conn.start()
    seen = captured(conn)
    svc = CloudService(
        store,
        conn,
        RetrainConfig(),
        trusted_keys=[str(k["package_pub"])],
        announce_ttl_s=2.0,
        announce_key=str(tmp_path / "keys" / "announce.key"),
    )
    svc.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        anns = [fleet.decode_announcement(p) for p in seen]
        assert len(anns) >= 3 and {a.version for a in anns} == {"ref-v1"}
        assert all(b.counter > a.counter and b.expires >= a.expires for a, b in zip(anns, anns[1:], strict=False))
    finally:
        svc.stop()
        conn.close()
