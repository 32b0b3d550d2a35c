"""The car's split plan from edge health: a real edge node's retained health tells the car's
offload client which split points it has tails for; the drive loop sends the chosen
split's features (an earlier stage than the exit that answered, when that is the plan),
falls back to frame mode for a car model no edge has tails for, follows a hot-swap, and
re-plans when the edge's health changes. Plus the planner's multi-node rules, offline."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edge_node.tails import TailShelf
from edgepilot.config import BrokerConfig
from edgepilot.drive.loop import DriveLoop, LoopOptions
from edgepilot.drive.parts import NullActuator
from edgepilot.drive.replay import ReplaySource
from edgepilot.drive.slot import ModelSlot, load_autopilot
from edgepilot.model.tail import TailSet, train_tails
from edgepilot.offload.client import OffloadClient
from edgepilot.offload.healthplan import HealthPlanner
from edgepilot.offload.planner import FRAME
from edgepilot.schema import wire
from tests.helpers import wait_for

torch.set_num_threads(1)


def all_hard(model):
    """Every frame runs to the last exit and is hard there: every frame is offloaded."""
    model.exit_thresholds = [float("inf")] * (model.n_exits - 1)
    model.offload_thresholds = [2.0] * model.n_exits
    return model


def steps(loop: DriveLoop, n: int, answers: list) -> list:
    """``n`` frames through the loop; the edge answers that drove them."""
    start = len(answers)
    for _ in range(n):
        assert loop.step()
    return answers[start:]


def test_the_car_plans_from_edge_health_falls_back_and_follows_a_swap(
    broker, tiny_model, tiny_int8, sample_logs
):
    car_a = all_hard(load_autopilot(tiny_model))
    car_b = all_hard(load_autopilot(tiny_int8))  # another version: the edge has no tails for it yet
    car_b.warmup()
    assert car_a.version != car_b.version
    tails_a = train_tails(car_a, sample_logs, epochs=1, width=16)
    splits = sorted(tails_a.tails)
    assert len(splits) >= 2
    # make the earliest split the most accurate: the plan must send it, though every frame
    # leaves at the last exit (the loop hands the client every stage's output)
    for k, t in tails_a.tails.items():
        t.val_mae = t.hard_mae = 0.01 if k == splits[0] else 0.2
    cfg = BrokerConfig(url=broker.url)
    edge = EdgeService(
        cfg,
        load_edge_model("builtin:pilotnet"),
        node_id="edge-plan",
        tails=TailShelf(tails_a),
        follow_tails=False,
        health_every_s=0.2,
    ).start()
    client = OffloadClient(cfg, "car-plan", deadline_s=2.0)  # split mode, planned from health
    client.start()
    answers: list = []
    slot = ModelSlot(car_a)
    loop = DriveLoop(
        ReplaySource(sample_logs[0], loop=True),
        NullActuator(),
        model=slot,
        offload=client,
        options=LoopOptions(mode="local", deadline_s=2.0),  # generous: a loaded machine
        on_frame=lambda f, info: answers.append(info),
    )
    try:
        # the retained health arrives; the first hard frame tells the client the model
        assert wait_for(lambda: "edge-plan" in client.plan.summary()["nodes"])
        got = steps(loop, 6, answers)
        plan = client.plan.summary()
        assert plan["car_model"] == car_a.version and plan["active"]
        assert plan["splits"] == splits and plan["choice"] == splits[0]
        assert all(i["edge_used"] for i in got)
        assert client.counts["split"] == 6 and client.counts["errors"] == 0
        assert set(edge.tails.tail_ms) == {(car_a.version, splits[0])}  # exactly the planned tail ran
        assert any(ms > 0 for ms in client.plan.planner.car_stage_ms)  # the car's own stage times
        frame_row = next(r for r in plan["table"] if r["split"] == "frame")
        assert not frame_row["chosen"]

        # hot-swap to a version no edge has tails for: frame mode, at once
        slot.offer(car_b)
        got = steps(loop, 6, answers)
        plan = client.plan.summary()
        assert plan["car_model"] == car_b.version and plan["splits"] == [] and plan["choice"] == "frame"
        assert client.counts["split"] == 6 and client.counts["errors"] == 0  # JPEGs, never refused
        assert all(i["edge_used"] for i in got) and not client.sends_features
        assert client.model_version == car_b.version

        # the edge gains tails for the new version: its next health re-plans the car
        tails_b = train_tails(car_b, sample_logs, epochs=1, width=16)
        edge.tails.add(tails_b)
        assert wait_for(lambda: client.plan.summary()["choice"] not in (None, "frame"))
        assert client.plan.summary()["splits"] == sorted(tails_b.tails)
        got = steps(loop, 6, answers)
        assert client.counts["split"] == 12 and all(i["edge_used"] for i in got)
        assert any(v == car_b.version for v, _ in edge.tails.tail_ms)

        # the edge goes offline: nothing left to plan on, the client's plain split mode again
        edge.stop()
        assert wait_for(lambda: not client.plan.active, 5) and client.planner is None
    finally:
        client.close()
        edge.stop()


def health(
    node: str,
    version: str,
    stages: dict,
    status: str = "up",
    p50: float | None = 3.0,
    mae: float | None = None,
):
    h = wire.EdgeHealth(
        node=node,
        status=status,
        latency_p50_ms=p50,
        model_mae=mae,
        tails=[{"car_model": version, "stages": stages}] if stages else [],
    )
    return SimpleNamespace(payload=wire.encode_health(h), topic=wire.health_topic(node))


def st(mae: float, ms: float | None = None, shape=(16, 9, 25)) -> dict:
    return {"shape": list(shape), "val_mae": mae, "compute_ms": ms}


def test_a_split_point_counts_only_when_every_live_node_serves_it():
    hp = HealthPlanner(deadline_ms=33.0, stale_s=0.5)
    assert not hp.active and hp.describe() == "no edge heard of yet"
    hp.follow("car-v1")
    assert not hp.active  # no edge heard of: the client's plain split mode
    hp.on_health(health("e1", "car-v1", {"0": st(0.05, 0.4), "2": st(0.08, 0.2, (64, 3, 7))}))
    assert hp.active and hp.splits == [0, 2] and hp.planner.choice == 0
    # a second node of the group without stage 0: a request could land on it
    hp.on_health(health("e2", "car-v1", {"2": st(0.08, 0.9, (64, 3, 7))}))
    assert hp.splits == [2] and hp.planner.choice == 2
    edge_ms = {c.stage: c.edge_ms for c in hp.planner.candidates}
    assert edge_ms[2] == 0.9 and edge_ms[FRAME] == 3.0  # the slower node counts; frame: its p50
    wire_b = {c.stage: c.wire_bytes for c in hp.planner.candidates}
    assert wire_b[2] == pytest.approx(64 * 3 * 7 + 200)  # 8-bit size until the car sends one
    hp.note_sent(2, 700)
    hp.refresh()
    assert {c.stage: c.wire_bytes for c in hp.planner.candidates}[2] == 700
    # e2 goes offline (its Last Will): stage 0 is back
    hp.on_health(health("e2", "car-v1", {}, status="offline"))
    assert hp.splits == [0, 2] and hp.planner.choice == 0
    # another car model version: nobody has tails for it
    assert hp.follow("car-v2")
    assert hp.active and hp.splits == [] and hp.planner.choice == FRAME
    assert [c.stage for c in hp.planner.candidates] == [FRAME]
    hp.follow("car-v1")
    # e1 falls silent (no health for stale_s): nothing left to plan on
    time.sleep(0.6)
    hp.on_health(SimpleNamespace(payload=b"junk", topic="x"))  # ignored
    hp.refresh()
    assert not hp.active and hp.splits == []


def test_frame_mode_wins_when_the_edge_model_is_more_accurate_than_the_tails():
    """Frame mode's accuracy is the edge model's ``model_mae`` from health: the more
    accurate way that fits the deadline wins; an unknown MAE ranks below every known one,
    and across nodes the worst counts (any node of the group may answer)."""
    hp = HealthPlanner(deadline_ms=33.0)
    hp.follow("car-v1")
    hp.on_health(health("e1", "car-v1", {"2": st(0.03, 0.3, (64, 3, 7))}, mae=None))
    assert hp.planner.choice == 2  # the builtin says nothing of its accuracy
    hp.on_health(health("e1", "car-v1", {"2": st(0.03, 0.3, (64, 3, 7))}, mae=0.02))
    assert hp.planner.choice == FRAME
    assert {c.stage: c.mae for c in hp.planner.candidates}[FRAME] == 0.02
    hp.on_health(health("e2", "car-v1", {"2": st(0.03, 0.3, (64, 3, 7))}, mae=None))
    assert hp.planner.choice == 2  # e2's model is of unknown accuracy
    hp.on_health(health("e2", "car-v1", {"2": st(0.03, 0.3, (64, 3, 7))}, mae=0.05))
    assert hp.planner.choice == 2  # e2's model is worse than the tails
    hp.on_health(health("e2", "car-v1", {"2": st(0.03, 0.3, (64, 3, 7))}, mae=0.025))
    assert hp.planner.choice == FRAME


def test_a_tail_is_ranked_by_its_error_on_the_frames_the_car_offloads():
    """A tail reads the car's own features: on the frames the car marks hard, the ones it
    sends, it can be far worse than over all validation frames (the demo's tail after stage
    2: 0.0237 over all, 0.0387 on the hard ones, against the edge model's 0.0277; it drove
    the car off twice). Its ``hard_mae`` ranks it; tails without one, their ``val_mae``."""
    hp = HealthPlanner(deadline_ms=33.0)
    hp.follow("car-v1")
    tail = {**st(0.0237, 0.3, (64, 3, 7)), "hard_mae": 0.0387}
    hp.on_health(health("e1", "car-v1", {"2": tail}, mae=0.0277))
    assert hp.planner.choice == FRAME
    assert {c.stage: c.mae for c in hp.planner.candidates}[2] == 0.0387
    hp.on_health(health("e1", "car-v1", {"2": {**tail, "hard_mae": 0.025}}, mae=0.0277))
    assert hp.planner.choice == 2  # better than the edge model on the frames it would answer
    hp.on_health(health("e1", "car-v1", {"2": st(0.0237, 0.3, (64, 3, 7))}, mae=0.0277))
    assert hp.planner.choice == 2  # an older tail set: its MAE over all frames


def test_training_records_each_tails_error_on_the_hard_frames(tiny_model, sample_logs, tmp_path):
    """``hard_mae`` is measured on the validation frames the car marks hard, and survives
    the file the cloud pushes (an edge node reports what it loaded)."""
    car = all_hard(load_autopilot(tiny_model))
    ts = train_tails(car, sample_logs, epochs=1, width=16)
    back = TailSet.load(ts.save(tmp_path / "tails.pt"))
    for k, t in ts.tails.items():
        assert t.hard_mae is not None and t.hard_mae == back.tails[k].hard_mae
        assert t.hard_mae == pytest.approx(t.val_mae, abs=1e-4)  # every frame is hard here
    car_easy = load_autopilot(tiny_model)
    car_easy.offload_thresholds = [-1.0] * car_easy.n_exits  # no frame is hard
    assert all(t.hard_mae is None for t in train_tails(car_easy, sample_logs, epochs=1, width=16).tails.values())


def test_an_edge_node_puts_its_packaged_models_accuracy_in_its_health(tiny_model):
    from edge_node.model import model_mae

    pkg = load_edge_model(tiny_model)
    mae = pkg.manifest["metrics"]["val_steering_mae"]
    cfg = BrokerConfig(url="mqtt://127.0.0.1:1")  # never connected: health() is local
    h = EdgeService(cfg, pkg, node_id="e-mae").health()
    assert h.model_mae == pytest.approx(mae) and model_mae(pkg) == pytest.approx(mae)
    assert wire.decode_health(wire.encode_health(h)).model_mae == h.model_mae
    assert EdgeService(cfg, load_edge_model("builtin:pilotnet"), node_id="e-b").health().model_mae is None
