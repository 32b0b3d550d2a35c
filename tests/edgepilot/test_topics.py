"""The table of topics (edgepilot/schema/topics.py) is the one truth: every topic the code
builds is a row of it, docs/protocol.md shows every row, and the secured broker's ACL for
each kind of client is exactly its rows (a car only under its own id; only edge nodes in
the edge's shared group)."""

from __future__ import annotations

import re

import pytest

from edgepilot.brokerauth import acls
from edgepilot.config import REPO_ROOT
from edgepilot.schema import fleet, wire
from edgepilot.schema.topics import PAYLOADS, TOPICS


def matches(topic: str) -> list[str]:
    """Rows whose pattern matches ``topic`` (a placeholder matches one level, or '+')."""
    out = []
    for t in TOPICS:
        rx = "^" + re.sub(r"<[a-z]+>", r"[^/]+", re.escape(t.full).replace(r"\<", "<").replace(r"\>", ">")) + "$"
        if re.match(rx, topic):
            out.append(t.pattern)
    return out


BUILT = [
    wire.infer_topic("car-1"),
    wire.reply_topic("car-1"),
    wire.health_topic("edge-1"),
    wire.INFER_FILTER,
    wire.HEALTH_FILTER,
    *(wire.model_topic(t) for t in wire.PUSH_TARGETS),
    *(fleet.chunk_topic(t, "v1", 3) for t in wire.PUSH_TARGETS),
    *(fleet.chunk_filter(t, "v1") for t in wire.PUSH_TARGETS),
    fleet.car_model_topic("car-1"),
    fleet.CAR_MODEL_FILTER,
    fleet.car_telemetry_topic("car-1"),
    fleet.CAR_TELEMETRY_FILTER,
    *(fleet.upload_topic("car-1", k) for k in ("offer", "chunk", "ack", "status")),
    fleet.UPLOAD_OFFER_FILTER,
    fleet.UPLOAD_CHUNK_FILTER,
    fleet.CLOUD_RETRAIN_TOPIC,
    fleet.CLOUD_RUNS_TOPIC,
    fleet.CLOUD_MODELS_TOPIC,
    fleet.CLOUD_MODELS_RESULT_TOPIC,
]


@pytest.mark.parametrize("topic", BUILT)
def test_every_topic_the_code_builds_is_one_row_of_the_table(topic):
    assert len(matches(topic)) == 1, (topic, matches(topic))


def test_the_protocol_page_shows_every_row_and_every_payload_has_one_codec():
    doc = (REPO_ROOT / "docs" / "protocol.md").read_text()
    for t in TOPICS:
        assert f"`{t.full}`" in doc, t.full
        assert t.payload in PAYLOADS or t.payload in ("raw package bytes", "any (ignored)"), t.payload


def allowed(role: str, own: str, acltype: str, topic: str) -> bool:
    return any(a["acltype"] == acltype and a["topic"] == topic for a in acls(role, own))


def test_each_role_gets_exactly_its_rows():
    R = wire.ROOT
    assert allowed("car", "car-1", "publishClientSend", f"{R}/car/car-1/infer")
    assert not allowed("car", "car-1", "publishClientSend", f"{R}/car/car-2/infer")
    assert not allowed("car", "car-1", "publishClientSend", f"{R}/car/+/infer")
    assert allowed("car", "car-1", "subscribePattern", f"{R}/car/car-1/reply")
    assert not any("$share" in a["topic"] for a in acls("car", "car-1"))  # no shared group for cars
    assert not any(a["topic"].startswith(f"{R}/models") and a["acltype"] == "publishClientSend" for a in acls("car", "car-1"))
    assert allowed("edge", "edge-1", "subscribePattern", f"$share/edge/{R}/car/+/infer")
    assert allowed("edge", "edge-1", "publishClientSend", f"{R}/car/+/reply")
    assert allowed("edge", "edge-1", "publishClientSend", f"{R}/edge/edge-1/health")
    assert not allowed("edge", "edge-1", "publishClientSend", f"{R}/edge/edge-2/health")
    assert allowed("cloud", "cloud", "subscribePattern", f"$share/cloud/{R}/upload/+/offer")
    # the dashboard reads; what it may publish is one request the cloud checks, never a model
    sends = [a["topic"] for a in acls("dashboard", "dash") if a["acltype"] == "publishClientSend"]
    assert sends == [fleet.CLOUD_MODELS_TOPIC]
    assert allowed("dashboard", "dash", "subscribePattern", fleet.CAR_TELEMETRY_FILTER)
    assert allowed("cloud", "cloud", "subscribePattern", f"$share/cloud/{fleet.CLOUD_MODELS_TOPIC}")
    assert not allowed("car", "car-1", "publishClientSend", fleet.CLOUD_MODELS_TOPIC)
