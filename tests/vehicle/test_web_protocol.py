"""The web controller's checks that need no browser: the socket protocol's refusals, the
flood limit, the token (made once, kept private), the ``[web]`` profile section."""

from __future__ import annotations

import io
import json
import stat

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import WebConfig, load_profile
from vehicle.web import auth
from vehicle.web.controller import announce, check
from vehicle.web.protocol import SCHEMA, ProtocolError, RateLimit, parse

MAX = 512


def test_valid_messages_parse_to_their_fields():
    m = parse('{"type": "drive", "steering": -1, "throttle": 0.25}', MAX)
    assert m.type == "drive" and m.fields == {"steering": -1.0, "throttle": 0.25}
    assert parse('{"type": "mode", "mode": "local_angle"}', MAX).fields == {"mode": "local_angle"}
    assert parse('{"type": "erase"}', MAX).fields == {}
    assert parse('{"type": "estop", "on": true}', MAX).fields == {"on": True}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ('{"type": "drive", "steering": NaN, "throttle": 0}', "NaN is not a number"),
        ('{"type": "drive", "steering": 0, "throttle": Infinity}', "Infinity is not a number"),
        ('{"type": "drive", "steering": 0, "throttle": 1e400}', "not a finite number"),
        ('{"type": "drive", "steering": 0, "throttle": 1.5}', "drive.throttle: 1.5 is outside -1..1"),
        ('{"type": "drive", "steering": "0.2", "throttle": 0}', "drive.steering: expected a number"),
        ('{"type": "drive", "steering": true, "throttle": 0}', "drive.steering: expected a number"),
        ('{"type": "drive", "steering": 0}', "missing field 'throttle'"),
        ('{"type": "drive", "steering": 0, "throttle": 0, "boost": 1}', "unknown field(s) boost"),
        ('{"type": "record", "on": 1}', "record.on: expected true or false"),
        ('{"type": "mode", "mode": "turbo"}', "'turbo' is not one of user, local_angle, local"),
        ('{"type": "throttle_scale", "value": -0.1}', "outside 0..1"),
        ('{"type": "launch"}', "unknown message type 'launch'"),
        ('{"steering": 0}', "unknown message type None"),
        ("[1, 2]", "must be a JSON object"),
        ("drive 0 1", "not valid JSON"),
        (b'{"type": "erase"}', "binary messages are not accepted"),
        ('{"type": "ping", "t": 1, "pad": "' + "x" * 600 + '"}', "over the limit of 512 bytes"),
    ],
)
def test_bad_messages_are_refused_with_what_is_wrong(raw, says):
    with pytest.raises(ProtocolError) as e:
        parse(raw, MAX)
    assert says in str(e.value)


def test_every_type_names_its_fields():
    for kind, spec in SCHEMA.items():
        with pytest.raises(ProtocolError, match="unknown field"):
            parse(json.dumps({"type": kind, "zzz": 1, **dict.fromkeys(spec, 0)}), MAX)


def test_rate_limit_allows_the_rate_and_drops_the_flood():
    t = [0.0]
    r = RateLimit(100.0, burst=10, clock=lambda: t[0])
    assert sum(r.allow() for _ in range(50)) == 10  # a burst of 50 at once: 10 pass
    t[0] += 0.5  # half a second refills to the burst, not beyond
    assert sum(r.allow() for _ in range(50)) == 10
    allowed = 0
    for _ in range(200):  # a page sending 40/s for 5 s: all pass
        t[0] += 0.025
        allowed += r.allow()
    assert allowed == 200 and r.dropped == 80


def test_token_is_made_once_private_and_printed_once(tmp_path):
    cfg = WebConfig(token_file=str(tmp_path / "var" / "web-token"))
    first = auth.resolve_token(cfg)
    assert first.created and len(first.value) >= auth.MIN_TOKEN_CHARS
    mode = stat.S_IMODE((tmp_path / "var" / "web-token").stat().st_mode)
    assert mode == 0o600
    again = auth.resolve_token(cfg)
    assert again.value == first.value and not again.created
    out = io.StringIO()
    announce("http://0.0.0.0:8887/", cfg, first, out)
    assert first.value in out.getvalue()
    out = io.StringIO()
    announce("http://0.0.0.0:8887/", cfg, again, out)
    assert first.value not in out.getvalue() and str(tmp_path) in out.getvalue()


def test_token_from_the_profile_must_be_long_enough():
    assert auth.resolve_token(WebConfig(token="correct-horse-battery")).source == "profile"
    with pytest.raises(EdgepilotError, match="too short"):
        auth.resolve_token(WebConfig(token="1234"))


def test_token_comparison_and_loopback():
    assert auth.same("abc", "abc") and not auth.same("abd", "abc") and not auth.same(None, "abc")
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1") and auth.is_loopback("::ffff:127.0.0.1")
    assert not auth.is_loopback("192.168.1.20") and not auth.is_loopback(None) and not auth.is_loopback("x")


def test_web_section_in_a_profile(tmp_path):
    p = tmp_path / "car.toml"
    p.write_text('[web]\nport = 9000\ndeadman_ms = 300\ntoken = "a-long-enough-token"\n')
    prof = load_profile(str(p))
    assert (prof.web.port, prof.web.deadman_ms, prof.web.bind) == (9000, 300, "0.0.0.0")
    p.write_text("[web]\ndeadman = 300\n")
    with pytest.raises(EdgepilotError, match="web.deadman: unknown key"):
        load_profile(str(p))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"deadman_ms": 20}, "web.deadman_ms"),
        ({"send_hz": 5.0}, "web.send_hz"),  # one message per 200 ms: once per 250 ms deadman
        ({"max_msgs_per_s": 30.0}, "web.max_msgs_per_s"),
        ({"port": 70000}, "web.port"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
    ],
)
def test_unsafe_web_settings_are_refused(change, says):
    check(WebConfig())
    with pytest.raises(EdgepilotError, match=says):
        check(WebConfig(**change))


def test_a_refusal_names_the_message_type_when_it_had_one():
    with pytest.raises(ProtocolError) as e:
        parse('{"type": "record", "on": "yes"}', MAX)
    assert e.value.kind == "record"
    with pytest.raises(ProtocolError) as e:
        parse('{"type": "nope"}', MAX)
    assert e.value.kind is None
