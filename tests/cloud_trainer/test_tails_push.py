"""The cloud trains split-mode tails with the car model it pushes, and an edge node that
started with an empty tails directory serves them without a restart; tails that fail
verification are refused with one clear log line and never stop the node; a failure to
train tails still pushes the car model. Real Mosquitto, tiny training settings."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from cloud_trainer.push import PUSH_CHUNK, announce
from cloud_trainer.retrain import RetrainConfig
from cloud_trainer.service import CloudService
from cloud_trainer.store import DirStore
from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edge_node.tails import TailShelf
from edgepilot.config import BrokerConfig
from edgepilot.model.data import decode, load_samples
from edgepilot.model.package import key_id, load_private_key, make_keys
from edgepilot.model.runtime import Autopilot
from edgepilot.model.synthetic import write_synthetic_log
from edgepilot.model.tail import train_tails
from edgepilot.mqtt import Connection
from edgepilot.offload.client import OffloadClient
from edgepilot.schema import fleet, wire
from tests.helpers import wait_for

torch.set_num_threads(1)


def publish_tampered(conn: Connection, key, version: str, good: bytes, bad: bytes, path) -> None:
    """A correctly signed announcement of ``good`` whose bytes, at ``path`` and in the
    retained chunks, are ``bad`` (tampered on the shared disk and on the broker)."""

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    chunks = range(0, len(good), PUSH_CHUNK)
    for n, i in enumerate(chunks):
        conn.publish(fleet.chunk_topic("tails", version, n), bad[i : i + PUSH_CHUNK], qos=1, retain=True)
    ann = fleet.PushAnnouncement(
        target="tails",
        version=version,
        sha256=sha(good),
        size=len(good),
        chunk_size=PUSH_CHUNK,
        chunk_sha256=[sha(good[i : i + PUSH_CHUNK]) for i in chunks],
        signature="",
        key_id=key_id(key.public_key()),
        path=str(path),
        at=time.time(),
        counter=int(time.time() * 1000),
        expires=int(time.time() + 3600),
    )
    ann.signature = base64.b64encode(key.sign(ann.signed_bytes())).decode()
    conn.publish(wire.TAILS_TOPIC, fleet.encode_announcement(ann), qos=1, retain=True)


def test_cloud_pushes_car_model_and_tails_edge_serves_them_without_restart(
    broker, tmp_path, sample_logs, tiny_model, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    priv, pub = make_keys(tmp_path / "keys")
    key = load_private_key(priv)
    cfg_b = BrokerConfig(url=broker.url)
    store = DirStore(tmp_path / "store")
    for src in sample_logs:  # the two sample sessions train, a third is held out
        shutil.copytree(src, store.local_dir(f"logs/sim/{src.rsplit('/', 1)[-1]}"))
    write_synthetic_log(store.local_dir("logs/sim/synthetic-z"), 30, seed=3)
    cfg = RetrainConfig(
        epochs=1,
        max_frames=200,
        eval_frames=60,
        eval_tracks=[],  # the gate's closed loop is not what this tests
        margin_mae=1.0,
        latency_budget_ms=100.0,
        train_edge=False,
        tail_epochs=1,
        tail_width=16,
    )
    cloud_conn = Connection(cfg_b, "cloud-tails")
    cloud_conn.start()
    svc = CloudService(
        store,
        cloud_conn,
        cfg,
        trusted_keys=[str(pub)],
        announce_key=str(priv),
        key=str(priv),
        workdir=tmp_path / "work",
        isolate=False,
    )
    runs: list[dict] = []
    cloud_conn.subscribe(fleet.CLOUD_RUNS_TOPIC, lambda m: runs.append(json.loads(m.payload)), qos=1)
    edge_dir = tmp_path / "edge-tails"
    edge_dir.mkdir()
    edge = EdgeService(
        cfg_b,
        load_edge_model("builtin:pilotnet"),
        node_id="edge-tailpush",
        tails=TailShelf(edge_dir),
        trusted_keys=[str(pub)], announce_keys=[str(pub)],
    ).start()
    follower = edge.tails_follower
    car_client = None
    try:
        # 1. tails that fail verification: refused, logged, the node goes on
        tiny = Autopilot.load(tiny_model)
        good = train_tails(tiny, sample_logs, epochs=1, width=16).save(tmp_path / "tiny-tails.pt")
        raw = good.read_bytes()
        bad = bytearray(raw)
        bad[len(bad) // 2] ^= 0x55
        (tmp_path / "bad.pt").write_bytes(bytes(bad))
        publish_tampered(cloud_conn, key, tiny.version, raw, bytes(bad), tmp_path / "bad.pt")
        assert wait_for(lambda: tiny.version in follower.refused, 15)
        assert "sha256 mismatch" in follower.refused[tiny.version]
        other, _ = make_keys(tmp_path / "other-keys")
        announce(cloud_conn, "tails", good, key=load_private_key(other), version=tiny.version)
        assert wait_for(lambda: "not signed by a trusted announcement key" in follower.refused.get(tiny.version, ""), 15)
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert any(
            f"tails for car model {tiny.version} refused" in m and "sha256 mismatch" in m for m in refusals
        )
        assert any(
            f"tails for car model {tiny.version} refused" in m and "trusted announcement key" in m for m in refusals
        )
        assert tiny.version not in edge.tails.sets and not list(edge_dir.glob("*.pt"))

        # 2. the cloud's run: a car model AND its tails, pushed; the running node serves them
        t0 = time.perf_counter()
        res = svc.run_once()
        run_s = time.perf_counter() - t0
        assert res is not None and res["promoted"] == ["car"], svc.errors
        v1 = svc.registry.current("car")
        tails_info = res["tails"]
        assert "error" not in tails_info and tails_info["version"] == v1
        print(f"cloud run {run_s:.1f} s, tails trained in {tails_info['train_s']:.2f} s")
        entry = svc.registry.get("car", v1)
        stored = svc.registry.tails_path(v1)
        assert (
            stored is not None and entry["tails"]["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
        )
        assert sorted(entry["tails"]["stages"]) == sorted(tails_info["stages"])
        assert wait_for(lambda: runs and runs[-1].get("run") == res["run"], 5)
        assert runs[-1]["tails"]["version"] == v1  # the run summary says what went out
        assert wait_for(lambda: v1 in edge.tails.sets, 20), follower.refused
        assert (edge_dir / f"{v1}.pt").exists()  # kept: a restarted node serves it again
        assert [t["car_model"] for t in edge.health().tails] == [v1]

        # a node that starts later, with no tails directory and no access to the cloud's
        # disk: the retained announcement, the chunks from the broker, tails in memory
        hidden = stored.with_name("hidden")
        stored.rename(hidden)
        late = EdgeService(
            cfg_b, load_edge_model("builtin:pilotnet"), node_id="edge-tailpush-late", trusted_keys=[str(pub)], announce_keys=[str(pub)]
        ).start()
        try:
            assert wait_for(lambda: v1 in late.tails.sets, 20), late.tails_follower.refused
            assert (
                late.tails.dir is None
                and late.tails.sets[v1].tails.keys() == edge.tails.sets[v1].tails.keys()
            )
        finally:
            late.stop()
            hidden.rename(stored)

        car = Autopilot.load(svc.registry.package_path("car", v1), [str(pub)])
        car_client = OffloadClient(cfg_b, "car-tailpush", deadline_s=1.0, model_version=v1)
        car_client.start()
        img = decode(load_samples(sample_logs).samples[5].jpeg)
        dec = car.infer(img, force_final=True)
        assert car_client.submit(1, None, features=dec.features, stage=dec.exit)
        ans = car_client.poll(1, time.monotonic() + 3.0)
        assert ans is not None and ans.model == f"tail-{v1}" and np.isfinite(ans.steering)

        # 3. tails training fails: the car model is pushed all the same, the failure reported
        def broken(*a, **k):
            raise RuntimeError("no tails today")

        monkeypatch.setattr("edgepilot.model.tail.train_tails", broken)
        time.sleep(1.1)  # a new version name (versions carry the second they were made)
        pushed: list[str] = []
        lock = threading.Lock()

        def on_car(m) -> None:
            if m.payload:
                with lock:
                    pushed.append(fleet.decode_announcement(m.payload).version)

        cloud_conn.subscribe(wire.model_topic("car"), on_car, qos=1)
        res2 = svc.run_once()
        assert res2 is not None and res2["promoted"] == ["car"]
        v2 = svc.registry.current("car")
        assert v2 != v1 and "no tails today" in res2["tails"]["error"]
        assert svc.registry.tails_path(v2) is None and "tails" not in svc.registry.get("car", v2)
        assert wait_for(lambda: v2 in pushed, 5)  # the car model went out without tails
        assert any("no tails today" in e for e in svc.errors)
        assert wait_for(lambda: runs[-1].get("run") == res2["run"], 5) and runs[-1]["tails"]["error"]
        report = store.get(res2["report"]).decode()
        assert "no tails today" in report
        time.sleep(0.3)
        assert v2 not in edge.tails.sets and v1 in edge.tails.sets  # what it had, it keeps
    finally:
        if car_client is not None:
            car_client.close()
        edge.stop()
        # the retained pushes this test leaves are wiped by conftest's teardown
        cloud_conn.close()


@pytest.mark.parametrize("payload", [b"not json", b'{"v":1,"target":"tails"}'])
def test_a_malformed_tails_announcement_is_logged_not_fatal(payload, caplog):
    from types import SimpleNamespace

    from edge_node.tailpush import TailsFollower

    follower = TailsFollower(TailShelf(), SimpleNamespace(cfg=None), "edge-x", None)
    with caplog.at_level(logging.ERROR):
        follower.on_announcement(SimpleNamespace(payload=payload, topic=wire.TAILS_TOPIC))
    assert "tails announcement refused" in caplog.text and not follower._busy
