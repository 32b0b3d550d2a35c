"""The wire schema: every message round-trips, and every malformed payload is a WireError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepilot.schema import wire

ids = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)


@given(
    car=ids,
    frame=st.integers(0, 2**40),
    body=st.binary(min_size=1, max_size=3000),
    budget=st.one_of(st.none(), st.floats(0, 1e4)),
)
def test_request_round_trip(car, frame, body, budget):
    req = wire.InferRequest(car=car, frame=frame, body=body, budget_ms=budget, sent=1.5, model="m1")
    got = wire.decode_request(wire.encode_request(req))
    assert got == req


def test_request_header_is_one_json_line_then_the_body():
    payload = wire.encode_request(wire.InferRequest(car="car-1", frame=7, body=b"\xff\xd8jpeg\n\x00"))
    head, _, body = payload.partition(b"\n")
    assert json.loads(head) == {"v": 1, "car": "car-1", "frame": 7, "kind": "jpeg"}
    assert body == b"\xff\xd8jpeg\n\x00"  # newlines in the body are data, not separators


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "no header line"),
        (b"x" * 5000, "no header line"),
        (b"not json\nbody", "not JSON"),
        (b"[1,2]\nbody", "JSON object"),
        (b'{"car":"c","frame":1}\nbody', "integer version"),
        (b'{"v":2,"car":"c","frame":1}\nbody', "unsupported version 2"),
        (b'{"v":1,"car":"c","frame":-1}\nbody', "frame"),
        (b'{"v":1,"car":"c","frame":true}\nbody', "frame"),
        (b'{"v":1,"car":"a/b","frame":1}\nbody', "may not contain"),
        (b'{"v":1,"car":"","frame":1}\nbody', "car id"),
        (b'{"v":1,"car":"c","frame":1,"kind":"png"}\nbody', "kind"),
        (b'{"v":1,"car":"c","frame":1,"budget_ms":"5"}\nbody', "budget_ms"),
        (b'{"v":1,"car":"c","frame":1,"deadline":NaN}\nbody', "deadline"),
        (b'{"v":1,"car":"c","frame":1}\n', "empty body"),
        (b'{"v":1,"car":"c","frame":1}\n' + b"x" * wire.MAX_REQUEST_BYTES, "limit"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(payload, why):
    with pytest.raises(wire.WireError, match=why):
        wire.decode_request(payload)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(payload):
    with contextlib.suppress(wire.WireError):
        wire.decode_request(payload)


def test_encoder_refuses_what_the_decoder_would():
    with pytest.raises(wire.WireError, match="limit"):
        wire.encode_request(wire.InferRequest(car="c", frame=0, body=b"x" * wire.MAX_REQUEST_BYTES))
    with pytest.raises(wire.WireError, match="may not contain"):
        wire.encode_request(wire.InferRequest(car="c/+", frame=0, body=b"x"))


def test_reply_round_trip_and_validation():
    rep = wire.InferReply("ok", car="c", frame=3, steering=-0.25, throttle=0.5, confidence=0.9, model="e1")
    assert wire.decode_reply(wire.encode_reply(rep)) == rep
    err = wire.InferReply("error", car="c", frame=3, error="body is not a decodable JPEG frame")
    assert wire.decode_reply(wire.encode_reply(err)).error == err.error
    with pytest.raises(wire.WireError, match="steering"):
        wire.decode_reply(b'{"v":1,"status":"ok","steering":3,"throttle":0}')
    with pytest.raises(wire.WireError, match="version"):
        wire.decode_reply(b'{"v":9,"status":"ok"}')
    with pytest.raises(wire.WireError, match="status"):
        wire.decode_reply(b'{"v":1,"status":"maybe"}')
    # unknown keys from a newer minor writer are ignored, not an error
    assert wire.decode_reply(b'{"v":1,"status":"error","extra":1}').status == "error"
    t = wire.InferReply("throttled", car="c", frame=3, error="throttled: car c ...")
    assert wire.decode_reply(wire.encode_reply(t)) == t


def test_topics():
    assert wire.infer_topic("car-1") == "edgepilot/v1/car/car-1/infer"
    assert wire.reply_topic("car-1") == "edgepilot/v1/car/car-1/reply"
    assert wire.shared_infer_filter("edge") == "$share/edge/edgepilot/v1/car/+/infer"
    assert wire.car_of_infer_topic("edgepilot/v1/car/car-9/infer") == "car-9"
    for bad in ("edgepilot/v1/car/x/reply", "edgepilot/v2/car/x/infer", "edgepilot/v1/car/a/b/infer"):
        with pytest.raises(wire.WireError):
            wire.car_of_infer_topic(bad)
    for bad in ("a/b", "+", "#", "", "x" * 65, " c"):
        with pytest.raises(wire.WireError):
            wire.infer_topic(bad)


def test_health_round_trip():
    h = wire.EdgeHealth(node="edge-1", requests=5, batch_sizes={"1": 2, "3": 1}, latency_p50_ms=1.0)
    assert wire.decode_health(wire.encode_health(h)) == h
