"""The broker's per-login publish rate limit (launch/mosquitto-plugin/edgepilot_ratelimit.c)
on a real Mosquitto (launch/mosquitto.conf with the plugin loaded, as edgepilot.broker's
``ratelimit_config`` adds it; anonymous clients, so keyed by client id): a flooder gets its
limit through and no more, a client at a normal rate beside it loses nothing, QoS 1 over
the limit is refused (v5) or disconnected (3.1.1), drops are logged once a second with counts.

Per login (one car's several connections share one bucket) and the exemptions of the
secured broker (edge nodes, the cloud, uploads): tests/system/test_secured_broker.py."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edgepilot import EdgepilotError
from edgepilot.broker import (
    RATE_EXEMPT_TOPICS,
    RATE_LIMITS,
    SECURE_TEMPLATE,
    Broker,
    ratelimit_config,
    start_broker,
)
from edgepilot.schema import fleet
from tests.helpers import wait_for

pytestmark = pytest.mark.broker

NOT_AUTHORIZED = 0x87  # what Mosquitto 2.0 answers for a message a plugin refused


@pytest.fixture
def limited(tmp_path):
    """Start brokers with the rate limit (``limited(**limits)``); stopped after the test."""
    started: list[Broker] = []

    def start(**limits: float) -> Broker:
        b = start_broker(tmp_path / f"mosquitto-{len(started)}", extra=ratelimit_config(**limits))
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


class Client:
    """A bare paho client on loopback: what it received (topic, arrival time), the reason
    code of each PUBACK by message id, whether the broker disconnected it."""

    def __init__(self, port: int, client_id: str, protocol: int = paho.MQTTv5) -> None:
        self.got: list[tuple[str, float]] = []
        self.acks: dict[int, int] = {}
        self.acks_when_dropped: dict[int, int] | None = None
        self.dropped = threading.Event()
        connected, self._subacked = threading.Event(), threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        c.on_connect = lambda *a: connected.set()
        c.on_subscribe = lambda *a: self._subacked.set()
        c.on_message = lambda cl, ud, m: self.got.append((m.topic, time.monotonic()))
        c.on_publish = lambda cl, ud, mid, rc, props: self.acks.__setitem__(mid, rc.value)
        c.on_disconnect = self._on_disconnect
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert connected.wait(5)
        self.c = c

    def _on_disconnect(self, *a) -> None:
        if not self.dropped.is_set():
            self.acks_when_dropped = dict(self.acks)
            self.dropped.set()

    def subscribe(self, flt: str) -> None:
        self.c.subscribe(flt)
        assert self._subacked.wait(5)

    def count(self, topic: str) -> int:
        return sum(1 for t, _ in self.got if t == topic)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def paced(c: Client, topic: str, rate_hz: float, seconds: float, size: int) -> tuple[int, float]:
    """Publish ``size``-byte messages at ``rate_hz`` for ``seconds`` (in steps of 10 ms);
    (how many, when the first went)."""
    n, t0 = 0, time.monotonic()
    while (now := time.monotonic()) < t0 + seconds:
        while n < int(rate_hz * (now - t0)) + 1:
            c.c.publish(topic, b"x" * size)
            n += 1
        time.sleep(0.01)
    return n, t0


def drop_lines(log: Path, key: str) -> list[int]:
    """The rate limit's log lines about ``key``: the drops each counts."""
    pat = re.compile(rf"edgepilot_ratelimit: '{re.escape(key)}' over its limit .*: dropped (\d+) messages")
    return [int(m.group(1)) for m in pat.finditer(log.read_text())]


@pytest.mark.parametrize(
    "limits, size",
    [
        ({"max_msgs_per_s": 50, "max_bytes_per_s": 0, "burst_s": 0.2}, 100),  # messages: 10 at once, 50/s
        ({"max_msgs_per_s": 0, "max_bytes_per_s": 100_000, "burst_s": 0.2}, 2000),  # bytes: the same in 2 kB
    ],
    ids=["messages", "bytes"],
)
def test_a_flooder_gets_its_limit_through_and_a_client_at_a_normal_rate_loses_nothing(limited, limits, size):
    """At 10x its limit for 1.5 s the flooder gets at most burst + rate x (the window the broker
    could have taken its messages in) to the subscriber; a client at 20/s beside it, under its
    own limit, gets every message through (the limit is per client, not the broker's)."""
    b = limited(**limits)
    rate, burst = 50.0, 10  # in messages of `size` bytes, either way
    sub = Client(b.port, "sub")
    sub.subscribe("t/#")
    flooder, calm = Client(b.port, "flood"), Client(b.port, "calm")
    sent: dict[str, tuple[int, float]] = {}
    th = threading.Thread(target=lambda: sent.__setitem__("calm", paced(calm, "t/calm", 20, 1.5, size)))
    try:
        th.start()
        sent["flood"] = paced(flooder, "t/flood", 10 * rate, 1.5, size)
        th.join()
        assert wait_for(lambda: sub.count("t/calm") == sent["calm"][0], 5), (sub.count("t/calm"), sent["calm"])
        time.sleep(0.5)  # anything of the flood's still on its way
        t_last = max(t for topic, t in sub.got if topic == "t/flood")
        got = sub.count("t/flood")
        n_flood, t0 = sent["flood"]
        assert n_flood > 600  # it did flood
        assert rate * 1.5 * 0.5 <= got <= burst + rate * (t_last - t0) + 1, (got, n_flood, t_last - t0)
        time.sleep(1.2)  # the plugin reports what is left within a second
        lines = drop_lines(b.state / "mosquitto.log", "flood")
        assert sum(lines) == n_flood - got  # every drop counted
        assert 1 <= len(lines) <= 4  # once a second at most (1.5 s of flood, and the first at once)
        assert drop_lines(b.state / "mosquitto.log", "calm") == []
    finally:
        for c in (sub, flooder, calm):
            c.close()


def test_qos1_over_the_limit_is_refused_to_a_v5_client_and_disconnects_a_v311_one(limited):
    """Mosquitto 2.0 answers a QoS 1 message its plugin refused with PUBACK 0x87 ("not
    authorized"): an MQTT v5 client knows it was not accepted and stays connected. A 3.1.1
    PUBACK has no reason code (it would read as accepted), so a 3.1.1 client is disconnected
    instead, its message unacknowledged; its QoS 0 messages over the limit are just dropped."""
    b = limited(max_msgs_per_s=1, burst_s=5)  # 5 at once, then 1 a second
    v5 = Client(b.port, "v5")
    v3 = Client(b.port, "v3", protocol=paho.MQTTv311)
    try:
        mids = [v5.c.publish("t/q", b"x", qos=1).mid for _ in range(20)]
        assert wait_for(lambda: len(v5.acks) == 20, 5), v5.acks
        codes = Counter(v5.acks[m] >= 0x80 for m in mids)
        assert codes[False] in (5, 6) and all(v5.acks[m] == NOT_AUTHORIZED for m in mids[6:])
        assert not v5.dropped.is_set()
        for _ in range(10):
            v3.c.publish("t/q", b"x", qos=0)
        time.sleep(0.3)
        assert not v3.dropped.is_set()  # QoS 0 over the limit: dropped, the client stays
        mid = v3.c.publish("t/q", b"x", qos=1).mid
        assert v3.dropped.wait(5)
        assert v3.acks_when_dropped is not None and mid not in v3.acks_when_dropped
    finally:
        v5.close()
        v3.close()


def test_a_bad_option_keeps_the_broker_from_starting(tmp_path):
    """A mistyped option is an error at start-up, not a limit silently left at its default."""
    with pytest.raises(EdgepilotError, match="bad or unreadable plugin_opt_max_msg_per_s"):
        start_broker(tmp_path / "m", extra=ratelimit_config() + "plugin_opt_max_msg_per_s 10\n")
    with pytest.raises(EdgepilotError, match="unknown rate limit"):
        ratelimit_config(max_msg_per_s=10)


def test_the_secure_config_sets_the_limits_and_exempts_uploads():
    """launch/mosquitto-secure.conf's values are edgepilot.broker's (what the tests and the
    benchmark load), and its exempt filter matches a car's upload chunks and nothing else."""
    conf = SECURE_TEMPLATE.read_text().splitlines()
    for key, value in RATE_LIMITS.items():
        assert f"plugin_opt_{key} {value:.15g}" in conf
    assert f"plugin_opt_exempt_topics {' '.join(RATE_EXEMPT_TOPICS)}" in conf
    assert "plugin_opt_exempt_users_file @AUTH@/ratelimit-exempt" in conf
    [flt] = RATE_EXEMPT_TOPICS
    assert paho.topic_matches_sub(flt, fleet.upload_topic("car-1", "chunk"))
    for kind in ("offer", "ack", "status"):
        assert not paho.topic_matches_sub(flt, fleet.upload_topic("car-1", kind))
