"""Split mode end to end (a real trained car package, tails trained on its features, a real
Mosquitto and edge node) and the split-point planner."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest
import torch

from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edgepilot.config import BrokerConfig
from edgepilot.model.data import decode, load_samples
from edgepilot.model.runtime import Autopilot
from edgepilot.model.tail import TailSet, car_features, split_points, train_tails
from edgepilot.offload.client import OffloadClient
from edgepilot.offload.planner import FRAME, Candidate, SplitPlanner, from_health
from edgepilot.schema import wire
from tests.machine import Interval

torch.set_num_threads(1)


# -- planner -----------------------------------------------------------------------------


def planner(**kw) -> SplitPlanner:
    # stage 0 features are big and the best; stage 2 small and worse; frame mode in between
    cands = [
        Candidate(0, wire_bytes=3000, edge_ms=1.5, encode_ms=0.05, mae=0.05),
        Candidate(2, wire_bytes=600, edge_ms=0.3, encode_ms=0.03, mae=0.08),
        Candidate(FRAME, wire_bytes=5000, edge_ms=2.5, mae=0.06),
    ]
    return SplitPlanner(cands, car_stage_ms=[0.3, 0.2, 0.2], **kw)


def test_planner_prefers_accuracy_within_the_deadline_and_rechooses_when_the_link_changes():
    p = planner(rtt_ms=1.0, bandwidth_mbps=100.0, deadline_ms=33.0)
    assert p.choice == 0  # everything fits: the most accurate
    # the car's stages are sunk (a hard frame is known at the final exit) ...
    assert p.predict_ms(p.candidates[0]) == pytest.approx(0.05 + 1.0 + 3000 * 8 / 1e5 + 1.5)
    # ... unless it decides after stage 0: then splitting after stage 2 costs stages 1-2
    p2 = planner(sunk_stages=1)
    assert p2.predict_ms(p2.candidates[1]) - p.predict_ms(p.candidates[1]) == pytest.approx(0.4)
    # a slow link (0.5 Mbit/s): 3000 B = 48 ms, 5000 B = 80 ms; only stage 2 fits 33 ms
    assert p.update(bandwidth_mbps=0.5)
    assert p.choice == 2 and p.changes == 1
    assert not p.update(bandwidth_mbps=0.5)  # nothing new, no change
    # a longer round trip that nothing fits: the fastest anyway
    p.update(rtt_ms=40.0)
    assert p.choice == 2
    p.update(rtt_ms=1.0, bandwidth_mbps=100.0)
    assert p.choice == 0
    # the edge got slow at the stage-0 tail (overloaded): the deadline decides
    p.update(edge_ms={0: 40.0})
    assert p.choice == FRAME
    assert [r["chosen"] for r in p.table()] == [False, False, True]


def test_planner_learns_rtt_and_bandwidth_from_answers():
    p = planner(rtt_ms=0.1, bandwidth_mbps=1000.0, deadline_ms=33.0)
    assert p.choice == 0
    # answers on a 0.5 Mbit/s link with a 2 ms round trip: link_ms = 2 + bytes * 8 / 500
    for i in range(40):
        n = (600, 3000, 5000)[i % 3]
        assert not p.observe(n, float("nan"))  # junk is ignored
        p.observe(n, 2.0 + n * 8 / 500)
    assert p.bandwidth_mbps == pytest.approx(0.5, rel=0.02)
    assert p.rtt_ms == pytest.approx(2.0, abs=0.05)
    assert p.choice == 2 and p.changes == 1  # only the small stage-2 features fit now
    # same-size answers only move the round trip (the bandwidth cannot be fitted)
    q = planner(rtt_ms=0.1, bandwidth_mbps=100.0)
    for _ in range(10):
        q.observe(3000, 5.0)
    assert q.bandwidth_mbps == 100.0 and q.rtt_ms == pytest.approx(5.0 - 0.24)


# -- end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def car(tiny_model):
    return Autopilot.load(tiny_model)


@pytest.fixture(scope="module")
def tails(car, sample_logs, tmp_path_factory):
    ts = train_tails(car, sample_logs, epochs=2, width=16)
    path = ts.save(tmp_path_factory.mktemp("tails") / "tails.pt")
    return TailSet.load(path)


def test_tails_cover_every_split_point_and_reload_identically(car, tails, sample_logs):
    assert sorted(tails.tails) == split_points(car)
    assert tails.car_version == car.version
    frames = [decode(s.jpeg) for s in load_samples(sample_logs).samples[:8]]
    feats = car_features(car, frames)
    assert sorted(feats) == split_points(car)
    for k, t in tails.tails.items():
        assert t.shape == feats[k].shape[1:]
        assert t.val_mae is not None and 0 <= t.val_mae <= 1
        s, th, c = tails.infer(k, feats[k])
        assert s.shape == (8,) and np.all(np.abs(s) <= 1) and np.all((c >= 0) & (c <= 1))


def test_split_mode_round_trip_and_refusals(broker, car, tails, sample_logs):
    cfg = BrokerConfig(url=broker.url)
    edge = EdgeService(cfg, load_edge_model("builtin:pilotnet"), node_id="edge-split", tails=tails).start()
    client = OffloadClient(cfg, "car-split", deadline_s=1.0, mode="split", model_version=car.version)
    client.start()
    try:
        img = decode(load_samples(sample_logs).samples[3].jpeg)
        dec = car.infer(img, force_final=True)
        assert client.submit(1, None, features=dec.features, stage=dec.exit)
        ans = client.poll(1, time.monotonic() + 2.0)
        assert ans is not None and ans.model == tails.version and -1 <= ans.steering <= 1
        # the same answer as the tail run locally on the same 8-bit features
        body, meta = wire.pack_features(dec.features.numpy(), dec.exit)
        want = tails.infer(dec.exit, wire.unpack_features(body, meta)[None])[0][0]
        assert ans.steering == pytest.approx(float(want), abs=1e-5)
        assert client.counts["split"] == 1
        # the node's health says what it serves and what a split costs it (for a planner)
        h = wire.decode_health(wire.encode_health(edge.health()))
        (mine,) = h.tails
        assert mine["car_model"] == car.version
        assert sorted(mine["stages"]) == [str(k) for k in sorted(tails.tails)]
        served = mine["stages"][str(dec.exit)]
        assert served["shape"] == list(dec.features.shape[1:]) and served["compute_ms"] > 0
        assert all(v["compute_ms"] is None for k, v in mine["stages"].items() if k != str(dec.exit))
        # ... which, with the car's own numbers, is a planner
        p = from_health(mine, [0.3] * car.n_exits, {dec.exit: float(len(body))}, deadline_ms=33.0)
        assert p.choice == dec.exit and p.candidates[0].edge_ms == served["compute_ms"]
        # features from another car model version: an error reply, not an answer
        assert client.submit(2, None, features=dec.features, stage=dec.exit, model="other-model")
        assert client.poll(2, time.monotonic() + 0.5) is None
        deadline = time.monotonic() + 2
        while client.counts["errors"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.counts["errors"] == 1
        assert any(r.startswith("features from car model") for r in edge.metrics.error_reasons)
        # frame mode through the same node still works (the JPEG, the edge's own model)
        jpeg = cv2.imencode(".jpg", img)[1].tobytes()
        frame_client = OffloadClient(cfg, "car-frame", deadline_s=1.0)
        frame_client.start()
        assert frame_client.submit(3, jpeg)
        got = frame_client.poll(3, time.monotonic() + 2.0)
        frame_client.close()
        assert got is not None and got.model == edge.model.version
    finally:
        client.close()
        edge.stop()


def test_a_node_without_tails_refuses_features(broker, car):
    cfg = BrokerConfig(url=broker.url)
    edge = EdgeService(cfg, load_edge_model("builtin:pilotnet"), node_id="edge-notails").start()
    # without the health-fed plan (which would send frames from the start: test_split_plan.py),
    # the error reply is what teaches the car
    client = OffloadClient(
        cfg, "car-notails", deadline_s=1.0, mode="split", model_version=car.version, plan_from_health=False
    )
    client.start()
    try:
        dec = car.infer(np.zeros((120, 160, 3), np.uint8), force_final=True)
        assert client.submit(1, None, features=dec.features, stage=dec.exit)
        with Interval([os.getpid(), broker.proc.pid]) as polled:
            assert client.poll(1, time.monotonic() + 5.0) is None
        # the error reply ends the wait: no waiting out the deadline (on the clock that stops
        # while the machine keeps this process's and the broker's threads off a CPU)
        assert polled.own_s < 2.0, polled
        deadline = time.monotonic() + 2
        while edge.metrics.errors < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert edge.metrics.errors == 1 and edge.metrics.n_answered == 0
        # the car falls back to frames for a while (the loop encodes a JPEG again) ...
        while client.sends_features and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not client.sends_features
        jpeg = cv2.imencode(".jpg", np.zeros((120, 160, 3), np.uint8))[1].tobytes()
        assert client.submit(2, jpeg, features=dec.features, stage=dec.exit)
        ans = client.poll(2, time.monotonic() + 2.0)
        assert ans is not None and ans.model == edge.model.version and client.counts["split"] == 1
        # ... and tries features again after it
        client._split_off_until = 0.0
        assert client.sends_features
    finally:
        client.close()
        edge.stop()


def test_a_bad_tails_file_is_a_clear_error(tmp_path, tails):
    from edgepilot import EdgepilotError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(EdgepilotError, match="unreadable"):
        TailSet.load(bad)
    k = min(tails.tails)
    with pytest.raises(EdgepilotError, match="takes"):
        tails.infer(k, np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(EdgepilotError, match="no tail"):
        tails.infer(99, np.zeros((1, 1, 2, 2), np.float32))


def test_the_drive_loop_offloads_features_and_drives_on_the_tails_answers(
    broker, tiny_model, tails, sample_logs
):
    """The onboard loop in replay, every frame hard: in split mode it sends the features of
    the exit that answered (no JPEG), and the edge's tail answers steer the car."""
    from edgepilot.drive.loop import DriveLoop, LoopOptions
    from edgepilot.drive.parts import NullActuator
    from edgepilot.drive.replay import ReplaySource
    from edgepilot.drive.slot import ModelSlot, load_autopilot

    model = load_autopilot(tiny_model)
    model.exit_thresholds = [float("inf")] * (model.n_exits - 1)  # every frame to the last exit ...
    model.offload_thresholds = [2.0] * model.n_exits  # ... and hard there
    cfg = BrokerConfig(url=broker.url)
    edge = EdgeService(cfg, load_edge_model("builtin:pilotnet"), node_id="edge-loop", tails=tails).start()
    # split mode (the default); a deadline generous for a busy machine: this test is about
    # what goes out and what steers, not how fast the edge answers
    client = OffloadClient(cfg, "car-loop", deadline_s=5.0)
    client.start()
    infos: list[dict] = []
    try:
        loop = DriveLoop(
            ReplaySource(sample_logs[0]),
            NullActuator(),
            model=ModelSlot(model),
            offload=client,
            options=LoopOptions(mode="local", deadline_s=5.0),
            on_frame=lambda f, info: infos.append(info),
        )
        loop.run()
        res = loop.result()
    finally:
        client.close()
        edge.stop()
    assert res["offload_rate"] == 1.0 and res["edge_used_rate"] > 0.9
    assert client.counts["split"] == client.counts["sent"] == len(infos)
    assert edge.metrics.n_answered == client.counts["answered"] and edge.metrics.errors == 0


def test_a_tails_directory_serves_tails_saved_after_the_node_started(broker, car, tails, tmp_path):
    """A new car model's tails, dropped into the node's tails directory, are served without
    a restart (the node looks again when a request names a version it does not have)."""
    from edge_node.tails import TailShelf

    shelf = TailShelf(tmp_path, rescan_s=0.05)  # empty so far
    (tmp_path / "junk.pt").write_bytes(b"not tails")  # skipped with a warning, never fatal
    cfg = BrokerConfig(url=broker.url)
    edge = EdgeService(cfg, load_edge_model("builtin:pilotnet"), node_id="edge-shelf", tails=shelf).start()
    client = OffloadClient(cfg, "car-shelf", deadline_s=1.0, model_version=car.version)
    client.start()
    try:
        dec = car.infer(np.zeros((120, 160, 3), np.uint8), force_final=True)
        assert client.submit(1, None, features=dec.features, stage=dec.exit)
        assert client.poll(1, time.monotonic() + 2.0) is None and client.counts["errors"] == 1
        tails.save(tmp_path / "for-this-car.pt")
        time.sleep(0.1)
        client._split_off_until = 0.0  # skip the client's back-off for the test
        assert client.submit(2, None, features=dec.features, stage=dec.exit)
        ans = client.poll(2, time.monotonic() + 2.0)
        assert ans is not None and ans.model == f"tail-{car.version}"
        assert [t["car_model"] for t in edge.health().tails] == [car.version]
    finally:
        client.close()
        edge.stop()
