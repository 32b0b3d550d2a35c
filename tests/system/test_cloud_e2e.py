"""Done-when of issue 7, on one machine through a real Mosquitto: a simulated car drives and
records, uploads; the cloud retrains (tiny settings), gates and pushes; the car swaps to
the new version mid-drive without missing a frame; a tampered package is refused; a
rollback puts the previous version back on the car."""

from __future__ import annotations

import shutil
import threading
import time
import zipfile

import numpy as np

from cloud_trainer.push import announce, push_current
from cloud_trainer.retrain import RetrainConfig
from cloud_trainer.service import CloudService
from cloud_trainer.store import DirStore
from edgepilot.config import BrokerConfig
from edgepilot.drive.loop import DriveLoop, LoopOptions
from edgepilot.drive.slot import ModelSlot
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.model.package import load_private_key, make_keys
from edgepilot.model.train import TrainConfig, train
from edgepilot.mqtt import Connection
from edgepilot.schema.log import SessionMeta
from edgepilot.sim.drive import expert_drive, open_log
from edgepilot.sim.expert import Expert
from edgepilot.sim.parts import ExpertUser, SimActuator, SimSource
from edgepilot.sim.tracks import load_track
from edgepilot.sim.world import SimWorld
from tests.helpers import wait_for
from vehicle.updates import ModelUpdater
from vehicle.upload import Uploader


def drive(world: SimWorld, slot: ModelSlot, log_dir, mode: str, rate_hz: float | None, max_frames: int):
    rec = LogWriter(
        log_dir,
        SessionMeta(session=log_dir.name, created=time.time(), source="sim", car_id="car-e2e"),
        block=True,
    )
    loop = DriveLoop(
        SimSource(world),
        SimActuator(world),
        model=slot,
        user=ExpertUser(Expert(world.track, seed=1), world),
        recorder=rec,
        options=LoopOptions(mode=mode, record=True, rate_hz=rate_hz, car_id="car-e2e"),
    )
    return loop, rec


def test_drive_upload_retrain_gate_push_swap_tamper_rollback(broker, tmp_path, monkeypatch):
    priv, pub = make_keys(tmp_path / "keys")
    monkeypatch.chdir(tmp_path)  # the model code trusts ./keys/*.pub (teacher loading)
    key = load_private_key(priv)
    store = DirStore(tmp_path / "store")

    # Data the fleet sent earlier, and the model the car runs today (v0).
    track = load_track("oval")
    seeds = []
    for n in (1, 2):
        w = SimWorld(track, seed=n, start_index=n * 40)
        seeds.append(str(store.local_dir(f"logs/sim/seed-{n}")))
        expert_drive(
            w,
            laps=99,
            max_seconds=6,
            expert=Expert(track, perturb=0.3, seed=n),
            writer=open_log(seeds[-1], w, {}),
        )
    v0 = train(seeds, tmp_path / "v0.eppkg", TrainConfig(epochs=1, max_frames=160, threads=1), key=str(priv))

    cfg = RetrainConfig(
        epochs=1,
        edge_epochs=1,
        max_frames=200,
        eval_frames=100,
        eval_seconds=4,
        margin_mae=1.0,
        margin_autonomy=1.0,
        margin_cte_m=10.0,
        latency_budget_ms=100.0,
    )
    cloud_conn = Connection(BrokerConfig(url=broker.url), "cloud-e2e")
    cloud_conn.start()
    svc = CloudService(
        store,
        cloud_conn,
        cfg,
        min_frames=100,
        trusted_keys=[str(pub)],
        announce_key=str(priv),
        key=str(priv),
        workdir=tmp_path / "work",
        group="e2e",
    )
    svc.registry.add("car", v0["package"])
    svc.registry.promote("car", v0["version"])
    svc.start()
    push_current(cloud_conn, svc.registry, "car", key=key)

    car_conn = Connection(BrokerConfig(url=broker.url), "car-e2e")
    car_conn.start()
    slot = ModelSlot(trusted_keys=[str(pub)])
    updater = ModelUpdater(car_conn, slot, "car-e2e", tmp_path / "car-cache", trusted_keys=[str(pub)], announce_keys=[str(pub)])
    parked = threading.Event()  # while the car is parked, its idle loop still swaps models
    parked.set()
    stop_tick = threading.Event()

    def idle_tick() -> None:
        while not stop_tick.is_set():
            if parked.is_set():
                slot.maybe_swap()
            time.sleep(0.005)

    ticker = threading.Thread(target=idle_tick, daemon=True)
    ticker.start()
    updater.start()
    assert updater.wait_for(v0["version"], 15).state == "running"
    assert slot.version == v0["version"]
    try:
        # 1. the car drives (the expert at the wheel) and records
        parked.clear()
        world = SimWorld(track, seed=4)
        loop, rec = drive(world, slot, tmp_path / "rec" / "drive-1", "user", None, 200)
        loop.run(max_frames=200)
        rec.close()
        # 2. uploads it; the cloud has enough new frames and retrains on its own
        res = Uploader(car_conn, "car-e2e").upload(tmp_path / "rec" / "drive-1", progress=False)
        assert res.sent_bytes == res.bytes and res.log.startswith("logs/car-e2e/")

        # 3. meanwhile the car drives on its model; the new version arrives mid-drive
        world2 = SimWorld(track, seed=5)
        # it drives until the swap (below): the frame cap and the wait only bound a failure,
        # and a busy machine retrains slower
        loop2, rec2 = drive(world2, slot, tmp_path / "rec" / "drive-2", "local", 40.0, 40_000)
        th = threading.Thread(target=loop2.run, kwargs={"max_frames": 40_000}, daemon=True)
        th.start()
        deadline = time.monotonic() + 900
        while not svc.runs and time.monotonic() < deadline and th.is_alive():
            time.sleep(0.1)
        assert svc.runs, f"no retraining run: {svc.errors}"
        run = svc.runs[0]
        assert "car" in run["promoted"] and run["targets"]["car"]["gate"]["passed"]
        v1 = svc.registry.current("car")
        assert v1 != v0["version"] and svc.registry.get("car", v1)["gate"]["passed"]
        assert "logs/car-e2e/drive-1" in svc.registry.get("car", v1)["data"]  # trained on the upload
        # the car model validated (calibrated its exits) on the run's held-out sessions, and
        # trained on every other one
        from edgepilot.model.package import read_manifest

        held = sorted(str(store.local_dir(k)) for k in run["heldout"])
        src = read_manifest(svc.registry.source_path(v1))["training"]
        assert sorted(src["val_logs"]) == held
        assert len(src["logs"]) == len(run["train"]) and src["val_sessions"]
        # and so did the edge model (edge_val_heldout)
        edge = read_manifest(svc.registry.package_path("edge", run["edge_train"]["version"]))["training"]
        assert sorted(edge["val_logs"]) == held and len(edge["logs"]) == len(run["train"])
        assert updater.wait_for(v1, 120).state == "running"
        n_at_swap = loop2.stats.frames
        while loop2.stats.frames < n_at_swap + 20 and th.is_alive():
            time.sleep(0.02)
        loop2.stop()
        th.join(10)
        rec2.close()
        parked.set()
        recs = LogReader(tmp_path / "rec" / "drive-2").records()
        assert [r.i for r in recs] == list(range(len(recs))) == list(range(loop2.stats.frames))
        assert np.allclose(np.diff([r.t for r in recs]), world2.dt)  # no simulated step skipped
        versions = [r.model_version for r in recs]
        changes = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
        assert versions[0] == v0["version"] and versions[-1] == v1 and len(changes) == 1
        assert store.exists(run["report"]) and store.exists(run["report"].replace("report.md", "compare.png"))
        # the run's training curves and the gate's drives, candidate and current, kept beside it
        # (the dashboard serves them from the store)
        for name in ("curve-car", "curve-edge", "trajectory-car-candidate-oval", "trajectory-car-current-oval"):
            assert store.get(f"runs/{run['run']}/{name}.png")[:8] == b"\x89PNG\r\n\x1a\n", name

        # 4. a tampered package (announced with a correct hash and a valid cloud signature)
        bad = tmp_path / "bad.eppkg"
        shutil.copy(svc.registry.package_path("car", v1), bad)
        with zipfile.ZipFile(bad) as z:
            members = {n: z.read(n) for n in z.namelist()}
        # an ONNX package (what the cloud pushes to cars) has its graphs, a torch one weights
        victim = "weights.pt" if "weights.pt" in members else "onnx/segment0.onnx"
        wts = bytearray(members[victim])
        wts[-100] ^= 0x55
        members[victim] = bytes(wts)
        with zipfile.ZipFile(bad, "w") as z:
            for n, b in members.items():
                z.writestr(n, b)
        announce(cloud_conn, "car", bad, key=key, version="tampered-1")
        st = updater.wait_for("tampered-1", 15)
        assert st.state == "refused" and st.version == v1 and "mismatch" in st.error
        assert slot.version == v1

        # 5. rollback: the previous version goes back on the car
        svc.registry.rollback("car")
        push_current(cloud_conn, svc.registry, "car", key=key, rollback=True)
        assert updater.wait_for(v0["version"], 15).state == "running"
        assert slot.version == v0["version"]
        # the car's status report reaches the cloud's fleet view
        assert wait_for(lambda: svc.fleet.get("car-e2e", {}).get("version") == v0["version"], 10), svc.fleet
    finally:
        stop_tick.set()
        svc.stop()
        car_conn.close()
        cloud_conn.close()
