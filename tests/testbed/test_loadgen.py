"""The lean load generator (testbed.loadgen) against a real Mosquitto and edge node."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edgepilot.config import BrokerConfig
from edgepilot.schema import wire
from testbed.loadgen import _Car, _read_packets, _request_parts, bench_frame, saturate


def test_request_packet_is_what_paho_would_send():
    """Our hand-built PUBLISH must decode (with paho's own parser) to the car's request:
    topic, Response Topic, Correlation Data and the payload byte for byte."""
    payload = wire.encode_request(wire.InferRequest("car-7", 3, b"\xff\xd8jpeg", sent=0.0, budget_ms=50.0))
    head, tail = _request_parts("car-7", payload)
    packet = head + (42).to_bytes(8, "big") + tail
    assert packet[0] == 0x30
    # skip the fixed header (type byte + remaining-length varint), then parse like paho does
    i = 1
    while packet[i] & 0x80:
        i += 1
    body = packet[i + 1 :]
    tlen = int.from_bytes(body[:2], "big")
    assert body[2 : 2 + tlen].decode() == wire.infer_topic("car-7")
    props = Properties(PacketTypes.PUBLISH)
    _, plen = props.unpack(body[2 + tlen :])
    assert props.ResponseTopic == wire.reply_topic("car-7")
    assert props.CorrelationData == (42).to_bytes(8, "big")
    assert body[2 + tlen + plen :] == payload


def test_reply_parser_handles_fragments_and_several_packets():
    """Replies arrive split across recv() calls and several per call: every one is
    counted once with its correlation, and a partial packet waits for its rest."""
    msgs = []
    for corr in (5, 6, 70000):
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr.to_bytes(8, "big")
        props.ResponseTopic = "x/y"
        topic = b"edgepilot/v1/car/c/reply"
        var = len(topic).to_bytes(2, "big") + topic + props.pack()
        body = var + b'{"v":1,"status":"ok"}'
        assert len(body) < 128
        msgs.append(bytes([0x30, len(body)]) + body)
    stream = b"".join(msgs)
    car = _Car(sock=None, head=b"", tail=b"")  # type: ignore[arg-type]
    got: list[int | None] = []
    for cut in range(0, len(stream), 7):  # feed 7 bytes at a time
        car.buf += stream[cut : cut + 7]
        _read_packets(car, got.append)
    assert got == [5, 6, 70000]
    assert car.buf == bytearray()


def test_saturate_counts_real_answers(broker):
    svc = EdgeService(
        BrokerConfig(url=broker.url),
        load_edge_model("builtin:pilotnet"),
        node_id="loadgen-edge",
        group="loadgen",
        batch_threads=2,
    ).start()
    try:
        frame = bench_frame()
        res = saturate(
            BrokerConfig(url=broker.url),
            lambda car: wire.encode_request(wire.InferRequest(car, 0, frame, sent=0.0, budget_ms=5000.0)),
            seconds=1.0,
            window=8,
            cars=2,
        )
    finally:
        svc.stop()
    # real answers, each one the edge sent (how many per second is the machine's: a figure,
    # `edgepilot bench offload --saturate`, docs/benchmarks.md)
    assert res["answered"] > 0 and res["answered_per_s"] > 0 and res["rtt_ms_p50"] > 0
    assert svc.metrics.n_answered >= res["answered"]
    assert svc.metrics.errors == 0
    # 8 requests in flight from 2 cars: batches form, and ran with 2 intra-op threads
    assert max(svc.metrics.batch_sizes) > 1
